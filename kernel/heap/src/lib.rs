//! `kheap`: a chunk/magazine kernel heap.
//!
//! # What it is
//!
//! A general-purpose allocator for a kernel, plus user-created object pools (like Linux
//! `kmem_cache_create`). It asks for memory only in whole 4 KiB pages, through a [`PageSource`]
//! the kernel supplies (map fresh frames into a heap window, unmap them again), and it never
//! touches page tables. It is a plain `no_std` library with no architecture dependency, so the
//! same source runs its tests on the host and under Miri.
//!
//! Requests are served in two ways:
//!
//! * **Chunks** for sizes up to a page: a *chunk* is one page split into equal blocks, and the
//!   chunks of one block size are kept on *chunk lists*. The general allocator has chunk lists
//!   per size class (36 classes from 8 to 4096 bytes, see [`size_class`]), fronted by a
//!   *magazine* per class (a small stack of free blocks that most calls stop at, see below);
//!   user pools ([`Heap::create_pool`]) have chunk lists (and a magazine) of their own and serve
//!   any size from 1 to 4096 bytes. Allocation and free are O(1).
//! * **The large allocator** (`large`) for everything the classes do not serve: a
//!   coalescing TLSF-style allocator over regions (mapped four pages at a time and grown in
//!   place up to 64 KiB, so no call maps more than a small request needs), and page runs of
//!   their own for requests of 64 KiB and more, whose data starts at a rotating cache-line
//!   offset of their first page (so equal buffers do not all fall into the same cache sets).
//!
//! # Quick start
//!
//! **A global allocator over a fixed region** — a static array here; [`FixedRegion`] keeps its
//! bookkeeping in the region's first page and hands out page runs in O(log n):
//!
//! ```rust,standalone_crate
//! use kheap::{FixedRegion, LockedHeap, SpinLock};
//!
//! #[repr(C, align(4096))]
//! struct Arena([u8; 4 << 20]);
//! static mut ARENA: Arena = Arena([0; 4 << 20]);
//!
//! #[global_allocator]
//! // SAFETY: the arena is used by this heap alone.
//! static HEAP: LockedHeap<SpinLock, FixedRegion> =
//!     LockedHeap::new(unsafe { FixedRegion::array(&raw mut ARENA.0) });
//!
//! fn main() {
//!     let squares: Vec<u64> = (0..10_000).map(|i| i * i).collect();
//!     let words = std::collections::BTreeMap::from([(1, "one".to_string()), (2, "two".into())]);
//!     assert_eq!(squares[99], 9801);
//!     assert_eq!(words[&2], "two");
//! }
//! ```
//!
//! In a kernel whose interrupt handlers allocate, use [`IrqSpinLock`] (interrupts off while the
//! heap is locked; x86_64), and hand the heap the range you mapped for it once it is mapped —
//! the `kernel/example` kernel of this repository does exactly this:
//!
//! ```rust,no_run
//! use kheap::{FixedRegion, IrqSpinLock, LockedHeap};
//!
//! pub const HEAP_START: usize = 0x_4444_4444_0000;
//! pub const HEAP_SIZE: usize = 1024 * 1024;
//!
//! #[global_allocator]
//! static HEAP: LockedHeap<IrqSpinLock, FixedRegion> = LockedHeap::empty();
//!
//! pub fn init_heap() {
//!     // ... map HEAP_START..HEAP_START + HEAP_SIZE writable first ...
//!     // SAFETY: the range is mapped, writable, and used by nothing else.
//!     let region = unsafe { FixedRegion::new(HEAP_START as *mut u8, HEAP_SIZE) };
//!     HEAP.init(region).expect("heap region too small");
//! }
//! ```
//!
//! **Over your kernel's own page source** — the heap then maps pages on demand and gives them
//! back when they empty (see [`PageSource`] for the contract and the optional methods that
//! make it faster, [`FixedRegion`] for a complete implementation):
//!
//! ```rust,no_run
//! use core::ptr::NonNull;
//! use kheap::{IrqSpinLock, LockedHeap, PageSource, PageSourceError};
//! # mod my_kernel {
//! #     pub fn map_fresh_pages(_: usize) -> Option<core::ptr::NonNull<u8>> { None }
//! #     pub unsafe fn unmap_pages(_: core::ptr::NonNull<u8>, _: usize) {}
//! # }
//!
//! /// Your kernel's `mmap`: map `count` fresh pages, contiguous and writable, somewhere.
//! struct MyPages;
//!
//! // SAFETY: map_pages returns page-aligned, exclusively owned, writable memory that stays
//! // valid until it is passed back to unmap_pages (any page-aligned sub-run may be unmapped
//! // on its own).
//! unsafe impl PageSource for MyPages {
//!     fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
//!         my_kernel::map_fresh_pages(count).ok_or(PageSourceError::OutOfMemory)
//!     }
//!     unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
//!         // SAFETY: the heap gives back only pages it got from `map_pages`.
//!         unsafe { my_kernel::unmap_pages(ptr, count) }
//!     }
//! }
//!
//! #[global_allocator]
//! static HEAP: LockedHeap<IrqSpinLock, MyPages> = LockedHeap::new(MyPages);
//! ```
//!
//! **A user pool** of one object size, like `kmem_cache_create` (exact-size blocks, its own
//! statistics line, and all its memory back at `destroy_pool`); here on a heap that is not the
//! global allocator, over a region given as a pointer and a length:
//!
//! ```rust
//! use kheap::{FixedRegion, LockedHeap, SpinLock};
//!
//! let arena: &'static mut [u8] = Box::leak(vec![0u8; 1 << 20].into_boxed_slice());
//! // SAFETY: the leaked buffer is used by this heap alone.
//! let region = unsafe { FixedRegion::new(arena.as_mut_ptr(), arena.len()) };
//! let heap: LockedHeap<SpinLock, FixedRegion> = LockedHeap::new(region);
//!
//! let mut h = heap.lock().unwrap();
//! let inodes = h.create_pool(96, 8).unwrap();
//! let a = h.pool_allocate(inodes).unwrap();
//! let b = h.pool_allocate(inodes).unwrap();
//! assert_ne!(a, b);
//! // SAFETY: both blocks came from this pool and are freed once.
//! unsafe {
//!     h.pool_deallocate(inodes, a);
//!     h.pool_deallocate(inodes, b);
//! }
//! h.destroy_pool(inodes).unwrap();
//! ```
//!
//! **[`ObjectPool<T>`](ObjectPool)**, a typed pool whose [`PoolBox`] frees on drop (with
//! feature `allocator-api`, [`PoolAllocator`] also serves `Box::new_in(x, pool)`):
//!
//! ```rust
//! # use kheap::{FixedRegion, LockedHeap, SpinLock};
//! # let arena: &'static mut [u8] = Box::leak(vec![0u8; 1 << 20].into_boxed_slice());
//! # // SAFETY: the leaked buffer is used by this heap alone.
//! # let heap: LockedHeap<SpinLock, FixedRegion> =
//! #     LockedHeap::new(unsafe { FixedRegion::new(arena.as_mut_ptr(), arena.len()) });
//! use kheap::ObjectPool;
//!
//! struct Task {
//!     id: u32,
//!     state: [u64; 6],
//! }
//!
//! let tasks = ObjectPool::<Task, _, _>::new(&heap).unwrap();
//! let t = tasks.allocate(Task { id: 7, state: [0; 6] }).unwrap();
//! assert_eq!(t.id + t.state.len() as u32, 13);
//! drop(t); // back to the pool; dropping `tasks` destroys the pool
//! ```
//!
//! **Statistics** — a fixed-size snapshot (nothing is allocated, so a panic handler may take
//! one: [`LockedHeap::try_lock`] never waits for a held lock) that prints as a
//! `/proc/slabinfo`-style table, the invariant checker, and [`Heap::visit`] for a walk of every
//! chunk and page run (what the kernel's heap picture draws):
//!
//! ```rust
//! # use kheap::{FixedRegion, LockedHeap, SpinLock};
//! # let arena: &'static mut [u8] = Box::leak(vec![0u8; 1 << 20].into_boxed_slice());
//! # // SAFETY: the leaked buffer is used by this heap alone.
//! # let heap: LockedHeap<SpinLock, FixedRegion> =
//! #     LockedHeap::new(unsafe { FixedRegion::new(arena.as_mut_ptr(), arena.len()) });
//! let layout = core::alloc::Layout::new::<[u8; 100]>();
//! let block = heap.lock().unwrap().allocate(layout).unwrap();
//!
//! let h = heap.try_lock().expect("nobody holds the lock");
//! let stats = h.stats();
//! assert_eq!(stats.requested_bytes, 100);
//! println!("{stats}"); // "# name  block  in-use  free ..." then one line per class and pool
//! h.check_invariants().unwrap();
//! println!("{} of {} region pages free", h.source().free_pages(), h.source().pages());
//! # drop(h);
//! # // SAFETY: allocated above with this layout.
//! # unsafe { heap.lock().unwrap().deallocate(block, layout) };
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds | needs |
//! | --- | --- | --- | --- |
//! | `debug-checks` | off | double/invalid free detection with messages naming the address and class or pool; poisoning and red zones through [`Checked`] | — |
//! | `lock_api` | off | `LockApi<R>`: any `lock_api::RawMutex` (e.g. `spin`'s) as the heap's lock; kheap's locks as `lock_api::RawMutex` | the `lock_api` crate |
//! | `allocator-api` | off | `core::alloc::Allocator` for [`PoolAllocator`], so `Box::new_in(x, pool)` and `Vec::new_in(pool)` use a user pool | **nightly** Rust (the trait is unstable) |
//! | `testing` | off | `testing`: an arena page source with fault injection and a small PRNG, for host tests, benchmarks and fuzzing | `std` |
//!
//! [`IrqSpinLock`] and [`X86Interrupts`] exist on `target_arch = "x86_64"` only; everything
//! else is architecture-independent `no_std` code without dependencies.
//!
//! # Minimum Rust version
//!
//! Rust **1.88** (stable; the first with let chains), without the `allocator-api` feature. The
//! repository's tests build the crate on that toolchain as a path and as a git dependency of a
//! fresh project.
//!
//! # Vocabulary
//!
//! * *size class*: one of the 36 general block sizes a `Layout` maps to (module `size_class`).
//! * *chunk*: one page of equal blocks, described by a `ChunkDesc` in a root slot (`chunk`).
//! * *chunk lists*: the chunks of one block size, on a partial, a full and an empty (reserve)
//!   list (`chunk_lists`).
//! * *magazine*: a stack of free blocks in front of chunk lists; one type for the classes and
//!   the user pools (`magazine`).
//! * *front* and *back*: the magazines; and all that stands behind them (chunk lists, root
//!   runs, the page map, the large allocator, the page source), which the front reaches by
//!   refills in batches and give-backs of one block (`heap`, `back::Back`). In a [`PerCpuHeap`], the per-CPU magazines are the front and
//!   the whole [`LockedHeap`] is the back.
//! * *pin*: what gives the running code its CPU's front ([`Cpus`]); *drain*: emptying every
//!   CPU's front into the back.
//! * *user pool*: what [`Heap::create_pool`] makes, chunk lists and a magazine of one object
//!   size, named by a [`PoolId`] and kept in a pool header (`pool`). [`ObjectPool`] is a typed
//!   user pool of a [`LockedHeap`], [`PoolBox`] its owning box, and [`PoolAllocator`] a user pool
//!   of a [`LockedHeap`] by id, which implements `Allocator` (`object_pool`).
//! * *root run*: pages holding the heap state, chunk descriptors and pool headers (`root`).
//! * *page map*: what each heap page is, from any address in it (`pagemap`).
//!
//! # Root runs, chunk lists and chunks
//!
//! ```text
//!   Heap { source, state* }
//!            │
//!            ▼  first root run (pages 0-5)               more root runs (1 page each)
//!   ┌────────────────────────────────────────────┐     ┌──────────────────────────────┐
//!   │ header │ heap state │ descriptor slots …   │────▶│ header │ descriptor slots …  │──▶ …
//!   └──────────────┬──────────────────┬──────────┘     └──────────────────────────────┘
//!                  │ magazines ───────┼──────────────────────────▶ free blocks of the classes
//!                  │ class chunk lists│ ChunkDesc ─────────────▶ chunk page (blocks only)
//!                  │ pool list ───────┼──▶ pool root runs: header │ PoolHeader slots …
//!                  │ page map ────────┼──▶ radix nodes ──▶ leaf: page → ChunkDesc / root / large
//!                  │ LargeAlloc ──────┴──▶ regions and page runs
//! ```
//!
//! All bookkeeping lives in *root runs* taken from the page source (module `root`): the heap
//! state, the headers of user pools, and one *descriptor* per chunk. Keeping the descriptors
//! out of line means all 4096 bytes of a chunk serve blocks (two 2048-byte blocks per chunk, one
//! 4096-byte block per chunk, 512 blocks of 8 bytes). Descriptor slots and pool slots are
//! separate chains of root runs with their own slot size; when a chain's last run is full
//! another page is chained (for descriptors, one mapped ahead of need once the last run is half
//! used: see "Work per call"). Freed slots are recycled LIFO. Each run header counts its live
//! slots, and [`Heap::trim`] unmaps every run without one (except the first, which holds the
//! heap state), so the root pages follow the number of chunks and pools back down.
//!
//! The first root run (six pages, mostly magazines) is laid out as follows (byte offsets;
//! `debug-checks` only changes the descriptor size):
//!
//! ```text
//!   0      RootHeader        40 B   magic "kheaprt1", next run, pages, slot offset/size/count/
//!                                   bump, live slots
//!   40     HeapState      21720 B
//!   40       classes       2016 B   36 × ChunkLists (56 B): partial/full/empty lists, counters,
//!                                   geometry
//!   2056     large          880 B   LargeAlloc (bins, bitmaps, index root, the excess regions;
//!                                   asserted <= 1536 B)
//!   2936     descs           56 B   Roots: the descriptor chain (this run is its first)
//!   2992     pools           80 B   Roots of the pool-header chain, pool list and count, next
//!                                   generation
//!   3072     large pages      8 B   pages the large allocator maps
//!   3080     requested        8 B   requested bytes of live blocks   ┐ touched by every
//!   3088     window          16 B   the page source's window         │ allocation and free:
//!   3104     map             40 B   PageMap: top node, node count,   │ kept together
//!                                   cached level-2 node, spare node  │
//!   3144     mags         18576 B   ClassMagazines: 36 counts (u32), ┘
//!                                   then 36 × 64 block pointers
//!   21720    last pool       24 B   the user pool named last and its header (skips the id
//!                                   check's page-map lookup on repeated calls)
//!   21744    pending         16 B   PendingChunks: empty chunks waiting to be released
//!   21760  descriptor slots         88 × 32 B ChunkDesc (27 × 104 B with debug-checks)
//!   24576  end of the run
//! ```
//!
//! A later descriptor run is a 40-byte header and 126 slots of 32
//! bytes (39 of 104); a pool run is a header and 11 `PoolHeader` slots of 344 bytes (a pool's
//! identity, its chunk lists and its magazine). The unit test
//! `root_page_layout_matches_the_crate_docs` keeps these numbers true.
//!
//! A chunk (module `chunk`) is one page of blocks of one stride. Blocks of 8 bytes and more keep
//! a LIFO free list threaded through the free blocks as 16-bit in-chunk byte offsets, plus a
//! bump cursor for never-used blocks, so a new chunk is set up in O(1). Blocks of 1 to 7 bytes
//! (user pools only) are not rounded up; their chunks start with a two-level free bitmap instead
//! (a 1-byte block cannot hold a link, and the bitmap also catches double frees among the up to
//! 3632 blocks of a tiny chunk, which an allocated bitmap in the descriptor could not cover):
//!
//! ```text
//!   list chunk (stride s >= 8)                     tiny chunk (stride s in 1..=7)
//!   0      s      2s            bump         4096  0       8          8+8W                   4096
//!   ┌──────┬──────┬─── … ───────┬── … ──┬────┐     ┌───────┬──────────┬────────────────────┐
//!   │blk 0 │blk 1 │             │unused │tail│     │summary│ W words  │ capacity × s bytes │
//!   └──────┴──────┴─── … ───────┴── … ──┴────┘     │  u64  │free bits │ of blocks          │
//!   free block: [u16 offset of next free | …]      └───────┴──────────┴────────────────────┘
//! ```
//!
//! (1-byte blocks: W = 57, 3632 blocks per chunk; 7-byte blocks: W = 9, 573 blocks.)
//!
//! Chunk lists (module `chunk_lists`) keep the chunks of one block size on three doubly linked
//! lists through the descriptors: *partial* (some blocks free), *full* and *empty*. Allocation
//! takes the head of the partial list; a full chunk that gets a block back is pushed at the head,
//! so the next allocations refill the chunk that was most recently full (an O(1) stand-in for
//! "the fullest chunk"), which lets the other partial chunks drain. Chunk lists map no chunk
//! before their first allocation.
//!
//! # Magazines: the front
//!
//! Each general class has a magazine in the heap state, and each user pool of 8-byte blocks and
//! more one in its header (module `magazine`: one `Magazine` type, 64 blocks for a class, 32 for
//! a pool), used LIFO. [`Heap::allocate`] pops one and [`Heap::deallocate`] pushes one, so the
//! common call is a table lookup for the class, a pop or a push, and the requested-bytes
//! counter: it touches neither the page map, nor the chunk descriptor and lists, nor the block.
//! An empty magazine is refilled with a quarter magazine of blocks from its chunk lists, but at
//! most a chunk's worth of bytes (mapping one chunk at most); a free into a full one gives that
//! block straight back to its chunk (one page-map lookup, no page released; see "Work per
//! call" below). Those are the *back*'s operations (`back::Back::refill` and
//! `give_back_one`), which take the magazine or the lists from outside: the magazines are the
//! heap's front, and everything behind them its back. A cached block still counts as used by its chunk, so its
//! chunk stays mapped, but statistics count it as free. The freed pointer is cached with a
//! provenance that covers the whole block: rebuilt from the page source's
//! [window](PageSource::window) when it has one (release builds then free without any lookup),
//! otherwise from the chunk page the page map names. The inlined fast path covers every layout
//! a class serves ([`size_class::small_class`]: one table load for alignments up to 8, one more
//! for larger ones); a page-map lookup and every refill or give-back go through out-of-line slow
//! paths to the same magazines.
//! Pools of 1–7-byte blocks go straight to their chunks, whose free bitmap is also what catches
//! a double free there.
//!
//! # Work per call
//!
//! Every heap call runs with interrupts off in a kernel, so what one call may do is bounded, not
//! only its average (module `back`). Besides the magazine pop or push, a class allocation or
//! free does at most one of:
//!
//! * a **refill**: at most `back::BATCH_BYTES` (one page) of blocks — 16 blocks up to
//!   256 bytes, 8 of 512, 4 of 1024, 2 of 2048, one 4096-byte block — from chunks already
//!   mapped, or from one new chunk (one page mapped) when none has a free block;
//! * a **give-back**: a free into a full magazine gives its one block back to its chunk (one
//!   page-map lookup). A chunk it empties with the class's reserve of empty chunks full is not
//!   released in that call: it waits on the heap's list of pending chunks (module `pending`, 16
//!   at most), and a later refill releases it (or a class that needs a chunk takes it); only a
//!   free that finds the list full releases its chunk itself. (A batch of 16 given back at
//!   once, as frees did before, was the heap's longest free; releasing the chunk's page in the
//!   free was the next longest.)
//!
//! The metadata a new chunk needs — a descriptor slot, and a page-map leaf when the chunk lies
//! in a new 2 MiB window — is created ahead of need, one page per call, by refills that map no
//! chunk: a spare page-map node, and a spare descriptor run once
//! the last one is half used (`back::Back::prepare`). So a call that maps a chunk maps that one
//! page. Only if no such quiet call came between two needs (or for the two nodes of a new 1 GiB
//! window) does a call map metadata itself, as before: one root page and the nodes of one
//! page-map path at most. A failure to pre-create is not reported: nothing changed, and the call
//! that needs the page maps it (or fails cleanly). The large allocator's calls (new regions,
//! page runs) are bounded by its own rules (module `large`).
//!
//! # Size classes
//!
//! [`size_class::class_for`] is the one mapping from a `Layout` to a class or to the large
//! allocator: the smallest class that is at least the size and a multiple of the alignment
//! (chunks are page aligned, so a block's alignment is the largest power of two dividing its
//! class), as long as the rounding wastes at most 1/8 of the block for sizes from 64 bytes; an
//! alignment larger than the size may force more waste. Every class leaves at most 81 bytes of a
//! chunk unused (the table's worst is 64). It takes no loop and no division: for alignments up
//! to 8, one load from a 1 KiB table built at compile time (the waste rule folded in); for larger
//! ones, one load from a second such table (4.6 KiB).
//!
//! # The page map
//!
//! Freeing a block must find its chunk descriptor without a header in front of the block. The
//! page map (module `pagemap`) is a 4-level radix tree over 48-bit virtual page numbers, shaped
//! like an x86_64 page table, whose nodes are pages from the page source. Each leaf entry says
//! what a heap page is: a chunk (pointer to its descriptor), a root page (pointer to its run) or
//! a large-allocator page (pointer to the start of its mapping). The large allocator gets its
//! pages through a wrapper source that records them. A lookup is four dependent loads, or two
//! when the address lies in the same 1 GiB as the previous lookup (the map caches that level-2
//! node); it also lets debug checks reject foreign pointers in O(1), and makes a user pool id
//! (the address of its header slot plus a generation number) checkable in O(1).
//!
//! Provenance: the pointer a caller frees may carry the provenance of only the bytes it asked
//! for (a `Box`'s does, under Stacked Borrows). So a chunk's free-list link is written through
//! that pointer only when the request covers the link's two bytes (otherwise through the chunk's
//! page pointer), the large allocator, which reads a header in front of the block, is handed
//! the pointer rebuilt from its mapping's start (`with_addr`), and a magazine keeps a freed
//! block as a pointer rebuilt from its chunk page or from the page source's window, so the next
//! owner of the block never gets the narrow pointer of the previous one. No pointer is ever made
//! from an integer, so the crate runs under Miri with `-Zmiri-strict-provenance`.
//!
//! # Locking
//!
//! [`Heap`] is the algorithm and takes `&mut self`. [`LockedHeap`] wraps it behind a
//! [`RawLock`] and implements `GlobalAlloc`. The rule: every heap operation runs inside one
//! `lock()`/`unlock()` pair, called by the same holder, never nested; the page source is called
//! with the lock held and must not allocate from the heap. A kernel's lock disables interrupts
//! (saving the flag in `lock`, restoring it in `unlock`, as [`IrqSpinLock`] does), so interrupt
//! handlers may allocate. [`LockedHeap::try_lock`] takes the lock only if it is free, for reports
//! that must never wait. With several CPUs, [`PerCpuHeap`] adds a pin before that lock (see
//! "Several CPUs" above for its lock order).
//!
//! # Several CPUs: the per-CPU front
//!
//! [`PerCpuHeap`] (module `percpu`) puts a front per CPU before a [`LockedHeap`], which becomes
//! the shared *back*: each CPU index has a magazine per class (the same `Magazine` type, at
//! most [`FRONT_CLASS_BYTES`] = 8 KiB of blocks each) and [`FRONT_POOL_SLOTS`] slots for user
//! pools (8 KiB each). A hit allocates or frees in the current CPU's front only, pinned by the
//! [`Cpus`] implementation (interrupts off in a kernel; on the host, `ThreadCpus` and a slot
//! lock per CPU): no shared lock, no atomic read-modify-write. A miss takes the back lock once for
//! half a magazine. A block in a front is an allocated block for the back (the front allocates
//! its blocks from the back and frees them back), so the back's checks and invariants are
//! unchanged and a block freed on another CPU is simply cached by the CPU that frees it.
//!
//! * **Bound**: one CPU's front caches at most [`FRONT_BYTES_PER_CPU`] = 264 992 bytes (259 KiB);
//!   `N` CPUs at most `N` times that.
//! * **Statistics** ([`PerCpuHeap::stats`]) sum over the back and every front: cached blocks
//!   count as free and cached, and the requested bytes stay exact.
//! * **Drains**: [`PerCpuHeap::trim`], [`PerCpuHeap::destroy_pool`] and an allocation the back
//!   refuses for want of pages first empty every front: the drainer flushes its own front, then
//!   flushes the others itself where [`Cpus::pin_remote`] allows (the host), or asks their owners
//!   ([`Cpus::ask`]: the kernel's drain IPI, whose handler flushes its own CPU's front with
//!   [`PerCpuHeap::serve_drain`]; every heap call also serves a pending request at its end), and
//!   waits for them within the platform's limit ([`Cpus::wait`]), serving its own front meanwhile.
//!   So memory parked in another CPU's front never makes an allocation fail, as long as that CPU
//!   answers within the limit (it runs with interrupts on, or calls the heap).
//! * **Lock order**: a front pin, then the back lock, then whatever the page source takes. A
//!   drainer holds at most one pin at a time and never the back lock while it waits; a pinned
//!   owner never waits for another front. Never call a `PerCpuHeap` while holding its back lock.
//! * **TLB shootdown** is the page source's business: the kernel's source unmaps a heap page on
//!   every CPU (NMI shootdown, waiting for every acknowledgement) before its frame can be reused,
//!   so no CPU can reach a freed page through a stale TLB entry; the heap only relies on
//!   [`PageSource::unmap_pages`] returning after that.
//!
//! # Invariants (checked by [`Heap::check_invariants`])
//!
//! * Root runs: correct magic; slot cursors within the run; every run after the first is one
//!   page; every handed-out slot is free (and on its chain's free list exactly once, inside a run
//!   of the chain) or holds its chain's kind; each run's live-slot count and the chain's counts
//!   match.
//! * Every chunk is on exactly one list of its chunk lists: partial ⇔ 0 < used < capacity,
//!   full ⇔ used = capacity, empty ⇔ used = 0; prev/next links agree; at most
//!   `ChunkLists::reserve_limit` empty chunks (see [`RESERVE_BLOCKS`]).
//! * A chunk's free list stays inside the blocks handed out so far, links only block starts,
//!   has no cycle, and free + used = blocks handed out (tiny chunks: bitmap and summary agree).
//!   With `debug-checks`, the allocated bitmap has exactly `used` bits set, less the chunk's
//!   blocks that sit in a magazine, and each descriptor names its own chunk lists.
//! * Every block in a magazine is the start of a block handed out of a chunk of its class or
//!   pool, is not on its chunk's free list, is cached once, and (with `debug-checks`) is marked
//!   free in the allocated bitmap.
//! * The page map records exactly the root pages, the chunks (each pointing to its own
//!   descriptor) and the large-allocator pages; its node count is right.
//! * Chunk-list counters (live blocks, chunks) and heap counters (user pools, large pages) match
//!   the walk; requested bytes never exceed held bytes; the large allocator passes its own
//!   checker.
//!
//! # Memory return
//!
//! A chunk whose last block is freed stays with its chunk lists while they keep fewer empty
//! chunks than their reserve limit, waiting for the next allocation: a class or pool that
//! oscillates around a chunk boundary does not map and unmap a page on every other call. The
//! limit is [`RESERVE_BLOCKS`] (16) blocks' worth of chunks, at least one: one chunk for small
//! blocks, 16 for 4096-byte blocks. Past the limit the chunk goes back to the page source, but
//! not in the free that emptied it (module `pending`): it waits, mapped, on a heap-wide list of
//! at most 16, until a refill that mapped nothing releases it, a class or pool that needs a new
//! chunk takes it instead of mapping one, a page run's growth that found no room releases
//! every waiting page before it tries again, or [`Heap::trim`] (or a failing allocation)
//! releases them all. The large allocator likewise keeps up to 512 KiB of wholly free regions
//! mapped (released by `trim` and before an allocation fails), and the regions that empty
//! beyond that wait too (eight at most): the next large allocation served without mapping
//! unmaps one. So a free gives no page back while those lists have room; it unmaps only a
//! page run, whose pages are its own. Blocks in
//! magazines keep their chunks. A growing `realloc` of a page run first asks the page source to
//! map the pages right after it ([`PageSource::grow_pages`]; the kernel's heap window claims
//! them from its buddy allocator); if they are taken, it asks the source to move the run
//! ([`PageSource::remap_pages`]: the kernel moves the frames to a new range of its window and maps
//! only the extra pages, so no byte is copied), and copies the block into a new run only if the
//! source cannot (the default); a shrinking one unmaps the run's tail. A region block that grows
//! and cannot grow where it is moves to a page run, below the page-run threshold too, when it
//! at least doubles to 16 KiB or more ([`LargeAlloc::allocate_for_growth`]: a vector growing
//! as `Vec` does, most likely), so that its next doublings can grow in place rather than be
//! copied again.
//!
//! A page source may also work ahead of need ([`PageSource::prepare`]): a call that made no
//! page-source call of its own — a refill that found its blocks in mapped chunks, a large
//! allocation served from a region the heap had — gives it one turn when it asks for one
//! ([`PageSource::wants_prepare`]), and [`Heap::init`] gives it as many as it wants. The
//! kernel's heap window maps one page per turn into a reserve, from which a later region or
//! page run is handed out without page-table work, so the call that needs 17 pages does not
//! map them.
//!
//! [`Heap::trim`] empties the magazines into their chunks, drops every reserve and cache, unmaps
//! every root run without a live slot except the first, and unmaps empty page-map nodes: after
//! every block is freed (and every user pool destroyed) and the heap is trimmed, it maps exactly
//! what [`Heap::init`] mapped, the first root run and the page-map nodes that record it. Trim is
//! linear in the root slots and page-map nodes; it is meant to be called rarely — and when an
//! allocation fails for want of pages: the heap then trims itself before it retries once, so
//! neither its caches nor the empty root runs and page-map nodes that a chunk which could not be
//! created leaves behind ever make an allocation fail.
//!
//! # Errors and debugging
//!
//! Exhaustion is never a panic: every path returns a typed error ([`AllocError`],
//! [`PoolError`]), and `GlobalAlloc` turns it into a null pointer. With feature `debug-checks`,
//! freeing a pointer the heap does not own, an interior pointer, a block of another class or
//! pool, or a block twice panics with a message that names the address and the class or pool
//! (module `debug`), at the free that is wrong; a block in a magazine is marked free in its
//! chunk's allocated bitmap, so freeing it again is caught too. The checks are hooks the paths
//! call unconditionally, which do nothing without the feature. [`Heap::stats`] returns a
//! fixed-size [`HeapStats`] that prints as a `/proc/slabinfo`-like table.
//!
//! # Modules
//!
//! From the ground up (each imports only those before it): `source` (the page-source trait),
//! `size_class` (the class table and mapping), `error`, `magazine`, `chunk` (one page of
//! blocks), `pagemap`, `root` (root runs and slots), `debug` (reports of bad frees),
//! `chunk_lists` (the chunks of one size), `pending` (empty chunks waiting to be released),
//! `back` (what the magazines reach behind them:
//! refills, give-backs, flushes), `pool` (user pool ids and headers), `large/` (the large allocator),
//! `stats`, `heap/` ([`Heap`]: its state, the front, the class and pool paths, statistics and
//! the checker), `checked/` ([`Checked`]: red zones and poison around another allocator),
//! `locked` ([`LockedHeap`], [`RawLock`], [`SpinLock`]), `cpu` ([`Cpus`], [`OneCpu`],
//! `ThreadCpus`), `percpu/` ([`PerCpuHeap`]: the per-CPU front before a `LockedHeap`),
//! `lock/` ([`IrqLock`]/[`IrqSpinLock`], and with feature `lock_api` the `lock_api` interop),
//! `object_pool` ([`ObjectPool`],
//! [`PoolBox`], [`PoolAllocator`]), `walk` ([`Item`]: what [`Heap::visit`] reports),
//! `fixed_region/` ([`FixedRegion`], a page source over an already mapped region, and its run
//! tree), and `testing` (feature `testing`: an arena page source and a PRNG for host tests).

#![cfg_attr(not(test), no_std)]
#![cfg_attr(all(test, feature = "allocator-api"), feature(allocator_ext))]

#[cfg(all(feature = "testing", not(test)))]
extern crate std;

mod back;
pub mod checked;
mod chunk;
mod chunk_lists;
pub mod cpu;
mod debug;
pub mod error;
mod fixed_region;
mod heap;
mod large;
mod lock;
mod locked;
mod magazine;
mod object_pool;
mod pagemap;
mod pending;
mod percpu;
mod pool;
mod root;
pub mod size_class;
pub mod source;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod walk;

pub use checked::{CheckBlock, Checked};
pub use chunk_lists::RESERVE_BLOCKS;
#[cfg(any(test, feature = "testing"))]
pub use cpu::ThreadCpus;
pub use cpu::{Cpus, OneCpu};
pub use error::{AllocError, InitError, InvariantError, PoolError};
pub use fixed_region::FixedRegion;
pub use heap::{FIRST_RUN_PAGES, Heap};
pub use large::{LargeAlloc, LargeStats};
#[cfg(feature = "lock_api")]
pub use lock::LockApi;
pub use lock::{Interrupts, IrqLock};
#[cfg(target_arch = "x86_64")]
pub use lock::{IrqSpinLock, X86Interrupts};
pub use locked::{HeapGuard, LockedHeap, RawLock, SpinLock};
pub use object_pool::{ObjectPool, PoolAllocator, PoolBox};
pub use percpu::{
    CpuFront, FRONT_BYTES_PER_CPU, FRONT_CLASS_BYTES, FRONT_POOL_BYTES, FRONT_POOL_SLOTS,
    PerCpuHeap, class_limit,
};
pub use pool::PoolId;
pub use source::{PAGE_SIZE, PageSource, PageSourceError};
pub use stats::{BlockStats, HeapStats, MAX_POOL_STATS, PageStats, UserPoolStats};
pub use walk::Item;
