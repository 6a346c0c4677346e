//! Host unit tests of the kernel's pure-logic modules.
