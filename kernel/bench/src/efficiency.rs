//! Heap efficiency inside the kernel: talc's own heap-efficiency benchmark, replayed on every
//! allocator in the same budget of pages until the first refused request
//! (`kheap_workload::GrowthStream::talc_like`: talc's size and alignment distribution; of ten
//! calls five allocations, one free and four reallocs to 1 B..100 KB). The figure is the most
//! requested bytes live at once divided by the budget; every block is patterned and checked as
//! it goes (nothing here is timed).
//!
//! kheap takes its pages on demand from the heap window through a source capped at the budget,
//! so every page it holds counts: its page-map nodes too, one leaf page for each 2 MiB of the
//! window its pages fall in. talc and linked_list get the budget as one run mapped up front.
//! Where kheap's runs land is the window's choice, so the figure depends on the window's state:
//! in the whole benchmark this section runs after others whose runs left the window's free
//! pages in pieces across it, and kheap's page map then holds 87–94 node pages at the refusal
//! where it holds 17 on the window as boot left it (`-fw_cfg name=opt/kbench/only,string=efficiency`
//! runs this section alone).

use kernel::memory::KernelPageSource;
use kernel::serial_println;
use kheap::source::PAGE_SIZE;
use kheap_workload::GrowthStream;
use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::replay::{self, Efficiency, ReplayError, Slots};

use crate::peers::{Peer, Visit, with_peer};
use crate::{BenchError, SEED, Sizes};

/// Safety net for an allocator that never refuses: far more calls than fill any budget here.
const MAX_OPS: usize = 10_000_000;

/// One replay of a fresh stream.
struct Run<'a>(&'a mut Slots);

impl Visit for Run<'_> {
    type Out = Result<Efficiency, ReplayError>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let mut stream = GrowthStream::talc_like(SEED);
        replay::efficiency(a, &mut stream, MAX_OPS, self.0, replay::unlimited)
    }
}

/// Runs and prints the section; returns the first failure.
pub fn run(sizes: &Sizes, slots: &mut Slots) -> Result<(), BenchError> {
    let budget = sizes.efficiency_pages;
    let bytes = budget * PAGE_SIZE;
    serial_println!(
        "== Heap efficiency, talc's benchmark (sizes 4 B..10 KB favouring small, align 8 B 75% .. \
         2 KiB; 50% alloc, 10% free, 40% realloc to 1 B..100 KB): peak live requested bytes / \
         {} KiB before the first refused request ==",
        bytes >> 10
    );
    serial_println!(
        "{:<12} {:>10} {:>8}  verified",
        "allocator",
        "efficiency",
        "calls"
    );
    let mut first_error = None;
    for peer in Peer::ALL {
        match with_peer(peer, KernelPageSource, budget, Run(slots)) {
            Ok(Ok(e)) => {
                // Integer permille: the kernel prints no floating point it need not.
                let permille = e.peak_live * 1000 / bytes.max(1);
                serial_println!(
                    "{:<12} {:>8}.{}% {:>8}  ok{}",
                    peer.name(),
                    permille / 10,
                    permille % 10,
                    e.ops,
                    if e.failed {
                        ""
                    } else {
                        " (never refused: a lower bound)"
                    }
                );
            }
            Ok(Err(error)) => {
                serial_println!("{:<12} FAILED: {error}", peer.name());
                first_error.get_or_insert(BenchError::Verify {
                    workload: "efficiency",
                    allocator: peer.name(),
                    error,
                });
            }
            Err(cause) => {
                serial_println!("{:<12} no arena: {cause}", peer.name());
                first_error.get_or_insert(BenchError::Arena {
                    allocator: peer.name(),
                    cause,
                });
            }
        }
    }
    serial_println!(
        "(kheap takes its pages on demand from a source capped at the budget, so its own \
         bookkeeping pages count against it; talc and linked_list get the budget as one arena)"
    );
    serial_println!();
    first_error.map_or(Ok(()), Err)
}
