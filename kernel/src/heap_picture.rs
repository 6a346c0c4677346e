//! The heap picture: the heap's occupancy as lines over serial, which the runner (`boot/`)
//! turns into an SVG under `target/heap-pictures/` and names.
//!
//! [`emit`] walks the heap with [`kheap::Heap::visit`] while holding the heap lock and prints one
//! line per part, between markers; nothing is allocated, so it works on a full heap too:
//!
//! ```text
//! @@kheap-picture begin at peak
//! r <addr> <pages> <d|p> <live slots> <slots>     a root run (descriptor or pool chain)
//! c <addr> <owner> <block size> <used> <blocks>   a chunk; owner c<class index> or p<pool number>
//! g <addr> <bytes>                                a large region; its blocks follow:
//! b <bytes> <u|f>                                 a block of that region, in use or free
//! p <addr> <pages>                                a page run, all its pages (node included)
//! m <nodes>                                       page-map nodes
//! @@kheap-picture end
//! ```
//!
//! Addresses are hexadecimal. The `cargo run` kernel draws one at the workload's peak; any
//! kernel does when the runner passes `KERNEL_HEAP_PICTURE=1` (fw_cfg `opt/kheap/picture`), and
//! `KERNEL_HEAP_PICTURE=0` turns it off. A test can call [`emit`] itself.

use core::sync::atomic::{AtomicU8, Ordering};

use kheap::walk::{Item, Owner, RootKind};

use crate::{allocator, fw_cfg, serial_println};

/// The first and last line of a picture.
pub const BEGIN: &str = "@@kheap-picture begin";
/// See [`BEGIN`].
pub const END: &str = "@@kheap-picture end";

/// Whether pictures are wanted when the kernel itself has no say: 0 no, 1 yes.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

/// Wants pictures unless the runner says otherwise (the `cargo run` kernel calls it).
pub fn want_by_default() {
    DEFAULT.store(1, Ordering::Relaxed);
}

/// Whether pictures are wanted: fw_cfg `opt/kheap/picture` (`1` or `0`, from the runner's
/// `KERNEL_HEAP_PICTURE`), else the default ([`want_by_default`]).
pub fn requested() -> bool {
    let mut buf = [0u8; 4];
    match fw_cfg::read_file("opt/kheap/picture", &mut buf) {
        Some(b"1") => true,
        Some(b"0") => false,
        _ => DEFAULT.load(Ordering::Relaxed) == 1,
    }
}

/// Emits a picture labelled `label` if [`requested`].
pub fn emit_if_requested(label: &str) {
    if requested() {
        emit(label);
    }
}

/// Prints the heap's occupancy between [`BEGIN`] and [`END`] lines (nothing before the heap is
/// initialised). Holds the heap lock while it prints: no other CPU allocates meanwhile.
pub fn emit(label: &str) {
    let Some(heap) = allocator::HEAP.heap().lock() else {
        return;
    };
    serial_println!("{BEGIN} {label}");
    heap.visit(|item| match item {
        Item::RootRun {
            addr,
            pages,
            kind,
            live,
            slots,
        } => {
            let k = if kind == RootKind::Descriptors {
                'd'
            } else {
                'p'
            };
            serial_println!("r {addr:x} {pages} {k} {live} {slots}");
        }
        Item::Chunk {
            addr,
            owner,
            block_size,
            used,
            capacity,
        } => match owner {
            Owner::Class(i) => serial_println!("c {addr:x} c{i} {block_size} {used} {capacity}"),
            Owner::Pool(id) => serial_println!(
                "c {addr:x} p{} {block_size} {used} {capacity}",
                id.generation()
            ),
        },
        Item::Region { addr, bytes } => serial_println!("g {addr:x} {bytes}"),
        Item::RegionBlock { bytes, free, .. } => {
            serial_println!("b {bytes} {}", if free { 'f' } else { 'u' });
        }
        Item::PageRun { addr, pages } => serial_println!("p {addr:x} {pages}"),
        Item::PageMap { nodes } => serial_println!("m {nodes}"),
    });
    serial_println!("{END}");
}
