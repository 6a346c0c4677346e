#![cfg_attr(not(test), no_std)]
#![cfg_attr(feature = "allocator-api", feature(allocator_api))]

pub mod error;
pub mod source;
