use super::*;
use crate::testing::XorShift64;
use crate::{Heap, LockedHeap, SpinLock};
use core::alloc::{GlobalAlloc, Layout as MemLayout};
use std::vec;
use std::vec::Vec;

/// A host buffer of `pages` pages aligned to `align`, freed on drop.
struct Buffer {
    ptr: *mut u8,
    layout: MemLayout,
}

impl Buffer {
    fn new(pages: usize, align: usize) -> Self {
        let layout = MemLayout::from_size_align(pages * PAGE_SIZE, align).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    /// A source over `len` bytes from `offset`.
    fn source(&self, offset: usize, len: usize) -> FixedRegion {
        assert!(offset + len <= self.layout.size());
        // SAFETY: inside the buffer, which outlives the source in every test.
        unsafe { FixedRegion::new(self.ptr.add(offset), len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn page_index(src: &FixedRegion, p: NonNull<u8>) -> usize {
    let first = src.layout.or_else(|| src.plan()).unwrap().first;
    (p.addr().get() - first.addr().get()) / PAGE_SIZE
}

#[test]
fn unaligned_region_is_cut_to_whole_pages_and_the_tree_takes_the_first() {
    let buf = Buffer::new(20, PAGE_SIZE);
    // 100 bytes in, 18 pages and 4000 bytes long: whole pages 1..=18 of the buffer.
    let mut src = buf.source(100, 18 * PAGE_SIZE + 4000);
    assert_eq!(src.pages(), 0);
    assert_eq!(src.free_pages(), 17);
    let w = src.window().unwrap();
    assert_eq!(w.cast::<u8>().addr().get(), buf.ptr.addr() + PAGE_SIZE);
    assert_eq!(w.len(), 18 * PAGE_SIZE);
    let p = src.map_pages(3).unwrap();
    assert_eq!(p.addr().get(), buf.ptr.addr() + 2 * PAGE_SIZE);
    assert_eq!(
        (src.pages(), src.mapped_pages(), src.free_pages()),
        (17, 3, 14)
    );
    assert_eq!(src.window(), Some(w), "the window never changes");
}

#[test]
fn too_small_regions_map_nothing() {
    let buf = Buffer::new(2, PAGE_SIZE);
    for len in [0, 100, PAGE_SIZE, PAGE_SIZE + 5] {
        let mut src = buf.source(0, len);
        assert_eq!(src.map_pages(1), Err(PageSourceError::OutOfMemory));
        assert_eq!(src.free_pages(), 0);
    }
    assert_eq!(buf.source(1, PAGE_SIZE).window(), None);
    let mut src = buf.source(0, 2 * PAGE_SIZE);
    assert_eq!(src.map_pages(0), Err(PageSourceError::InvalidRequest));
    let p = src.map_pages(1).unwrap();
    assert_eq!(src.map_pages(1), Err(PageSourceError::OutOfMemory));
    // SAFETY: mapped above.
    unsafe { src.unmap_pages(p, 1) };
    assert_eq!(src.map_pages(1), Ok(p));
}

#[test]
fn runs_are_first_fit_and_holes_are_reused() {
    let buf = Buffer::new(65, PAGE_SIZE);
    let mut src = buf.source(0, 65 * PAGE_SIZE);
    assert_eq!(src.map_pages(1).map(|p| page_index(&src, p)), Ok(0));
    let a = src.map_pages(10).unwrap();
    let b = src.map_pages(5).unwrap();
    assert_eq!((page_index(&src, a), page_index(&src, b)), (1, 11));
    // SAFETY: `a` was mapped above; its middle sub-run goes back alone.
    unsafe { src.unmap_pages(a.add(2 * PAGE_SIZE), 6) };
    assert_eq!(src.largest_free_run(), 64 - 16);
    let c = src.map_pages(6).unwrap();
    assert_eq!(page_index(&src, c), 3, "the hole is reused");
    assert_eq!(src.map_pages(49), Err(PageSourceError::OutOfMemory));
    assert_eq!(src.map_pages(48).map(|p| page_index(&src, p)), Ok(16));
    // SAFETY: the pages are mapped, and each is unmapped once.
    unsafe {
        src.unmap_pages(c.add(PAGE_SIZE), 1);
        src.unmap_pages(c.add(3 * PAGE_SIZE), 1);
    }
    // Two pages free, but no run of two: out of address space, not of memory.
    assert_eq!(src.map_pages(2), Err(PageSourceError::OutOfAddressSpace));
}

#[test]
fn growth_is_in_place_when_the_next_pages_are_free() {
    let buf = Buffer::new(33, PAGE_SIZE);
    let mut src = buf.source(0, 33 * PAGE_SIZE);
    let a = src.map_pages(4).unwrap();
    let b = src.map_pages(4).unwrap();
    assert!(!src.grow_pages(a, 4, 1), "b is in the way");
    assert!(src.grow_pages(b, 4, 20));
    assert_eq!(src.mapped_pages(), 28);
    assert!(!src.grow_pages(b, 24, 5), "past the region's end");
    assert!(!src.grow_pages(b, usize::MAX, 1));
    let foreign = NonNull::new(buf.ptr.wrapping_add(PAGE_SIZE * 40)).unwrap();
    assert!(!src.grow_pages(foreign, 1, 1));
    // SAFETY: the grown run is unmapped as one.
    unsafe { src.unmap_pages(b, 24) };
    assert_eq!(src.mapped_pages(), 4);
}

#[test]
fn aligned_runs_put_the_aligned_page_on_the_line() {
    let buf = Buffer::new(512, 64 * PAGE_SIZE);
    let mut src = buf.source(0, 512 * PAGE_SIZE);
    // The tree takes page 0 of the buffer, so the source's page 0 is one page past a line.
    let small = src.map_pages(1).unwrap();
    for (count, align, aligned_page) in [(3, 16, 1), (2, 64, 0), (5, 32, 4), (1, 2, 0)] {
        let align = align * PAGE_SIZE;
        let p = src.map_pages_aligned(count, align, aligned_page).unwrap();
        assert_eq!((p.addr().get() + aligned_page * PAGE_SIZE) % align, 0);
        assert!(src.tree().unwrap().all_used(page_index(&src, p), count));
    }
    assert_eq!(
        src.map_pages_aligned(2, 3 * PAGE_SIZE, 0),
        Err(PageSourceError::InvalidRequest)
    );
    assert_eq!(
        src.map_pages_aligned(2, PAGE_SIZE, 2),
        Err(PageSourceError::InvalidRequest)
    );
    // SAFETY: mapped above.
    unsafe { src.unmap_pages(small, 1) };
}

#[test]
fn aligned_runs_are_found_in_a_fragmented_region() {
    let buf = Buffer::new(512, 128 * PAGE_SIZE);
    let mut src = buf.source(0, 512 * PAGE_SIZE);
    // Everything mapped, then 8 pages given back on a 128-page line (page 256 of the buffer):
    // no run of count + slack pages is free, so the aligned places are tried one by one.
    let all = src.map_pages(src.free_pages()).unwrap();
    assert_eq!(all.addr().get(), buf.ptr.addr() + PAGE_SIZE);
    // SAFETY: pages of `all`, which is mapped.
    unsafe { src.unmap_pages(all.add(255 * PAGE_SIZE), 8) };
    assert_eq!(
        src.map_pages_aligned(9, 128 * PAGE_SIZE, 0),
        Err(PageSourceError::OutOfMemory)
    );
    let p = src.map_pages_aligned(4, 128 * PAGE_SIZE, 0).unwrap();
    assert_eq!(p.addr().get(), buf.ptr.addr() + 256 * PAGE_SIZE);
    assert_eq!(
        src.map_pages_aligned(1, 128 * PAGE_SIZE, 0),
        Err(PageSourceError::OutOfAddressSpace)
    );
    assert_eq!(
        src.map_pages_aligned(2, 2 * PAGE_SIZE, 1)
            .map(|p| page_index(&src, p)),
        Ok(260)
    );
}

/// Random maps, aligned maps, growth and partial unmaps against a model of which pages are
/// mapped, with every mapped page patterned and checked.
#[test]
fn random_operations_agree_with_the_model() {
    let total = 300;
    let buf = Buffer::new(total, PAGE_SIZE);
    let mut src = buf.source(0, total * PAGE_SIZE);
    let mut rng = XorShift64::new(11);
    let pages = src.free_pages();
    let mut model = vec![false; pages];
    let mut runs: Vec<(NonNull<u8>, usize, u8)> = Vec::new();
    let rounds = if cfg!(miri) { 150 } else { 4000 };
    let fill = |p: NonNull<u8>, n: usize, v: u8| {
        // SAFETY: a mapped run of `n` pages.
        unsafe { p.write_bytes(v, n * PAGE_SIZE) };
    };
    let check = |p: NonNull<u8>, n: usize, v: u8| {
        for page in 0..n {
            for off in [0, PAGE_SIZE / 2, PAGE_SIZE - 1] {
                // SAFETY: inside a mapped run.
                assert_eq!(unsafe { *p.as_ptr().add(page * PAGE_SIZE + off) }, v);
            }
        }
    };
    for round in 0..rounds {
        let tag = (round % 250) as u8 + 1;
        match rng.below(5) {
            0 | 1 => {
                let n = rng.range(1, 24);
                match src.map_pages(n) {
                    Ok(p) => {
                        let i = page_index(&src, p);
                        assert!(model[i..i + n].iter().all(|m| !m), "overlap");
                        model[i..i + n].fill(true);
                        fill(p, n, tag);
                        runs.push((p, n, tag));
                    }
                    Err(e) => {
                        let free = model.iter().filter(|m| !**m).count();
                        let fits = model.windows(n).any(|w| w.iter().all(|m| !m));
                        assert!(!fits, "refused {n} pages with a free run");
                        let want = if n > free {
                            PageSourceError::OutOfMemory
                        } else {
                            PageSourceError::OutOfAddressSpace
                        };
                        assert_eq!(e, want);
                    }
                }
            }
            2 => {
                let n = rng.range(1, 8);
                let align = PAGE_SIZE << rng.below(5);
                if let Ok(p) = src.map_pages_aligned(n, align, 0) {
                    assert_eq!(p.addr().get() % align, 0);
                    let i = page_index(&src, p);
                    assert!(model[i..i + n].iter().all(|m| !m), "overlap");
                    model[i..i + n].fill(true);
                    fill(p, n, tag);
                    runs.push((p, n, tag));
                }
            }
            3 if !runs.is_empty() => {
                let k = rng.below(runs.len() as u64) as usize;
                let (p, n, v) = runs[k];
                let extra = rng.range(1, 6);
                let i = page_index(&src, p);
                let free_after =
                    i + n + extra <= pages && model[i + n..i + n + extra].iter().all(|m| !m);
                assert_eq!(src.grow_pages(p, n, extra), free_after);
                if free_after {
                    model[i + n..i + n + extra].fill(true);
                    // SAFETY: the grown part is mapped now.
                    fill(unsafe { p.add(n * PAGE_SIZE) }, extra, v);
                    runs[k].1 += extra;
                }
            }
            _ if !runs.is_empty() => {
                let k = rng.below(runs.len() as u64) as usize;
                let (p, n, v) = runs.swap_remove(k);
                check(p, n, v);
                // Give back the whole run, or a middle part and keep the two ends.
                let (from, len) = if n > 2 && rng.one_in(2) {
                    (1, n - 2)
                } else {
                    (0, n)
                };
                // SAFETY: a sub-run of a mapped run, unmapped once.
                unsafe { src.unmap_pages(p.add(from * PAGE_SIZE), len) };
                let i = page_index(&src, p);
                model[i + from..i + from + len].fill(false);
                if from == 1 {
                    runs.push((p, 1, v));
                    // SAFETY: the last page of the run.
                    runs.push((unsafe { p.add((n - 1) * PAGE_SIZE) }, 1, v));
                }
            }
            _ => {}
        }
        let mapped = model.iter().filter(|m| **m).count();
        assert_eq!(src.mapped_pages(), mapped);
        let mut free_runs = Vec::new();
        src.for_each_free_run(|p, n| free_runs.push((page_index(&src, p), n)));
        let longest = free_runs.iter().map(|r| r.1).max().unwrap_or(0);
        assert_eq!(src.largest_free_run(), longest);
        assert_eq!(free_runs.iter().map(|r| r.1).sum::<usize>(), pages - mapped);
    }
    for (p, n, v) in runs {
        check(p, n, v);
    }
}

#[test]
fn a_heap_over_a_region_gives_every_page_back() {
    let buf = Buffer::new(1024, PAGE_SIZE);
    let mut heap = Heap::new(buf.source(0, 1024 * PAGE_SIZE));
    let mut rng = XorShift64::new(3);
    let mut live = Vec::new();
    let n = if cfg!(miri) { 200 } else { 5000 };
    for i in 0..n {
        let size = if i % 50 == 0 {
            rng.range(5000, 300_000)
        } else {
            rng.range(1, 600)
        };
        let layout = MemLayout::from_size_align(size, 1 << rng.below(7)).unwrap();
        if let Ok(p) = heap.allocate(layout) {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            live.push((p, layout, i as u8));
        }
        if live.len() > 300 || (rng.one_in(3) && !live.is_empty()) {
            let (p, layout, v) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: a live block of this heap with this layout.
            unsafe {
                assert_eq!(*p.as_ptr().add(layout.size() - 1), v);
                heap.deallocate(p, layout);
            }
        }
    }
    heap.check_invariants().unwrap();
    for (p, layout, _) in live {
        // SAFETY: as above.
        unsafe { heap.deallocate(p, layout) };
    }
    heap.trim();
    heap.check_invariants().unwrap();
    assert_eq!(heap.source().mapped_pages(), heap.idle_pages());
}

#[test]
fn a_static_array_heap_serves_the_global_alloc_calls_and_refuses_politely_when_full() {
    #[repr(C, align(4096))]
    struct Arena([u8; 64 * PAGE_SIZE]);
    static mut ARENA: Arena = Arena([0; 64 * PAGE_SIZE]);
    // SAFETY: the arena is used by this heap alone.
    static HEAP: LockedHeap<SpinLock, FixedRegion> =
        LockedHeap::new(unsafe { FixedRegion::array(&raw mut ARENA.0) });
    let big = MemLayout::from_size_align(100 * PAGE_SIZE, 8).unwrap();
    // SAFETY: valid layouts; the blocks are freed with them.
    unsafe {
        assert!(
            HEAP.alloc(big).is_null(),
            "more than the arena: null, no panic"
        );
        let l = MemLayout::new::<[u64; 100]>();
        let p = HEAP.alloc(l);
        assert!(!p.is_null());
        HEAP.dealloc(p, l);
    }
    let h = HEAP.lock().unwrap();
    assert_eq!(h.source().pages(), 63);
    h.check_invariants().unwrap();
}
