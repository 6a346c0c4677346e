//! A minimal kernel on kheap, written the way a blog_os-style kernel is: the bootloader maps
//! physical memory at an offset, the kernel maps a heap region with `OffsetPageTable` and a frame
//! allocator over the boot memory map, and `kheap::FixedRegion` over that region is the global
//! allocator — two lines of heap setup. It then uses `Vec`, `String` and `BTreeMap`, prints over
//! the serial port and exits QEMU (isa-debug-exit: 0x10 success, 0x11 failure).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::{BootInfo, entry_point};
use kheap::{FixedRegion, IrqSpinLock, LockedHeap};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

// ---- the heap: this is all it takes ----

/// Where the heap lives, and how large it is.
pub const HEAP_START: usize = 0x_4444_4444_0000;
pub const HEAP_SIZE: usize = 4 * 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap<IrqSpinLock, FixedRegion> = LockedHeap::empty();

/// Maps the heap region, then hands it to kheap.
fn init_heap(
    mapper: &mut impl Mapper<Size4KiB>,
    frames: &mut impl FrameAllocator<Size4KiB>,
) -> Result<(), &'static str> {
    let first = Page::containing_address(VirtAddr::new(HEAP_START as u64));
    let last = Page::containing_address(VirtAddr::new((HEAP_START + HEAP_SIZE - 1) as u64));
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    for page in Page::range_inclusive(first, last) {
        let frame = frames
            .allocate_frame()
            .ok_or("out of frames for the heap")?;
        // SAFETY: the frame is fresh from the boot memory map and the page is unused.
        unsafe { mapper.map_to(page, frame, flags, frames) }
            .map_err(|_| "mapping the heap failed")?
            .flush();
    }
    // SAFETY: the region was mapped writable just above and nothing else uses it.
    let region = unsafe { FixedRegion::new(HEAP_START as *mut u8, HEAP_SIZE) };
    HEAP.init(region).map_err(|_| "heap region too small")
}

// ---- the kernel ----

const CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config
};

entry_point!(kernel_main, config = &CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let offset = VirtAddr::new(boot_info.physical_memory_offset.into_option().unwrap());
    // SAFETY: the bootloader mapped all physical memory at `offset` (CONFIG asks for it), and
    // this is the only page-table mapper made from it.
    let mut mapper = unsafe { page_table(offset) };
    // SAFETY: the memory map comes from the bootloader, and its usable regions are unused.
    let mut frames = unsafe { BootFrames::new(&boot_info.memory_regions) };
    if let Err(e) = init_heap(&mut mapper, &mut frames) {
        println!("example: {e}");
        exit_qemu(0x11);
    }

    let squares: Vec<u64> = (0..1000).map(|i| i * i).collect();
    let mut text = String::new();
    for word in ["kheap", "on", "a", "fixed", "region"] {
        text.push_str(word);
        text.push(' ');
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..2000u32 {
        *counts.entry((i % 37).to_string()).or_default() += 1;
    }
    let ok = squares[999] == 998_001
        && text.trim_end() == "kheap on a fixed region"
        && counts.len() == 37
        && counts["0"] == 55;
    // Interrupts are off while the heap lock is held, and as before after it.
    let enabled = x86_64::instructions::interrupts::are_enabled();
    let (pages, free, locked_irqs) = {
        let heap = HEAP.lock().unwrap();
        let off = !x86_64::instructions::interrupts::are_enabled();
        (heap.stats().pages.total, heap.source().free_pages(), off)
    };
    let irqs_ok = locked_irqs && x86_64::instructions::interrupts::are_enabled() == enabled;
    println!(
        "example: Vec of {} squares, String {text:?}, BTreeMap of {} keys; heap {pages} pages \
         mapped, {free} of the region's pages free; interrupts off under the heap lock: {}",
        squares.len(),
        counts.len(),
        if locked_irqs { "yes" } else { "NO" }
    );
    drop((squares, text, counts));
    exit_qemu(if ok && irqs_ok { 0x10 } else { 0x11 })
}

/// The active level-4 table as an `OffsetPageTable`.
///
/// # Safety
///
/// All physical memory must be mapped at `offset`, and this may be called once.
unsafe fn page_table(offset: VirtAddr) -> OffsetPageTable<'static> {
    let (l4, _) = x86_64::registers::control::Cr3::read();
    let table = (offset + l4.start_address().as_u64()).as_mut_ptr::<PageTable>();
    // SAFETY: the caller's guarantees: the table is mapped at that address, and no other
    // reference to it exists.
    unsafe { OffsetPageTable::new(&mut *table, offset) }
}

/// Frames from the usable regions of the boot memory map, handed out once each.
struct BootFrames {
    regions: &'static MemoryRegions,
    next: usize,
}

impl BootFrames {
    /// # Safety
    ///
    /// The usable regions of `regions` must really be unused.
    unsafe fn new(regions: &'static MemoryRegions) -> Self {
        Self { regions, next: 0 }
    }

    fn usable(&self) -> impl Iterator<Item = PhysFrame> + '_ {
        self.regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .flat_map(|r| (r.start..r.end).step_by(4096))
            .map(|a| PhysFrame::containing_address(PhysAddr::new(a)))
    }
}

// SAFETY: each usable frame is returned once (`next` only grows).
unsafe impl FrameAllocator<Size4KiB> for BootFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self.usable().nth(self.next);
        self.next += 1;
        frame
    }
}

// ---- serial output and QEMU exit ----

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: 0x3F8 is COM1; this kernel is single-threaded and only writes to it here.
        let mut port = unsafe { uart_16550::SerialPort::new(0x3F8) };
        for b in s.bytes() {
            port.send(b);
        }
        Ok(())
    }
}

macro_rules! println {
    ($($arg:tt)*) => {{
        let _ = writeln!(Serial, $($arg)*);
    }};
}
use println;

fn exit_qemu(code: u32) -> ! {
    // SAFETY: port 0xF4 is QEMU's isa-debug-exit device (the runner adds it).
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xf4).write(code) };
    loop {
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("example: {info}");
    exit_qemu(0x11)
}
