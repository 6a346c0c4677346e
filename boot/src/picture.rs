//! Heap pictures: the kernel prints its heap's occupancy between `@@kheap-picture begin LABEL`
//! and `@@kheap-picture end` (format: `kernel/src/heap_picture.rs`); the runner keeps those lines
//! out of the output, draws them as an SVG under `target/heap-pictures/<kernel>-<n>.svg`, and
//! prints the file's path.
//!
//! The drawing: root runs (one cell per page, shaded by slots in use); one row per pool (a
//! general size class or a user pool) with one cell per chunk, shaded by how full it is; the
//! large allocator's regions as bars tiled by their blocks (in use, or free holes); page runs as
//! bars as long as they are; and the page map's size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The first line of a picture (followed by its label).
pub const BEGIN: &str = "@@kheap-picture begin";
/// The last line of a picture.
pub const END: &str = "@@kheap-picture end";

/// One root run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRun {
    /// Its address.
    pub addr: u64,
    /// Its pages.
    pub pages: u64,
    /// `d` (chunk descriptors) or `p` (pool headers).
    pub chain: char,
    /// Slots in use.
    pub live: u64,
    /// Slots.
    pub slots: u64,
}

/// One chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Its page.
    pub addr: u64,
    /// Blocks handed out.
    pub used: u32,
    /// Blocks it holds.
    pub capacity: u32,
}

/// The chunks of one pool: a general class (`c<index>`) or a user pool (`p<number>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// `c<index>` or `p<number>`, as the kernel printed it.
    pub owner: String,
    /// Block size in bytes.
    pub block: u32,
    /// Its chunks, in the order printed.
    pub chunks: Vec<Chunk>,
}

impl Pool {
    /// `class-64`, or `pool#3 (40 B)`.
    pub fn label(&self) -> String {
        match self.owner.strip_prefix('p') {
            Some(n) => format!("pool#{n} ({} B)", self.block),
            None => format!("class-{}", self.block),
        }
    }
}

/// A large-allocator region and its blocks, `(bytes, free)` in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Its address.
    pub addr: u64,
    /// Its length.
    pub bytes: u64,
    /// Its blocks.
    pub blocks: Vec<(u64, bool)>,
}

/// One heap picture, as parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picture {
    /// What the kernel called it.
    pub label: String,
    /// Root runs.
    pub roots: Vec<RootRun>,
    /// Pools by owner, classes first (by block size), then user pools.
    pub pools: Vec<Pool>,
    /// Large regions.
    pub regions: Vec<Region>,
    /// Page runs: `(address, pages)`.
    pub runs: Vec<(u64, u64)>,
    /// Page-map nodes.
    pub map_nodes: u64,
}

impl Picture {
    /// Parses the lines between [`BEGIN`] and [`END`].
    pub fn parse(label: &str, lines: &[String]) -> Result<Self, String> {
        let mut p = Picture {
            label: label.to_owned(),
            ..Self::default()
        };
        let mut pools: BTreeMap<(u8, u32, String), Pool> = BTreeMap::new();
        for line in lines {
            p.add(line, &mut pools)
                .map_err(|e| format!("heap picture line `{line}`: {e}"))?;
        }
        p.pools = pools.into_values().collect();
        Ok(p)
    }

    fn add(
        &mut self,
        line: &str,
        pools: &mut BTreeMap<(u8, u32, String), Pool>,
    ) -> Result<(), String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| -> Result<u64, String> {
            let s = w.get(i).ok_or("too few fields")?;
            u64::from_str_radix(s, 16).map_err(|e| format!("{s}: {e}"))
        };
        let num = |i: usize| -> Result<u64, String> {
            let s = w.get(i).ok_or("too few fields")?;
            s.parse().map_err(|e| format!("{s}: {e}"))
        };
        match w.first().copied() {
            Some("r") => self.roots.push(RootRun {
                addr: hex(1)?,
                pages: num(2)?,
                chain: w.get(3).and_then(|c| c.chars().next()).ok_or("no chain")?,
                live: num(4)?,
                slots: num(5)?,
            }),
            Some("c") => {
                let owner = (*w.get(2).ok_or("no owner")?).to_owned();
                let block = u32::try_from(num(3)?).map_err(|e| e.to_string())?;
                let kind = if owner.starts_with('c') { 0 } else { 1 };
                let chunk = Chunk {
                    addr: hex(1)?,
                    used: u32::try_from(num(4)?).map_err(|e| e.to_string())?,
                    capacity: u32::try_from(num(5)?).map_err(|e| e.to_string())?,
                };
                pools
                    .entry((kind, block, owner.clone()))
                    .or_insert_with(|| Pool {
                        owner,
                        block,
                        chunks: Vec::new(),
                    })
                    .chunks
                    .push(chunk);
            }
            Some("g") => self.regions.push(Region {
                addr: hex(1)?,
                bytes: num(2)?,
                blocks: Vec::new(),
            }),
            Some("b") => {
                let free = match w.get(2).copied() {
                    Some("f") => true,
                    Some("u") => false,
                    _ => return Err("expected u or f".into()),
                };
                let bytes = num(1)?;
                self.regions
                    .last_mut()
                    .ok_or("a block before any region")?
                    .blocks
                    .push((bytes, free));
            }
            Some("p") => self.runs.push((hex(1)?, num(2)?)),
            Some("m") => self.map_nodes = num(1)?,
            _ => return Err("unknown kind".into()),
        }
        Ok(())
    }

    /// The picture as an SVG document.
    pub fn svg(&self, kernel: &str) -> String {
        Svg::draw(self, kernel)
    }
}

/// Whether `line` is one a picture can contain (so a kernel's panic message in the middle of a
/// picture still reaches the output).
fn is_picture_line(line: &str) -> bool {
    let mut w = line.split_whitespace();
    matches!(w.next(), Some("r" | "c" | "g" | "b" | "p" | "m"))
        && w.next()
            .is_some_and(|f| f.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---- drawing ----

const WIDTH: u32 = 1000;
const LABEL_W: u32 = 150;
const CELL: u32 = 8;
const GAP: u32 = 1;
/// Region bars: this many per row.
const REGIONS_PER_ROW: u64 = 2;
/// Width of a region bar of 64 KiB.
const REGION_W: u32 = 410;

/// A shade from pale (0) to dark (1) blue: how full a chunk or root run is.
fn fill_colour(used: u64, capacity: u64) -> String {
    if used == 0 {
        return "#e6e6e6".into();
    }
    let f = used as f64 / capacity.max(1) as f64;
    let lerp = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        lerp(200.0, 20.0),
        lerp(220.0, 70.0),
        lerp(250.0, 170.0)
    )
}

struct Svg {
    body: String,
    y: u32,
}

impl Svg {
    fn draw(p: &Picture, kernel: &str) -> String {
        let mut s = Svg {
            body: String::new(),
            y: 0,
        };
        let chunks: usize = p.pools.iter().map(|pool| pool.chunks.len()).sum();
        let root_pages: u64 = p.roots.iter().map(|r| r.pages).sum();
        let region_pages: u64 = p.regions.iter().map(|r| r.bytes / 4096).sum();
        let run_pages: u64 = p.runs.iter().map(|r| r.1).sum();
        s.text(
            8,
            20,
            16,
            "bold",
            &format!("kheap: {} — {}", kernel, p.label),
        );
        s.y = 40;
        s.text(
            8,
            s.y,
            12,
            "normal",
            &format!(
                "{} pages: root {root_pages}, chunks {chunks}, large regions {region_pages} \
                 ({} regions), page runs {run_pages} ({} runs), page map {}",
                root_pages + chunks as u64 + region_pages + run_pages + p.map_nodes,
                p.regions.len(),
                p.runs.len(),
                p.map_nodes
            ),
        );
        s.y += 10;
        s.legend();
        s.section("root runs (one cell per page, shaded by slots in use)");
        s.root_runs(&p.roots);
        s.section("chunks by pool (one cell per chunk, shaded by blocks in use)");
        for pool in &p.pools {
            s.pool(pool);
        }
        s.section("large regions (blocks in use, and free holes)");
        s.regions(&p.regions);
        s.section(
            "page runs (node and data share the first page; a page-aligned run has a header page)",
        );
        s.runs(&p.runs);
        let height = s.y + 20;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
             viewBox=\"0 0 {WIDTH} {height}\" font-family=\"monospace\">\n\
             <rect width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>\n{}</svg>\n",
            s.body
        )
    }

    fn text(&mut self, x: u32, y: u32, size: u32, weight: &str, t: &str) {
        let t = t
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = writeln!(
            self.body,
            "<text x=\"{x}\" y=\"{y}\" font-size=\"{size}\" font-weight=\"{weight}\">{t}</text>"
        );
    }

    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, fill: &str, title: &str) {
        let _ = writeln!(
            self.body,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"{fill}\"><title>{title}</title></rect>"
        );
    }

    fn section(&mut self, title: &str) {
        self.y += 24;
        self.text(8, self.y, 13, "bold", title);
        self.y += 8;
    }

    fn legend(&mut self) {
        self.y += 14;
        let mut x = 8;
        for (label, colour) in [
            ("empty", fill_colour(0, 1)),
            ("25%", fill_colour(1, 4)),
            ("50%", fill_colour(1, 2)),
            ("full", fill_colour(1, 1)),
            ("large block in use", "#e08a2c".to_owned()),
            ("free hole", "#ffffff".to_owned()),
            ("page run", "#8e5cc4".to_owned()),
        ] {
            self.rect(x, self.y - 9, 10, 10, &colour, label);
            let _ = writeln!(
                self.body,
                "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"none\" stroke=\"#999\"/>",
                self.y - 9
            );
            self.text(x + 14, self.y, 11, "normal", label);
            x += 24 + 7 * label.len() as u32;
        }
    }

    /// Cells in rows from `LABEL_W`, wrapping at the right edge.
    fn cells(&mut self, cells: impl Iterator<Item = (String, String)>) {
        let per_row = (WIDTH - LABEL_W - 8) / (CELL + GAP);
        let top = self.y;
        let mut n = 0;
        for (colour, title) in cells {
            let x = LABEL_W + (n % per_row) * (CELL + GAP);
            let y = top + (n / per_row) * (CELL + GAP);
            self.rect(x, y, CELL, CELL, &colour, &title);
            n += 1;
        }
        self.y = top + n.div_ceil(per_row).max(1) * (CELL + GAP) + 3;
    }

    fn root_runs(&mut self, roots: &[RootRun]) {
        self.y += 4;
        self.text(
            8,
            self.y + 8,
            11,
            "normal",
            &format!("{} runs", roots.len()),
        );
        self.cells(roots.iter().flat_map(|r| {
            let chain = if r.chain == 'd' {
                "descriptors"
            } else {
                "pool headers"
            };
            (0..r.pages).map(move |page| {
                (
                    fill_colour(r.live, r.slots),
                    format!(
                        "root run {:#x} ({chain}), page {page}: {} of {} slots",
                        r.addr, r.live, r.slots
                    ),
                )
            })
        }));
    }

    fn pool(&mut self, pool: &Pool) {
        let used: u64 = pool.chunks.iter().map(|c| u64::from(c.used)).sum();
        let cap: u64 = pool.chunks.iter().map(|c| u64::from(c.capacity)).sum();
        self.y += 2;
        self.text(
            8,
            self.y + 8,
            11,
            "normal",
            &format!("{} {}%", pool.label(), used * 100 / cap.max(1)),
        );
        let label = pool.label();
        self.cells(pool.chunks.iter().map(|c| {
            (
                fill_colour(u64::from(c.used), u64::from(c.capacity)),
                format!(
                    "{label} chunk {:#x}: {} of {} blocks",
                    c.addr, c.used, c.capacity
                ),
            )
        }));
    }

    fn regions(&mut self, regions: &[Region]) {
        let h = 10;
        for (i, r) in regions.iter().enumerate() {
            let col = i as u64 % REGIONS_PER_ROW;
            if col == 0 {
                self.y += h + 4;
            }
            let x0 = 8 + col as u32 * (REGION_W + 30);
            let scale = f64::from(REGION_W) / 65536.0;
            let w = ((r.bytes as f64 * scale) as u32).max(1);
            let _ = writeln!(
                self.body,
                "<rect x=\"{x0}\" y=\"{}\" width=\"{w}\" height=\"{h}\" fill=\"#cccccc\"><title>region {:#x}, {} bytes</title></rect>",
                self.y - h,
                r.addr,
                r.bytes
            );
            // The blocks tile the region after its header.
            let header = r.bytes - r.blocks.iter().map(|b| b.0).sum::<u64>();
            let mut off = header.min(64);
            for &(bytes, free) in &r.blocks {
                let x = x0 + (off as f64 * scale) as u32;
                let bw = ((bytes as f64 * scale) as u32).max(1);
                let (fill, what) = if free {
                    ("#ffffff", "free")
                } else {
                    ("#e08a2c", "in use")
                };
                let _ = writeln!(
                    self.body,
                    "<rect x=\"{x}\" y=\"{}\" width=\"{bw}\" height=\"{h}\" fill=\"{fill}\" stroke=\"#666\" stroke-width=\"0.3\"><title>{what}: {bytes} bytes at offset {off}</title></rect>",
                    self.y - h
                );
                off += bytes;
            }
        }
        if regions.is_empty() {
            self.y += 14;
            self.text(8, self.y, 11, "normal", "none");
        }
        self.y += 4;
    }

    fn runs(&mut self, runs: &[(u64, u64)]) {
        let max_w = WIDTH - LABEL_W - 8;
        for &(addr, pages) in runs {
            self.y += 14;
            self.text(8, self.y, 11, "normal", &format!("{pages} pages"));
            // One pixel per page up to the full width (longer runs are cut, and say so).
            let w = u32::try_from(pages).unwrap_or(u32::MAX).clamp(1, max_w);
            self.rect(
                LABEL_W,
                self.y - 10,
                w,
                10,
                "#8e5cc4",
                &format!("page run {addr:#x}: {pages} pages"),
            );
        }
        if runs.is_empty() {
            self.y += 14;
            self.text(8, self.y, 11, "normal", "none");
        }
    }
}

// ---- collecting pictures from a kernel's output ----

/// What [`Pictures::feed`] did with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Not part of a picture: print it.
    No,
    /// Part of a picture: keep it out of the output.
    Taken,
    /// The end of a picture: its SVG was written (the path to print), or could not be.
    Written(Result<PathBuf, String>),
    /// A picture broke off (the line that is not part of it follows: print it).
    BrokenOff(String),
}

/// The pictures of one run of a kernel: collects their lines and writes each as
/// `<dir>/<kernel>-<n>.svg`.
#[derive(Debug)]
pub struct Pictures {
    dir: PathBuf,
    kernel: String,
    current: Option<(String, Vec<String>)>,
    written: usize,
}

impl Pictures {
    /// Pictures of `kernel` go to `dir`.
    pub fn new(dir: PathBuf, kernel: String) -> Self {
        Self {
            dir,
            kernel,
            current: None,
            written: 0,
        }
    }

    /// Takes one line of the kernel's output.
    pub fn feed(&mut self, line: &str) -> Fed {
        if let Some(label) = line.strip_prefix(BEGIN) {
            let broken = self.current.take().map(|(l, _)| l);
            self.current = Some((label.trim().to_owned(), Vec::new()));
            return match broken {
                Some(l) => Fed::BrokenOff(l),
                None => Fed::Taken,
            };
        }
        let Some((label, lines)) = &mut self.current else {
            return Fed::No;
        };
        if line.trim() == END {
            let (label, lines) = (std::mem::take(label), std::mem::take(lines));
            self.current = None;
            return Fed::Written(self.write(&label, &lines));
        }
        if is_picture_line(line) {
            lines.push(line.to_owned());
            return Fed::Taken;
        }
        let label = std::mem::take(label);
        self.current = None;
        Fed::BrokenOff(label)
    }

    fn write(&mut self, label: &str, lines: &[String]) -> Result<PathBuf, String> {
        let picture = Picture::parse(label, lines)?;
        self.written += 1;
        let path = self
            .dir
            .join(format!("{}-{}.svg", self.kernel, self.written));
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, picture.svg(&self.kernel)))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Pictures written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Where they go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
r ffffc00100000000 6 d 40 91
r ffffc00100010000 1 p 2 11
c ffffc00100007000 c3 32 128 128
c ffffc00100008000 c3 32 7 128
c ffffc00100009000 c0 8 0 512
c ffffc0010000a000 p2 40 100 102
g ffffc00100020000 65536
b 1024 u
b 2048 f
b 62400 u
p ffffc00100100000 17
m 4";

    fn lines() -> Vec<String> {
        SAMPLE.lines().map(str::to_owned).collect()
    }

    #[test]
    fn parses_every_kind_of_line() {
        let p = Picture::parse("at peak", &lines()).unwrap();
        assert_eq!(p.roots.len(), 2);
        assert_eq!(p.roots[1].chain, 'p');
        let labels: Vec<String> = p.pools.iter().map(Pool::label).collect();
        assert_eq!(labels, ["class-8", "class-32", "pool#2 (40 B)"]);
        assert_eq!(p.pools[1].chunks.len(), 2);
        assert_eq!(
            p.regions[0].blocks,
            [(1024, false), (2048, true), (62400, false)]
        );
        assert_eq!(p.runs, [(0xffff_c001_0010_0000, 17)]);
        assert_eq!(p.map_nodes, 4);
        let bad = Picture::parse("x", &["c zz".to_owned()]).unwrap_err();
        assert!(bad.contains("`c zz`"), "{bad}");
        assert!(Picture::parse("x", &["b 16 u".to_owned()]).is_err());
    }

    #[test]
    fn the_svg_has_a_cell_per_chunk_and_page_and_a_bar_per_block() {
        let p = Picture::parse("at peak", &lines()).unwrap();
        let svg = p.svg("kernel");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("kheap: kernel — at peak"));
        // 7 root pages, 4 chunks.
        assert_eq!(svg.matches("<title>root run ").count(), 7);
        assert_eq!(svg.matches(" chunk 0x").count(), 4);
        assert!(svg.contains("class-32 chunk 0xffffc00100007000: 128 of 128 blocks"));
        assert!(svg.contains("class-32 52%"), "(128 + 7) of 256 blocks");
        assert_eq!(svg.matches("<title>in use: ").count(), 2);
        assert_eq!(svg.matches("<title>free: 2048 bytes").count(), 1);
        assert!(svg.contains("page run 0xffffc00100100000: 17 pages"));
        assert!(svg.contains("page map 4"));
        // A full chunk is the darkest shade, an empty one grey.
        assert!(svg.contains(&format!(
            "fill=\"{}\"><title>class-32 chunk 0xffffc00100007000",
            fill_colour(1, 1)
        )));
        assert!(svg.contains("fill=\"#e6e6e6\"><title>class-8 chunk"));
    }

    #[test]
    fn the_collector_keeps_picture_lines_out_of_the_output_and_writes_numbered_files() {
        let dir = std::env::temp_dir().join(format!("heap-pictures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut pics = Pictures::new(dir.clone(), "kernel".into());
        assert_eq!(pics.feed("booting"), Fed::No);
        assert_eq!(pics.feed("@@kheap-picture begin at peak"), Fed::Taken);
        for l in lines() {
            assert_eq!(pics.feed(&l), Fed::Taken, "{l}");
        }
        // A second `begin` breaks off an unfinished picture.
        assert_eq!(
            pics.feed("@@kheap-picture begin again"),
            Fed::BrokenOff("at peak".into())
        );
        let mut pics = Pictures::new(dir.clone(), "kernel".into());
        assert_eq!(pics.feed("@@kheap-picture begin one"), Fed::Taken);
        assert_eq!(pics.feed("m 3"), Fed::Taken);
        assert_eq!(
            pics.feed("@@kheap-picture end"),
            Fed::Written(Ok(dir.join("kernel-1.svg")))
        );
        assert_eq!(pics.feed("@@kheap-picture begin two"), Fed::Taken);
        for l in lines() {
            pics.feed(&l);
        }
        assert_eq!(
            pics.feed("@@kheap-picture end"),
            Fed::Written(Ok(dir.join("kernel-2.svg")))
        );
        assert_eq!(pics.written(), 2);
        let svg = std::fs::read_to_string(dir.join("kernel-2.svg")).unwrap();
        assert!(svg.contains("kheap: kernel — two"));
        // A panic in the middle of a picture is output, not swallowed.
        assert_eq!(pics.feed("@@kheap-picture begin three"), Fed::Taken);
        assert_eq!(pics.feed("c ffffc00100007000 c3 32 1 128"), Fed::Taken);
        assert_eq!(
            pics.feed("panicked at kernel/src/x.rs:1:1"),
            Fed::BrokenOff("three".into())
        );
        assert_eq!(pics.feed("m 3"), Fed::No);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
