//! Growing vectors inside the kernel: the cache-aliasing pattern of issue 13 (many `Vec<u64>`-like
//! buffers grown round-robin, see `kheap_workload::vec_growth`), on every allocator, with the
//! method of the main table: a fresh allocator per replay, the fastest of [`Sizes::repeats`]
//! timed runs in rounds over the allocators, and an untimed verifying run that writes and checks
//! every element.

use kernel::memory::KernelPageSource;
use kernel::serial_println;
use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::replay::ReplayError;
use kheap_workload::tsc::stamp;
use kheap_workload::vec_growth::{Buffers, VecGrowth};

use crate::peers::{Peer, Visit, with_peer};
use crate::report::Ratio;
use crate::{BenchError, Sizes};

/// The fastest timed run of one allocator so far (cycles, most pages held), or why it has none.
type Best = Option<Result<(u64, Option<usize>), BenchError>>;

/// One timed run: the cycles of all pushes, and the most pages held.
struct Timed<'a>(VecGrowth, &'a mut Buffers);

impl Visit for Timed<'_> {
    type Out = Result<(u64, Option<usize>), ReplayError>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let start = stamp();
        let pushed = self.1.push_all::<A, false>(a, self.0);
        let cycles = stamp().wrapping_sub(start);
        let peak = a.pages().map(|p| p.peak);
        // The timed run does not check contents, so freeing cannot fail.
        let _ = self.1.free_all::<A, false>(a);
        pushed.map(|()| (cycles, peak))
    }
}

/// The verifying run.
struct Verify<'a>(VecGrowth, &'a mut Buffers);

impl Visit for Verify<'_> {
    type Out = Result<(), ReplayError>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let pushed = self.1.push_all::<A, true>(a, self.0);
        let freed = self.1.free_all::<A, true>(a);
        pushed.and(freed)
    }
}

/// Runs and prints the section. Returns the first failure (an arena that could not be mapped, a
/// run that ran out of memory or did not verify).
pub fn run(sizes: &Sizes) -> Result<(), BenchError> {
    let (shape, budget) = sizes.vectors;
    serial_println!();
    serial_println!(
        "== Growing vectors (cache aliasing): {} buffers of u64 grown round-robin to {} elements \
         each ({} KiB), push = one u64 store, growth = realloc to twice the capacity ==",
        shape.vectors,
        shape.elements,
        shape.final_bytes() >> 10
    );
    serial_println!(
        "{:<12} {:>10} {:>11} {:>8} {:>7}  verified",
        "allocator",
        "pushes",
        "cycles/push",
        "vs talc",
        "peak"
    );
    let mut buffers = Buffers::new(shape);
    let mut best: [Best; Peer::ALL.len()] = [None; Peer::ALL.len()];
    for _ in 0..sizes.repeats.max(1) {
        for (i, &peer) in Peer::ALL.iter().enumerate() {
            if matches!(best[i], Some(Err(_))) {
                continue;
            }
            let out = with_peer(peer, KernelPageSource, budget, Timed(shape, &mut buffers));
            let result = match out {
                Err(cause) => Err(BenchError::Arena {
                    allocator: peer.name(),
                    cause,
                }),
                Ok(Err(error)) => Err(BenchError::Verify {
                    workload: "vec-growth",
                    allocator: peer.name(),
                    error,
                }),
                Ok(Ok(x)) => Ok(x),
            };
            best[i] = match (best[i], result) {
                (Some(Ok(b)), Ok(x)) if b.0 <= x.0 => Some(Ok(b)),
                (_, r) => Some(r),
            };
        }
    }
    let per_push = |r: &Best| match r {
        Some(Ok((cycles, _))) => Some(*cycles as f64 / shape.pushes().max(1) as f64),
        _ => None,
    };
    let talc = per_push(&best[Peer::ALL.iter().position(|&p| p == Peer::Talc).unwrap_or(0)]);
    let mut first_error = None;
    for (i, &peer) in Peer::ALL.iter().enumerate() {
        let verified = match best[i] {
            Some(Ok(_)) => {
                match with_peer(peer, KernelPageSource, budget, Verify(shape, &mut buffers)) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(BenchError::Verify {
                        workload: "vec-growth",
                        allocator: peer.name(),
                        error,
                    }),
                    Err(cause) => Err(BenchError::Arena {
                        allocator: peer.name(),
                        cause,
                    }),
                }
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        };
        let peak = match best[i] {
            Some(Ok((_, Some(p)))) => alloc::format!("{p}"),
            _ => alloc::format!("{budget}"),
        };
        match (per_push(&best[i]), &verified) {
            (Some(v), Ok(())) => serial_println!(
                "{:<12} {:>10} {:>11.1} {:>8} {:>7}  ok",
                peer.name(),
                shape.pushes(),
                v,
                Ratio(Some(v), talc),
                peak
            ),
            (_, Err(e)) => serial_println!("{:<12} FAILED: {e}", peer.name()),
            (None, Ok(())) => serial_println!("{:<12} not run", peer.name()),
        }
        if let Err(e) = verified {
            first_error.get_or_insert(e);
        }
    }
    serial_println!(
        "(cycles per push include the growths; peak: most pages held, the whole arena for talc \
         and linked_list)"
    );
    serial_println!();
    first_error.map_or(Ok(()), Err)
}
