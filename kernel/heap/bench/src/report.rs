//! Results, tables (Markdown, also printed to stdout), the "targets vs achieved" verdicts, the
//! raw per-run CSV and the plots.

use std::fmt::Write;
use std::fs;
use std::io;
use std::path::Path;

use kheap_workload::latency::{Percentiles, TailPoint, tail};

use crate::aliasing::VecResult;
use crate::measure::{Efficiency, Latency, MemoryUse, median};
use crate::peers::{FixedPeer, Peer};
use crate::pools::FixedResult;
use crate::svg::{self, Series};
use crate::threads::ThreadsResult;

/// Everything measured for one allocator on one workload.
#[derive(Debug, Clone)]
pub struct PeerRun {
    /// Verification: ops checked, or what went wrong.
    pub verify: Result<usize, String>,
    /// ns per call (thread CPU time) of each timed run (empty when not timed).
    pub ns: Vec<f64>,
    /// ns per call of wall time of each timed run.
    pub wall_ns: Vec<f64>,
    /// Per run, this allocator's time divided by talc's time in the same run.
    pub ratio_to_talc: Vec<f64>,
    /// Fewest body ops any run completed (less than the body when the time budget cut it).
    pub ops_done: usize,
    /// A timed run ran out of memory.
    pub oom: bool,
    /// Single-call latencies.
    pub latency: Option<Latency>,
    /// Page-source use (page-backed allocators only).
    pub memory: Option<MemoryUse>,
    /// Why the allocator was not run on this workload at all.
    pub skipped: Option<String>,
}

impl PeerRun {
    /// A result with nothing timed yet.
    pub fn new(verify: Result<usize, String>) -> Self {
        Self {
            verify,
            ns: Vec::new(),
            wall_ns: Vec::new(),
            ratio_to_talc: Vec::new(),
            ops_done: usize::MAX,
            oom: false,
            latency: None,
            memory: None,
            skipped: None,
        }
    }

    /// A result for an allocator that is not run on this workload.
    pub fn skipped(why: String) -> Self {
        Self {
            skipped: Some(why),
            ..Self::new(Ok(0))
        }
    }

    /// Verified and never out of memory: may be ranked.
    pub fn ok(&self) -> bool {
        self.verify.is_ok() && !self.oom && !self.ns.is_empty()
    }

    /// Median ns per call.
    pub fn ns_median(&self) -> f64 {
        median(&self.ns)
    }

    /// Median of the per-run ratios to talc.
    pub fn ratio_median(&self) -> f64 {
        median(&self.ratio_to_talc)
    }
}

/// One workload's results.
#[derive(Debug, Clone)]
pub struct WorkloadResult {
    /// Table name.
    pub name: String,
    /// Description.
    pub title: String,
    /// Number of timed calls in the body.
    pub ops: usize,
    /// Results per allocator, in table order.
    pub peers: Vec<(Peer, PeerRun)>,
}

impl WorkloadResult {
    /// The result of `peer`, if it ran.
    pub fn get(&self, peer: Peer) -> Option<&PeerRun> {
        self.peers.iter().find(|(p, _)| *p == peer).map(|(_, r)| r)
    }
}

/// One target of the project for our heap and how it fared.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was promised.
    pub target: String,
    /// What was measured.
    pub achieved: String,
    /// Met, not met, or not measured (`None`).
    pub met: Option<bool>,
    /// The best other heap on the same measure (empty when it does not apply).
    pub best_peer: String,
}

/// Heap efficiency of every allocator on one mix.
#[derive(Debug, Clone)]
pub struct EfficiencyResult {
    /// Mix name (as the workload it belongs to).
    pub name: String,
    /// Per allocator.
    pub peers: Vec<(Peer, Efficiency)>,
    /// kheap in the kernel's model (`bench_alloc::CappedSource` over the arena: the budget
    /// caps mapped pages, the arena has room to place them), when kheap ran.
    pub kheap_window: Option<Efficiency>,
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct Report {
    /// Command line that produced it.
    pub command: String,
    /// Commit and state of the heap sources.
    pub code: String,
    /// CPU, cores, OS, compiler.
    pub machine: String,
    /// UTC date.
    pub date: String,
    /// Timed runs per allocator and workload.
    pub runs: usize,
    /// Smoke mode.
    pub quick: bool,
    /// PRNG seed.
    pub seed: u64,
    /// Arena size of the timed runs.
    pub arena_bytes: usize,
    /// Budget of the heap-efficiency test.
    pub efficiency_bytes: usize,
    /// Time budget of one replay, in seconds.
    pub budget_secs: f64,
    /// Cost of an empty `rdtsc` bracket.
    pub bracket: Percentiles,
    /// Smallest step the TSC readings move in (greatest common divisor of the bracket samples).
    pub tsc_step: u64,
    /// Workloads in order.
    pub workloads: Vec<WorkloadResult>,
    /// Heap efficiency per mix.
    pub efficiency: Vec<EfficiencyResult>,
    /// Fixed-size objects: user pools against slabmalloc (module `pools`).
    pub pools: Vec<FixedResult>,
    /// The growing vectors (module `aliasing`).
    pub vec_growth: Option<VecResult>,
    /// The threaded section (module `threads`).
    pub threads: Option<ThreadsResult>,
}

/// The tail of sorted latencies as plot points: (cycles, fraction of calls taking that long or
/// longer), p90 to the maximum.
fn tail_series(name: &str, points: &[TailPoint]) -> Series {
    Series {
        name: name.into(),
        points: points
            .iter()
            .map(|p| (p.ticks.max(1) as f64, p.calls as f64 / p.of.max(1) as f64))
            .collect(),
    }
}

/// A tail plot: exceedance on log–log axes, one curve per allocator.
fn tail_chart(title: &str, series: &[Series]) -> String {
    svg::line_chart(
        title,
        "cycles per call (log)",
        "fraction of calls taking x or more (log)",
        series,
        (true, true),
        false,
    )
}

/// Reads the `tail` rows of a `cargo kbench` log (`tail <alloc|free> <allocator> <cycles>
/// <calls> <of>`) and writes `kernel_tail_alloc.svg` and `kernel_tail_free.svg` into `dir`.
/// Returns how many allocators it plotted.
pub fn kernel_tail_plots(log: &Path, dir: &Path) -> io::Result<usize> {
    let text = fs::read_to_string(log)?;
    let mut curves: Vec<(String, String, Vec<TailPoint>)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ["tail", call, name, ticks, calls, of] = f[..] else {
            continue;
        };
        let (Ok(ticks), Ok(calls), Ok(of)) = (ticks.parse(), calls.parse(), of.parse()) else {
            continue;
        };
        let point = TailPoint { ticks, calls, of };
        match curves.iter_mut().find(|(c, n, _)| c == call && n == name) {
            Some((.., pts)) => pts.push(point),
            None => curves.push((call.into(), name.into(), vec![point])),
        }
    }
    if curves.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no `tail` rows (is this the serial output of `cargo kbench`?)",
        ));
    }
    let counter = if text.contains("counter: deterministic") {
        "instructions (-icount)"
    } else {
        "TSC cycles under TCG"
    };
    fs::create_dir_all(dir)?;
    for call in ["alloc", "free"] {
        let series: Vec<Series> = curves
            .iter()
            .filter(|(c, ..)| c == call)
            .map(|(_, name, pts)| tail_series(name, pts))
            .collect();
        let title = format!(
            "in-kernel kernel-mix: tail of {call} latency, p90 to max ({counter}, net of the bracket)"
        );
        fs::write(
            dir.join(format!("kernel_tail_{call}.svg")),
            tail_chart(&title, &series),
        )?;
    }
    Ok(curves.len() / 2)
}

/// Formats a Markdown table with padded columns (readable as plain text too).
pub fn md_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (c, cell) in row.iter().enumerate().take(cols) {
            width[c] = width[c].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, w) in width.iter().enumerate() {
            let cell = cells.get(c).map(String::as_str).unwrap_or("");
            let pad = w - cell.chars().count();
            if c == 0 {
                let _ = write!(s, " {cell}{} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{cell} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers);
    out.push('|');
    for (c, w) in width.iter().enumerate() {
        out.push_str(if c == 0 { ":" } else { " " });
        out.push_str(&"-".repeat(*w));
        out.push_str(if c == 0 { " |" } else { ":|" });
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// Smallest and largest finite value (NaN for none).
fn min_max(values: &[f64]) -> (f64, f64) {
    let finite = values.iter().copied().filter(|x| x.is_finite());
    (
        finite.clone().fold(f64::NAN, f64::min),
        finite.fold(f64::NAN, f64::max),
    )
}

fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "–".into()
    } else if ns >= 10_000.0 {
        format!("{:.0}", ns)
    } else if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "–".into()
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The flag shown instead of numbers for an allocator that must not be ranked.
fn flag(r: &PeerRun) -> Option<String> {
    if let Some(why) = &r.skipped {
        return Some(format!("not run: {why}"));
    }
    match &r.verify {
        Err(_) => Some("FAILED verification".into()),
        Ok(_) if r.oom => Some("out of memory".into()),
        Ok(_) if r.ns.is_empty() => Some("not timed".into()),
        Ok(_) => None,
    }
}

impl Report {
    fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = Vec::new();
        for w in &self.workloads {
            for (p, _) in &w.peers {
                if !peers.contains(p) {
                    peers.push(*p);
                }
            }
        }
        peers
    }

    fn workload(&self, name: &str) -> Option<&WorkloadResult> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// Latency passes behind the minima of `w` (the same for every allocator).
    fn latency_passes(&self, w: &WorkloadResult) -> usize {
        w.peers
            .iter()
            .find_map(|(_, r)| Some(r.latency.as_ref()?.passes))
            .unwrap_or(0)
    }

    /// Main table: ns per call (median) and ratio to talc (median of per-run ratios).
    fn speed_table(&self) -> String {
        let mut headers = vec!["allocator".to_string()];
        headers.extend(self.workloads.iter().map(|w| w.name.clone()));
        let mut notes = Vec::new();
        let rows: Vec<Vec<String>> = self
            .peers()
            .into_iter()
            .map(|p| {
                let mut row = vec![if p.is_reference() { format!("{} (ref)", p.name()) } else { p.name().into() }];
                for w in &self.workloads {
                    row.push(match w.get(p) {
                        None => "".into(),
                        Some(r) => match flag(r) {
                            Some(f) => f,
                            None => {
                                let cut = r.ops_done < w.ops;
                                if cut {
                                    notes.push(format!(
                                        "{} on {}: the {:.0} s budget cut runs after {} of {} calls; the figure is \
                                         the cost over that prefix.",
                                        p.name(), w.name, self.budget_secs, r.ops_done, w.ops
                                    ));
                                }
                                format!("{}{} ({})", fmt_ns(r.ns_median()), if cut { "†" } else { "" }, fmt_ratio(r.ratio_median()))
                            }
                        },
                    });
                }
                row
            })
            .collect();
        let mut out = md_table(&headers, &rows);
        for n in notes {
            let _ = writeln!(out, "\n† {n}");
        }
        out
    }

    /// Per-workload ranking of the verified allocators (references included but marked).
    fn rankings(&self) -> String {
        let mut out = String::new();
        for w in &self.workloads {
            let mut ok: Vec<(Peer, f64)> = w
                .peers
                .iter()
                .filter(|(_, r)| r.ok())
                .map(|(p, r)| (*p, r.ns_median()))
                .collect();
            ok.sort_by(|a, b| a.1.total_cmp(&b.1));
            let ranked: Vec<String> = ok
                .iter()
                .map(|(p, ns)| {
                    format!(
                        "{}{} {}",
                        p.name(),
                        if p.is_reference() { " (ref)" } else { "" },
                        fmt_ns(*ns)
                    )
                })
                .collect();
            let _ = write!(out, "- **{}**: {}", w.name, ranked.join(" < "));
            let failed: Vec<String> = w
                .peers
                .iter()
                .filter_map(|(p, r)| flag(r).map(|f| format!("{} ({f})", p.name())))
                .collect();
            if !failed.is_empty() {
                let _ = write!(out, "; not ranked: {}", failed.join(", "));
            }
            out.push('\n');
        }
        out
    }

    fn detail_table(&self, w: &WorkloadResult) -> String {
        let headers: Vec<String> = [
            "allocator",
            "ns/call median",
            "min",
            "max",
            "wall median",
            "vs talc",
            "calls timed",
            "verification",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = w
            .peers
            .iter()
            .map(|(p, r)| {
                let (min, max) = min_max(&r.ns);
                vec![
                    p.name().into(),
                    flag(r).unwrap_or_else(|| fmt_ns(r.ns_median())),
                    fmt_ns(min),
                    fmt_ns(max),
                    fmt_ns(median(&r.wall_ns)),
                    fmt_ratio(r.ratio_median()),
                    if r.ns.is_empty() {
                        "–".into()
                    } else {
                        format!("{}/{}", r.ops_done.min(w.ops), w.ops)
                    },
                    match (&r.verify, &r.skipped) {
                        (_, Some(_)) => "–".into(),
                        (Ok(n), None) => format!("ok ({n} calls)"),
                        (Err(e), None) => format!("FAILED: {e}"),
                    },
                ]
            })
            .collect();
        md_table(&headers, &rows)
    }

    /// Latency percentiles of every allocator on `w`: the first pass as measured, or (`minima`)
    /// each call at its minimum over the passes.
    fn latency_table(&self, w: &WorkloadResult, minima: bool) -> String {
        let has_realloc = !minima
            && w.peers
                .iter()
                .any(|(_, r)| r.latency.as_ref().is_some_and(|l| l.realloc.is_some()));
        let mut headers: Vec<String> = [
            "allocator",
            "alloc p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "free p50",
            "p90",
            "p99",
            "p99.9",
            "max",
        ]
        .map(String::from)
        .to_vec();
        if has_realloc {
            headers.extend(["realloc p50", "p99.9"].map(String::from));
        }
        let rows: Vec<Vec<String>> = w
            .peers
            .iter()
            .filter_map(|(p, r)| {
                let l = r.latency.as_ref()?;
                let mut row = vec![format!("{}{}", p.name(), if l.capped { "†" } else { "" })];
                let calls = if minima {
                    [l.alloc_min, l.free_min]
                } else {
                    [l.alloc, l.free]
                };
                for q in calls {
                    row.extend([q.p50, q.p90, q.p99, q.p999, q.max].map(|v| v.to_string()));
                }
                if has_realloc {
                    let q = l.realloc.unwrap_or_default();
                    row.extend([q.p50, q.p999].map(|v| v.to_string()));
                }
                Some(row)
            })
            .collect();
        md_table(&headers, &rows)
    }

    fn memory_table(&self) -> String {
        let headers: Vec<String> = [
            "workload",
            "allocator",
            "peak mapped",
            "mapped after full free",
            "after trim",
            "page maps / unmaps during the timed calls",
        ]
        .map(String::from)
        .to_vec();
        let mut rows = Vec::new();
        for w in &self.workloads {
            for (p, r) in &w.peers {
                if let Some(m) = r.memory {
                    rows.push(vec![
                        w.name.clone(),
                        p.name().into(),
                        mib(m.peak),
                        mib(m.after_free),
                        mib(m.after_trim),
                        format!(
                            "{} / {} ({:.1} per 1000 calls)",
                            m.calls.0,
                            m.calls.1,
                            1000.0 * (m.calls.0 + m.calls.1) as f64
                                / r.ops_done.min(w.ops).max(1) as f64
                        ),
                    ]);
                }
            }
        }
        md_table(&headers, &rows)
    }

    fn efficiency_table(&self) -> String {
        let mut headers = vec!["allocator".to_string()];
        headers.extend(self.efficiency.iter().map(|e| e.name.clone()));
        let mut peers: Vec<Peer> = Vec::new();
        for e in &self.efficiency {
            for (p, _) in &e.peers {
                if !peers.contains(p) {
                    peers.push(*p);
                }
            }
        }
        let cell = |e: Option<&Efficiency>| match e {
            None => String::new(),
            Some(Err(why)) => format!("FAILED verification: {why}"),
            Some(Ok(eff)) => format!(
                "{}{:.1}% ({} calls)",
                if eff.failed { "" } else { "≥" },
                100.0 * eff.peak_live as f64 / self.efficiency_bytes as f64,
                eff.ops
            ),
        };
        let mut rows: Vec<Vec<String>> = peers
            .iter()
            .map(|&p| {
                let mut row = vec![p.name().to_string()];
                for e in &self.efficiency {
                    row.push(cell(e.peers.iter().find(|(q, _)| *q == p).map(|(_, x)| x)));
                }
                row
            })
            .collect();
        if self.efficiency.iter().any(|e| e.kheap_window.is_some()) {
            let mut row = vec!["kheap, window model".to_string()];
            row.extend(
                self.efficiency
                    .iter()
                    .map(|e| cell(e.kheap_window.as_ref())),
            );
            rows.push(row);
        }
        md_table(&headers, &rows)
    }

    /// Heaps other than ours that may be compared with it on `w` (verified, not references).
    fn rivals<'a>(&'a self, w: &'a WorkloadResult) -> impl Iterator<Item = (Peer, &'a PeerRun)> {
        w.peers
            .iter()
            .filter(|(p, r)| *p != Peer::Kheap && !p.is_reference() && r.ok())
            .map(|(p, r)| (*p, r))
    }

    /// Heap efficiency of `peer` on mix `name`, in percent of the budget.
    fn efficiency_pct(&self, name: &str, peer: Peer) -> Option<(f64, bool)> {
        let e = self.efficiency.iter().find(|e| e.name == name)?;
        let (_, eff) = e.peers.iter().find(|(p, _)| *p == peer)?;
        let eff = eff.as_ref().ok()?;
        Some((
            100.0 * eff.peak_live as f64 / self.efficiency_bytes as f64,
            eff.failed,
        ))
    }

    /// The verdicts on the project's targets for our heap, each with the best peer's figure on
    /// the same measure for context.
    pub fn targets(&self) -> Vec<Verdict> {
        let me = Peer::Kheap;
        let mut out = Vec::new();
        let run = |w: &str| self.workload(w).and_then(|w| w.get(me));
        let verdict = |target: String, achieved: String, met: Option<bool>, best: String| Verdict {
            target,
            achieved,
            met,
            best_peer: best,
        };
        let unmeasured =
            |t: String| verdict(t, "not measured in this run".into(), None, String::new());

        for (w, goal) in [
            ("small-churn", 0.75),
            ("kernel-mix", 0.9),
            ("random-align", 1.0),
        ] {
            let what = format!("{w}: ns/call <= {goal:.2}x talc");
            let best = self
                .workload(w)
                .and_then(|wr| {
                    self.rivals(wr)
                        .min_by(|a, b| a.1.ns_median().total_cmp(&b.1.ns_median()))
                })
                .map(|(p, r)| format!("{} {}", p.name(), fmt_ratio(r.ratio_median())))
                .unwrap_or_default();
            out.push(match run(w) {
                Some(r) if r.ok() && r.ratio_to_talc.iter().any(|x| x.is_finite()) => {
                    let x = r.ratio_median();
                    let got = format!("{x:.2}x ({} ns/call)", fmt_ns(r.ns_median()));
                    verdict(what, got, Some(x <= goal), best)
                }
                Some(r) if !r.ok() => verdict(what, flag(r).unwrap_or_default(), Some(false), best),
                _ => unmeasured(what),
            });
        }

        let what = ">= 50x faster than linked_list_allocator at 1e4 live objects".to_string();
        out.push(
            match self
                .workload("scaling-1e4")
                .map(|w| (w.get(me), w.get(Peer::LinkedList)))
            {
                Some((Some(k), Some(l))) if k.ok() && l.ok() => {
                    let per_run: Vec<f64> = k.ns.iter().zip(&l.ns).map(|(a, b)| b / a).collect();
                    let x = median(&per_run);
                    let got = format!(
                        "{x:.0}x ({} vs {} ns/call)",
                        fmt_ns(k.ns_median()),
                        fmt_ns(l.ns_median())
                    );
                    verdict(what, got, Some(x >= 50.0), String::new())
                }
                Some((Some(k), _)) if !k.ok() => verdict(
                    what,
                    flag(k).unwrap_or_default(),
                    Some(false),
                    String::new(),
                ),
                _ => unmeasured(what),
            },
        );

        let what = "cost growth 1e3 -> 1e5 live objects <= 1.3x".to_string();
        let growth = |p: Peer| {
            let a = self.workload("scaling-1e3")?.get(p).filter(|r| r.ok())?;
            let b = self.workload("scaling-1e5")?.get(p).filter(|r| r.ok())?;
            Some((b.ns_median() / a.ns_median(), a.ns_median(), b.ns_median()))
        };
        let best = Peer::ALL
            .into_iter()
            .filter(|&p| p != me && !p.is_reference() && p != Peer::LinkedList)
            .filter_map(|p| Some((p, growth(p)?.0)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, g)| format!("{} {g:.2}x", p.name()))
            .unwrap_or_default();
        out.push(match (run("scaling-1e3"), run("scaling-1e5"), growth(me)) {
            (_, _, Some((x, a, b))) => {
                let got = format!("{x:.2}x ({} -> {} ns/call)", fmt_ns(a), fmt_ns(b));
                verdict(what, got, Some(x <= 1.3), best)
            }
            (Some(a), Some(b), None) => verdict(
                what,
                flag(a).or(flag(b)).unwrap_or_default(),
                Some(false),
                best,
            ),
            _ => unmeasured(what),
        });

        for (w, goal) in [("small-churn", 92.0), ("kernel-mix", 98.0)] {
            let what = format!(
                "heap efficiency >= {goal:.0}% ({w}, {} budget)",
                mib(self.efficiency_bytes)
            );
            let best = Peer::ALL
                .into_iter()
                .filter(|&p| p != me && !p.is_reference())
                .filter_map(|p| Some((p, self.efficiency_pct(w, p)?)))
                .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
                .map(|(p, (x, failed))| {
                    format!("{} {}{x:.1}%", p.name(), if failed { "" } else { "≥" })
                })
                .unwrap_or_default();
            out.push(match self.efficiency_pct(w, me) {
                Some((x, _)) => verdict(what, format!("{x:.1}%"), Some(x >= goal), best),
                None => unmeasured(what),
            });
        }

        let what = "alloc p99.9 <= 250 cycles (kernel-mix)".to_string();
        let net = |r: &PeerRun| {
            Some(
                r.latency
                    .as_ref()?
                    .alloc
                    .p999
                    .saturating_sub(self.bracket.p50),
            )
        };
        let best = self
            .workload("kernel-mix")
            .and_then(|w| {
                self.rivals(w)
                    .filter_map(|(p, r)| Some((p, net(r)?)))
                    .min_by_key(|x| x.1)
            })
            .map(|(p, c)| format!("{} {c}", p.name()))
            .unwrap_or_default();
        out.push(
            match run("kernel-mix").and_then(|r| Some((net(r)?, r.latency.as_ref()?.alloc.p999))) {
                Some((n, raw)) => {
                    let got = format!(
                        "{n} cycles net of the {}-cycle bracket ({raw} raw)",
                        self.bracket.p50
                    );
                    verdict(what, got, Some(n <= 250), best)
                }
                None => unmeasured(what),
            },
        );

        // Issue 13's host goal on the single-call tail, on the per-call minima (the first pass's
        // p99.9 is the machine's as much as the allocator's; see `measure::Latency`).
        let p999 = |peer: Peer, alloc: bool| {
            let l = self.workload("kernel-mix")?.get(peer)?.latency.as_ref()?;
            Some(if alloc {
                l.alloc_min.p999
            } else {
                l.free_min.p999
            })
        };
        for (call, alloc) in [("alloc", true), ("free", false)] {
            let what =
                format!("{call} p99.9 <= talc's and <= 1.5x rlsf's (kernel-mix, per-call minimum)");
            out.push(
                match (
                    p999(me, alloc),
                    p999(Peer::Talc, alloc),
                    p999(Peer::Rlsf, alloc),
                ) {
                    (Some(k), Some(t), Some(r)) => verdict(
                        what,
                        format!("{k} cycles (talc {t}, rlsf {r})"),
                        Some(k <= t && 2 * k <= 3 * r),
                        String::new(),
                    ),
                    _ => unmeasured(what),
                },
            );
        }
        out
    }

    /// The growing vectors: ns per push and ratio to talc.
    fn vec_table(&self, v: &VecResult) -> String {
        let headers: Vec<String> = [
            "allocator",
            "ns/push median",
            "vs talc",
            "min",
            "max",
            "wall median",
            "peak pages taken",
            "verification",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = v
            .peers
            .iter()
            .map(|(p, r)| {
                let (min, max) = min_max(&r.ns);
                vec![
                    p.name().into(),
                    fmt_ns(median(&r.ns)),
                    fmt_ratio(median(&r.ratio)),
                    fmt_ns(min),
                    fmt_ns(max),
                    fmt_ns(median(&r.wall_ns)),
                    r.peak_bytes
                        .map_or("– (fixed region)".into(), |b| format!("{}", b / 4096)),
                    match &r.verify {
                        Ok(n) => format!("ok ({n} pushes)"),
                        Err(e) => format!("FAILED: {e}"),
                    },
                ]
            })
            .collect();
        md_table(&headers, &rows)
    }

    /// The threaded section: aggregate calls per second with 1 and 2 threads, and the ratio.
    fn threads_table(&self, t: &ThreadsResult) -> String {
        let headers: Vec<String> = [
            "allocator",
            "churn, 1 thread (Mcalls/s)",
            "2 threads",
            "2T / 1T",
            "producer/consumer, 1 thread",
            "2 threads",
            "2T / 1T",
            "verification",
        ]
        .map(String::from)
        .to_vec();
        let mops = |c: &crate::threads::Cell, i: usize| {
            c.ops_per_s
                .get(i)
                .map_or("–".into(), |v| format!("{:.2}", v / 1e6))
        };
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|r| {
                let verdict = match (&r.churn.verify, &r.pc.verify) {
                    (Ok(()), Ok(())) => "ok".to_string(),
                    (Err(e), _) => format!("churn FAILED: {e}"),
                    (_, Err(e)) => format!("producer/consumer FAILED: {e}"),
                };
                vec![
                    r.name.into(),
                    mops(&r.churn, 0),
                    mops(&r.churn, 1),
                    fmt_ratio(r.churn.scaling()),
                    mops(&r.pc, 0),
                    mops(&r.pc, 1),
                    fmt_ratio(r.pc.scaling()),
                    verdict,
                ]
            })
            .collect();
        md_table(&headers, &rows)
    }

    fn targets_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .targets()
            .into_iter()
            .map(|v| {
                let verdict = match v.met {
                    Some(true) => "met",
                    Some(false) => "**not met**",
                    None => "–",
                };
                vec![v.target, v.achieved, verdict.into(), v.best_peer]
            })
            .collect();
        md_table(
            &["target (kheap)", "achieved", "verdict", "best other heap"].map(String::from),
            &rows,
        )
    }

    /// Every table, as printed to stdout.
    pub fn tables(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## ns per call (median of {} runs) and ratio to talc (median of per-run ratios)\n",
            self.runs
        );
        s.push_str(&self.speed_table());
        let _ = writeln!(s, "\n## Ranking (verified allocators, fastest first)\n");
        s.push_str(&self.rankings());
        if let Some(w) = self.workload("kernel-mix") {
            let _ = writeln!(
                s,
                "\n## Single-call latency, kernel-mix (TSC cycles, raw)\n\n\
                 Each figure includes the timing bracket: an empty bracket costs p50 {} / p99 {} / max {} \
                 cycles. Readings move in steps of {} cycles on this machine, so smaller differences are \
                 not resolved.\n",
                self.bracket.p50, self.bracket.p99, self.bracket.max, self.tsc_step
            );
            s.push_str(&self.latency_table(w, false));
            let _ = writeln!(
                s,
                "\nThe same calls, each at its minimum over {} passes on a fresh allocator \
                 (`measure::Latency`: a replay is deterministic, so what differs between passes \
                 is the machine's interference, not the allocator's work):\n",
                self.latency_passes(w)
            );
            s.push_str(&self.latency_table(w, true));
        }
        if !self.efficiency.is_empty() {
            let _ = writeln!(
                s,
                "\n## Heap efficiency: peak live requested bytes / {} before the first failed allocation\n",
                mib(self.efficiency_bytes)
            );
            s.push_str(&self.efficiency_table());
            if self.efficiency.iter().any(|e| e.kheap_window.is_some()) {
                let _ = writeln!(
                    s,
                    "\nkheap takes its pages from a first-fit page arena of exactly the budget, so a \
                     run it needs must also find that many contiguous free pages there; the other \
                     heaps own the budget as one arena from the start. *kheap, window model* is \
                     kheap as the kernel runs it (and `cargo kbench` measures it): the budget caps \
                     the pages it holds, over an arena with room to place them \
                     (`bench_alloc::CappedSource` over the arena)."
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Memory returned after a full free (page-backed allocators)\n"
        );
        s.push_str(&self.memory_table());
        s.push_str(
            "\nThe other heaps own their whole arena from the start and cannot give pages back: n/a.\n",
        );
        if !self.pools.is_empty() {
            let _ = writeln!(
                s,
                "\n## Fixed-size objects: user pools (kmem_cache-style) against slabmalloc\n\n\
                 {}; ns per call (median of {} runs) and ratio to slabmalloc (median of per-run \
                 ratios); peak pages taken from the arena in brackets.\n",
                self.pools[0]
                    .title
                    .replace(&format!("of {} B ", self.pools[0].size), "of one size "),
                self.runs
            );
            s.push_str(&self.pools_table());
        }
        if let Some(v) = &self.vec_growth {
            let _ = writeln!(
                s,
                "\n## Growing vectors (cache aliasing)\n\n\
                 {} `Vec<u64>`-like buffers grown round-robin to {} elements each (push = one u64 \
                 store at the end, growth = realloc to twice the capacity, from 4 elements; {} KiB \
                 each at the end), {} MiB region per allocator; ns per push (thread CPU time, the \
                 growths included), median of {} runs, and ratio to talc (median of per-run \
                 ratios). Every element is written and checked in an untimed verifying run first.\n",
                v.shape.vectors,
                v.shape.elements,
                v.shape.final_bytes() >> 10,
                v.region >> 20,
                self.runs
            );
            s.push_str(&self.vec_table(v));
        }
        if let Some(t) = &self.threads {
            let _ = writeln!(
                s,
                "\n## Threads: 1 and 2 threads sharing one allocator\n\n\
                 Per-thread churn: each thread replays its own small-object churn ({} calls, live \
                 set ~{}). Producer/consumer: each thread allocates {} small blocks (8–512 B) and \
                 passes them through a bounded ring of {} to the other thread, which frees them (one \
                 thread: its own ring). Aggregate calls per second of wall time from the common \
                 start to the last thread's end, median of {} runs, fresh allocator each; \
                 verified first with 2 threads (churn blocks patterned and checked; each \
                 producer/consumer block patterned by its producer, checked by its consumer). \
                 kheap is `LockedHeap<SpinLock, _>`; talc, rlsf and linked_list are each behind a \
                 spinlock; system is the host malloc; mimalloc has per-thread caches. **This \
                 machine has {} logical CPUs, shared with other work** (load average in the \
                 header): 2 threads here are 2 threads on 2 busy cores.\n",
                t.sizes.churn_ops, t.sizes.live, t.sizes.blocks, t.sizes.ring, self.runs, t.cpus
            );
            s.push_str(&self.threads_table(t));
        }
        let _ = writeln!(s, "\n## Targets vs achieved\n");
        s.push_str(&self.targets_table());
        let _ = writeln!(s, "\n## Per-workload detail\n");
        for w in &self.workloads {
            let _ = writeln!(s, "### {}\n\n{}\n", w.name, w.title);
            s.push_str(&self.detail_table(w));
            s.push('\n');
            if w.name != "kernel-mix" && w.peers.iter().any(|(_, r)| r.latency.is_some()) {
                let _ = writeln!(s, "Latency (TSC cycles, raw):\n");
                s.push_str(&self.latency_table(w, false));
                let _ = writeln!(
                    s,
                    "\nPer-call minimum over {} passes:\n",
                    self.latency_passes(w)
                );
                s.push_str(&self.latency_table(w, true));
                s.push('\n');
            }
        }
        s
    }

    /// One row per contestant, one column per object size.
    fn pools_table(&self) -> String {
        let mut headers = vec!["contestant".to_string()];
        headers.extend(self.pools.iter().map(|r| format!("{} B objects", r.size)));
        let rows = FixedPeer::ALL
            .iter()
            .map(|&p| {
                let mut row = vec![p.name().to_string()];
                for r in &self.pools {
                    let cell = match r.runs.iter().find(|(q, _)| *q == p) {
                        Some((_, run)) => match &run.verify {
                            Err(e) => format!("failed: {e}"),
                            Ok(_) if run.ns.is_empty() => "–".into(),
                            Ok(_) => {
                                let pages = run
                                    .peak_bytes
                                    .map_or(String::new(), |b| format!(" [{} pages]", b / 4096));
                                format!(
                                    "{} ({:.2}x){pages}",
                                    fmt_ns(median(&run.ns)),
                                    median(&run.ratio)
                                )
                            }
                        },
                        None => "–".into(),
                    };
                    row.push(cell);
                }
                row
            })
            .collect::<Vec<_>>();
        md_table(&headers, &rows)
    }

    /// The whole REPORT.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("# kheap benchmark report\n\n");
        if self.quick {
            s.push_str(
                "**Smoke mode (`--quick`): tiny op counts, numbers are not meaningful.**\n\n",
            );
        }
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(s, "- code: {}", self.code);
        let _ = writeln!(s, "- machine: {}", self.machine);
        let _ = writeln!(s, "- date: {}", self.date);
        let _ = writeln!(
            s,
            "- method: every workload is generated once (seed {}) and replayed for every allocator, each through \
             its own non-global API over a fixed {} arena (page-aligned, pre-touched; our heap and dlmalloc take \
             pages from it through a page bitmap); single-threaded; {} timed runs per allocator and workload with \
             the allocator order rotated between runs; ns per call is the thread's CPU time \
             (`CLOCK_THREAD_CPUTIME_ID`) over the timed calls divided by their number, so time spent descheduled \
             on a shared machine does not count (wall time is in the detail tables and `runs.csv`); ratios to \
             talc are taken within each run, then the median; \
             a replay is cut after {:.0} s (marked †). Before timing, an untimed verification pass patterns every \
             block, checks it before free/realloc, and checks alignment and overlap; failures are flagged and not \
             ranked. `system` (host malloc) and `bump` are reference points.",
            self.seed,
            mib(self.arena_bytes),
            self.runs,
            self.budget_secs
        );
        s.push_str("\nPlots: [ns per call](ns_per_op.svg), kernel-mix latency tails (each call at its minimum over the passes; fraction of calls taking x cycles or more, p90 to max, log–log): [alloc](tail_alloc.svg), [free](tail_free.svg); [scaling](scaling.svg). In-kernel tails: [alloc](kernel_tail_alloc.svg), [free](kernel_tail_free.svg) (see KERNEL.md).\n\n");
        s.push_str(&self.tables());
        s
    }

    /// Raw per-run figures, one line per allocator, workload and run (growing vectors: ns per
    /// push; threads: aggregate calls per second, in the CPU column, with 1 and 2 threads as
    /// workloads `threads-churn-1` and so on).
    pub fn runs_csv(&self) -> String {
        let mut s =
            String::from("workload,allocator,run,cpu_ns_per_call,wall_ns_per_call,ratio_to_talc\n");
        for w in &self.workloads {
            for (p, r) in &w.peers {
                for (i, ns) in r.ns.iter().enumerate() {
                    let ratio = r.ratio_to_talc.get(i).copied().unwrap_or(f64::NAN);
                    let wall = r.wall_ns.get(i).copied().unwrap_or(f64::NAN);
                    let _ = writeln!(
                        s,
                        "{},{},{},{:.3},{:.3},{:.4}",
                        w.name,
                        p.name(),
                        i,
                        ns,
                        wall,
                        ratio
                    );
                }
            }
        }
        if let Some(v) = &self.vec_growth {
            for (p, r) in &v.peers {
                for (i, ns) in r.ns.iter().enumerate() {
                    let wall = r.wall_ns.get(i).copied().unwrap_or(f64::NAN);
                    let ratio = r.ratio.get(i).copied().unwrap_or(f64::NAN);
                    let _ = writeln!(
                        s,
                        "vec-growth,{},{i},{ns:.3},{wall:.3},{ratio:.4}",
                        p.name()
                    );
                }
            }
        }
        if let Some(t) = &self.threads {
            for r in &t.rows {
                for (what, cell) in [("churn", &r.churn), ("pc", &r.pc)] {
                    for (i, run) in cell.runs.iter().enumerate() {
                        for (k, ops) in run.iter().enumerate() {
                            let _ =
                                writeln!(s, "threads-{what}-{},{},{i},{ops:.0},,", k + 1, r.name);
                        }
                    }
                }
            }
        }
        s
    }

    /// Writes REPORT.md, runs.csv and the three plots into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("REPORT.md"), self.markdown())?;
        fs::write(dir.join("runs.csv"), self.runs_csv())?;
        let peers = self.peers();
        let groups: Vec<String> = self.workloads.iter().map(|w| w.name.clone()).collect();
        let series: Vec<(String, Vec<Option<f64>>)> = peers
            .iter()
            .map(|&p| {
                let vals = self
                    .workloads
                    .iter()
                    .map(|w| w.get(p).filter(|r| r.ok()).map(PeerRun::ns_median))
                    .collect();
                (p.name().to_string(), vals)
            })
            .collect();
        let title = format!(
            "ns per call, median of {} runs (log scale; gaps: failed or not run)",
            self.runs
        );
        fs::write(
            dir.join("ns_per_op.svg"),
            svg::bar_chart(&title, "ns per call", &groups, &series),
        )?;

        if let Some(w) = self.workload("kernel-mix") {
            for (call, title) in [("alloc", "allocations"), ("free", "frees")] {
                let series: Vec<Series> = w
                    .peers
                    .iter()
                    .filter_map(|(p, r)| {
                        let l = r.latency.as_ref()?;
                        let sorted = if call == "alloc" {
                            &l.alloc_sorted
                        } else {
                            &l.free_sorted
                        };
                        Some(tail_series(p.name(), &tail(sorted, 0)))
                    })
                    .collect();
                let passes = self.latency_passes(w);
                let title = format!(
                    "kernel-mix: tail of {title}, p90 to max (TSC cycles, each call's minimum \
                     over {passes} passes; empty bracket {})",
                    self.bracket.p50
                );
                fs::write(
                    dir.join(format!("tail_{call}.svg")),
                    tail_chart(&title, &series),
                )?;
            }
        }

        let levels: Vec<(f64, &WorkloadResult)> = self
            .workloads
            .iter()
            .filter_map(|w| {
                let live = w.name.strip_prefix("scaling-")?;
                let live = live.strip_prefix("1e").map_or_else(
                    || live.parse::<f64>().ok(),
                    |e| e.parse::<i32>().ok().map(|e| 10f64.powi(e)),
                )?;
                Some((live, w))
            })
            .collect();
        let scaling: Vec<Series> = peers
            .iter()
            .map(|&p| Series {
                name: p.name().into(),
                points: levels
                    .iter()
                    .filter_map(|(live, w)| Some((*live, w.get(p).filter(|r| r.ok())?.ns_median())))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        fs::write(
            dir.join("scaling.svg"),
            svg::line_chart(
                "scaling: ns per call vs live objects (log–log)",
                "live objects",
                "ns per call",
                &scaling,
                (true, true),
                true,
            ),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_table_pads_and_aligns() {
        let t = md_table(
            &["a".into(), "bb".into()],
            &[vec!["xyz".into(), "1".into()]],
        );
        assert_eq!(t, "| a   | bb |\n|:--- | --:|\n| xyz |  1 |\n");
    }
}
