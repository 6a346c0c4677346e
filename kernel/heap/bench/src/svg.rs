//! A small SVG writer and the three plots of the report: grouped bars (ns per call per
//! workload), line charts (latency CDF with a log x axis, scaling curve with log–log axes).
//!
//! Deliberately tiny: absolute coordinates, one `<text>`/`<line>`/`<rect>`/`<polyline>` per
//! mark, no styling beyond attributes, so the files diff well and render anywhere.

use std::fmt::Write;

/// Colours for series, in order (Tableau 10, readable on white).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// An SVG document being written.
#[derive(Debug)]
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Svg {
    /// An empty white canvas.
    pub fn new(width: f64, height: f64) -> Self {
        let mut s = Self {
            width,
            height,
            body: String::new(),
        };
        s.rect(0.0, 0.0, width, height, "white");
        s
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
    }

    /// An open polyline.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}"/>"#,
            pts.join(" ")
        );
    }

    /// A filled circle.
    pub fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}"/>"#
        );
    }

    /// Text; `anchor` is `start`, `middle` or `end`; `rotate` in degrees about the anchor point.
    pub fn text(&mut self, (x, y): (f64, f64), s: &str, size: f64, anchor: &str, rotate: f64) {
        let transform = if rotate == 0.0 {
            String::new()
        } else {
            format!(r#" transform="rotate({rotate} {x:.1} {y:.1})""#)
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="{size}" text-anchor="{anchor}"{transform}>{}</text>"#,
            esc(s)
        );
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// A value axis mapped onto a pixel interval.
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    px0: f64,
    px1: f64,
}

impl Axis {
    /// An axis covering `min..=max` (expanded to whole decades when logarithmic).
    fn new(min: f64, max: f64, log: bool, px0: f64, px1: f64) -> Self {
        let (lo, hi) = if log {
            let lo = min.max(1e-9).log10().floor();
            let hi = max.max(1e-9).log10().ceil();
            (lo, if hi > lo { hi } else { lo + 1.0 })
        } else {
            (min, if max > min { max } else { min + 1.0 })
        };
        Self {
            lo,
            hi,
            log,
            px0,
            px1,
        }
    }

    fn px(&self, v: f64) -> f64 {
        let t = if self.log { v.max(1e-9).log10() } else { v };
        self.px0 + (t - self.lo) / (self.hi - self.lo) * (self.px1 - self.px0)
    }

    /// Tick values with labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            (self.lo as i32..=self.hi as i32)
                .map(|e| {
                    let label = match e {
                        0.. => fmt_num(10f64.powi(e)),
                        -2..0 => format!("{:.*}", (-e) as usize, 10f64.powi(e)),
                        _ => format!("1e{e}"),
                    };
                    (10f64.powi(e), label)
                })
                .collect()
        } else {
            let step = nice_step((self.hi - self.lo) / 5.0);
            let mut v = (self.lo / step).ceil() * step;
            let mut out = Vec::new();
            while v <= self.hi + step * 1e-9 {
                out.push((v, fmt_num(v)));
                v += step;
            }
            out
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v == v.round() {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

/// Plot-area margins: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (70.0, 170.0, 40.0, 60.0);

fn frame(svg: &mut Svg, title: &str, x_label: &str, y_label: &str) -> (f64, f64, f64, f64) {
    let (l, r, t, b) = MARGIN;
    let (x0, x1, y0, y1) = (l, svg.width - r, svg.height - b, t);
    svg.text((svg.width / 2.0, 22.0), title, 15.0, "middle", 0.0);
    svg.text(
        ((x0 + x1) / 2.0, svg.height - 15.0),
        x_label,
        12.0,
        "middle",
        0.0,
    );
    svg.text((18.0, (y0 + y1) / 2.0), y_label, 12.0, "middle", -90.0);
    (x0, x1, y0, y1)
}

fn legend(svg: &mut Svg, names: &[(&str, &str)]) {
    let x = svg.width - MARGIN.1 + 15.0;
    for (i, (name, color)) in names.iter().enumerate() {
        let y = MARGIN.2 + 10.0 + i as f64 * 18.0;
        svg.rect(x, y - 9.0, 12.0, 12.0, color);
        svg.text((x + 18.0, y + 2.0), name, 12.0, "start", 0.0);
    }
}

fn y_grid(svg: &mut Svg, y: &Axis, x0: f64, x1: f64) {
    for (v, label) in y.ticks() {
        let py = y.px(v);
        svg.line((x0, py), (x1, py), "#dddddd", 1.0);
        svg.text((x0 - 6.0, py + 4.0), &label, 11.0, "end", 0.0);
    }
}

/// Grouped bars: one group per label, one bar per series; `None` values leave a gap (and are
/// marked "n/a"). The y axis is logarithmic, since the peers span orders of magnitude.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    let mut svg = Svg::new(1100.0, 480.0);
    let (x0, x1, y0, y1) = frame(&mut svg, title, "workload", y_label);
    let values = series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let (min, max) = values.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y = Axis::new(
        if min == f64::MAX { 1.0 } else { min },
        max.max(1.0),
        true,
        y0,
        y1,
    );
    y_grid(&mut svg, &y, x0, x1);
    let group_w = (x1 - x0) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, label) in groups.iter().enumerate() {
        let gx = x0 + g as f64 * group_w + group_w * 0.1;
        svg.text((gx + group_w * 0.4, y0 + 16.0), label, 11.0, "middle", 0.0);
        for (s, (_, vals)) in series.iter().enumerate() {
            let bx = gx + s as f64 * bar_w;
            match vals.get(g).copied().flatten() {
                Some(v) => {
                    let top = y.px(v);
                    svg.rect(bx, top, bar_w * 0.9, y0 - top, PALETTE[s % PALETTE.len()]);
                }
                None => svg.text((bx + bar_w / 2.0, y0 - 4.0), "n/a", 8.0, "middle", -90.0),
            }
        }
    }
    svg.line((x0, y0), (x1, y0), "black", 1.0);
    svg.line((x0, y0), (x0, y1), "black", 1.0);
    let names: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), PALETTE[i % PALETTE.len()]))
        .collect();
    legend(&mut svg, &names);
    svg.finish()
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// Points in data coordinates.
    pub points: Vec<(f64, f64)>,
}

/// A line chart; `markers` draws a dot on every point (for sparse series).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    (log_x, log_y): (bool, bool),
    markers: bool,
) -> String {
    let mut svg = Svg::new(900.0, 480.0);
    let (x0, x1, y0, y1) = frame(&mut svg, title, x_label, y_label);
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let fold = |f: fn(&(f64, f64)) -> f64| {
        pts()
            .map(|p| f(&p))
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (xmin, xmax) = fold(|p| p.0);
    let (ymin, ymax) = fold(|p| p.1);
    if xmin > xmax {
        return svg.finish();
    }
    let x = Axis::new(xmin, xmax, log_x, x0, x1);
    let y = Axis::new(
        if log_y { ymin } else { ymin.min(0.0) },
        ymax,
        log_y,
        y0,
        y1,
    );
    y_grid(&mut svg, &y, x0, x1);
    for (v, label) in x.ticks() {
        let px = x.px(v);
        svg.line((px, y0), (px, y1), "#eeeeee", 1.0);
        svg.text((px, y0 + 16.0), &label, 11.0, "middle", 0.0);
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mapped: Vec<(f64, f64)> = s.points.iter().map(|&(a, b)| (x.px(a), y.px(b))).collect();
        svg.polyline(&mapped, color, 2.0);
        if markers {
            for &p in &mapped {
                svg.circle(p, 3.5, color);
            }
        }
    }
    svg.line((x0, y0), (x1, y0), "black", 1.0);
    svg.line((x0, y0), (x0, y1), "black", 1.0);
    let names: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), PALETTE[i % PALETTE.len()]))
        .collect();
    legend(&mut svg, &names);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let bars = bar_chart(
            "t <&>",
            "ns",
            &["a".into(), "b".into()],
            &[
                ("x".into(), vec![Some(10.0), None]),
                ("y".into(), vec![Some(1000.0), Some(3.0)]),
            ],
        );
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert!(bars.contains("t &lt;&amp;&gt;") && bars.contains("n/a"));
        let s = Series {
            name: "s".into(),
            points: vec![(1e3, 5.0), (1e5, 50.0)],
        };
        let lines = line_chart("t", "x", "y", &[s], (true, true), true);
        assert_eq!(lines.matches("<circle").count(), 2);
        assert_eq!(Axis::new(3.0, 700.0, true, 0.0, 100.0).ticks().len(), 4); // 1, 10, 100, 1k
        let small: Vec<String> = Axis::new(0.0004, 0.2, true, 0.0, 100.0)
            .ticks()
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(small, ["1e-4", "1e-3", "0.01", "0.1", "1"]);
    }
}
