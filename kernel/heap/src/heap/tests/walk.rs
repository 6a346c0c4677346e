//! `Heap::visit`: every part of the heap, agreeing with the statistics.

use super::*;
use crate::walk::{Item, Owner, RootKind};

#[test]
fn the_walk_covers_every_page_and_block_the_statistics_count() {
    let mut h = heap(4096);
    let mut live = Vec::new();
    for i in 0..300 {
        let l = layout(8 + i % 200, 8);
        live.push((h.allocate(l).unwrap(), l));
    }
    for size in [5000, 9000, 30_000, 70_000, 300_000] {
        let l = layout(size, 16);
        live.push((h.allocate(l).unwrap(), l));
    }
    // A hole in a region: free the middle one of three region blocks.
    let (hole, hole_layout) = live.remove(301);
    // SAFETY: a live block of this heap with this layout.
    unsafe { h.deallocate(hole, hole_layout) };
    let pool = h.create_pool(40, 8).unwrap();
    let pooled = h.pool_allocate(pool).unwrap();

    let s = h.stats();
    let (mut root_pages, mut desc_runs, mut pool_runs, mut spare_runs) = (0, 0, 0, 0);
    let (mut chunks, mut pool_chunks, mut class_used) = (0, 0, vec![0; CLASS_SIZES.len()]);
    let (mut regions, mut region_bytes, mut tiled, mut free_bytes, mut holes) = (0, 0, 0, 0, 0);
    let (mut runs, mut run_pages, mut nodes) = (0, 0, None);
    let mut last_region = (0, 0);
    h.visit(|item| match item {
        Item::RootRun {
            pages,
            kind,
            live,
            slots,
            ..
        } => {
            assert!(live <= slots);
            root_pages += pages;
            match kind {
                // An unused descriptor run is the spare, mapped ahead of need.
                RootKind::Descriptors if live == 0 => spare_runs += 1,
                RootKind::Descriptors => desc_runs += 1,
                RootKind::Pools => pool_runs += 1,
            }
        }
        Item::Chunk {
            addr,
            owner,
            block_size,
            used,
            capacity,
        } => {
            assert_eq!(addr % PAGE_SIZE, 0);
            assert!(used <= capacity && block_size * capacity <= PAGE_SIZE);
            chunks += 1;
            match owner {
                Owner::Class(i) => {
                    assert_eq!(block_size, CLASS_SIZES[i]);
                    class_used[i] += used;
                }
                Owner::Pool(id) => {
                    assert_eq!(id, pool);
                    pool_chunks += 1;
                }
            }
        }
        Item::Region { addr, bytes } => {
            assert_eq!(tiled, region_bytes, "the previous region's blocks tile it");
            regions += 1;
            region_bytes += bytes;
            tiled += crate::large::REGION_OVERHEAD;
            last_region = (addr, bytes);
        }
        Item::RegionBlock { addr, bytes, free } => {
            assert!(addr > last_region.0 && addr + bytes <= last_region.0 + last_region.1);
            tiled += bytes;
            if free {
                free_bytes += bytes;
                holes += 1;
            }
        }
        Item::PageRun { addr, pages } => {
            assert_eq!(addr % PAGE_SIZE, 0);
            runs += 1;
            run_pages += pages;
        }
        Item::PageMap { nodes: n } => nodes = Some(n),
    });
    assert_eq!(tiled, region_bytes);
    assert_eq!((desc_runs, pool_runs), (1, 1));
    assert!(spare_runs <= 1);
    assert_eq!(root_pages, s.pages.root);
    assert_eq!(chunks, s.pages.chunks);
    assert_eq!(pool_chunks, 1);
    for (i, c) in s.classes.iter().enumerate() {
        // A chunk's used count includes the blocks its class's magazine holds.
        assert_eq!(class_used[i], c.in_use + c.cached, "class {i}");
    }
    assert_eq!(
        (regions, region_bytes),
        (s.large.regions, s.large.region_bytes)
    );
    assert_eq!(free_bytes, s.large.free_bytes);
    assert!(holes >= 1);
    assert_eq!(
        (runs, run_pages),
        (s.large.page_runs, s.large.page_run_pages)
    );
    assert_eq!(nodes, Some(s.pages.page_map));
    assert_eq!(
        root_pages + chunks + region_bytes / PAGE_SIZE + run_pages + s.pages.page_map,
        s.pages.total
    );

    // SAFETY: live blocks of this heap, freed once.
    unsafe {
        h.pool_deallocate(pool, pooled);
        for (p, l) in live {
            h.deallocate(p, l);
        }
    }
    h.destroy_pool(pool).unwrap();
    h.trim();
    let mut after = Vec::new();
    h.visit(|item| after.push(item));
    assert!(
        after
            .iter()
            .all(|i| matches!(i, Item::RootRun { .. } | Item::PageMap { .. })),
        "{after:?}"
    );
}

#[test]
fn an_uninitialised_heap_has_nothing_to_visit() {
    let h = heap(16);
    h.visit(|item| panic!("{item:?}"));
}
