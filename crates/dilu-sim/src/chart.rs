//! Hand-written SVG line charts: a title, axes with units, linear or base-10 logarithmic scales, grid lines,
//! and a legend beside the plot area so that it never hides a curve.
//!
//! [`render_svg`] returns the SVG text; the same text is written as a file and inlined into HTML reports, so
//! the chart uses no `id`s (several charts can share one page) and no stylesheet (only presentation
//! attributes). Coordinates are printed with one decimal, so equal inputs give byte-identical output.
//!
//! Elements tests and tools can find: the plot area's frame is `<rect class="plot-area" …>`, each tick label
//! is `<text class="x-tick" …>` or `<text class="y-tick" …>` anchored at its tick's position, and each series
//! is one `<polyline class="series" …>` (a single point is a `<circle class="series" …>`).

use crate::plot::PlotError;
use std::fmt::Write as _;

/// Colour-blind-safe series colours (Okabe–Ito, yellow last), used in order and then repeated.
pub const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442",
];

/// Dash patterns of the odd-numbered series (in turn); even-numbered series are solid. Dashed lines are drawn
/// over the solid ones, so that a curve another one covers still shows through the gaps.
const DASHES: [&str; 3] = ["9 5", "3 4", "12 4 3 4"];

/// Chart width in pixels.
pub const WIDTH: f64 = 960.0;
/// Chart height in pixels.
pub const HEIGHT: f64 = 600.0;

const MARGIN_LEFT: f64 = 88.0;
const MARGIN_TOP: f64 = 52.0;
const MARGIN_BOTTOM: f64 = 62.0;
const MARGIN_RIGHT: f64 = 16.0;
const FONT: &str = "DejaVu Sans, Verdana, Arial, sans-serif";
/// Approximate advance of one character of the 13 px legend font, for sizing the legend.
const LEGEND_CHAR_PX: f64 = 7.8;

/// How an axis maps values to pixels and labels its ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Linear, ticks at 1, 2, 2.5 or 5 × 10ᵏ (about six of them).
    Linear {
        /// The range includes 0.
        zero: bool,
        /// The range is exactly the data's; otherwise it is widened to whole ticks.
        tight: bool,
    },
    /// Base 10 logarithmic over whole decades, a labelled tick at each decade and unlabelled minor ticks at
    /// 2…9 × 10ᵏ. Values that are not positive are drawn at the axis minimum.
    Log10(LogLabels),
}

/// How the decades of a logarithmic axis are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLabels {
    /// Plain numbers: 0.1, 1, 10, 100, … (1e-5 style beyond 10⁻⁴ and 10⁶).
    Number,
    /// The values are milliseconds: 100 µs, 1 ms, 10 ms, 100 ms, 1 s, 10 s, 100 s.
    Millis,
}

/// One axis: its description (with units) and scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis<'a> {
    /// Axis title, e.g. `latency (log scale)`.
    pub label: &'a str,
    /// Scale.
    pub scale: Scale,
}

/// A line chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chart<'a> {
    /// Title, drawn above the plot.
    pub title: &'a str,
    /// Horizontal axis.
    pub x: Axis<'a>,
    /// Vertical axis.
    pub y: Axis<'a>,
    /// Heading of the legend (e.g. `policy`); none when empty.
    pub legend_title: &'a str,
    /// `(name, points)` per series, drawn in order, points joined in the given order.
    pub series: &'a [(String, Vec<(f64, f64)>)],
}

/// Escapes text for XML and HTML (content and attribute values).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A tick: value and label (empty for minor ticks).
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    value: f64,
    label: String,
    major: bool,
}

/// An axis resolved against the data: its range in axis units and its ticks.
#[derive(Debug, Clone, PartialEq)]
struct Resolved {
    log: bool,
    /// Range in axis units (log10 of the value for logarithmic axes).
    lo: f64,
    hi: f64,
    ticks: Vec<Tick>,
}

impl Resolved {
    /// Fraction of the axis length at which `v` lies.
    fn fraction(&self, v: f64) -> f64 {
        let u = if self.log {
            if v > 0.0 { v.log10() } else { self.lo }
        } else {
            v
        };
        ((u - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

/// 1, 2, 2.5, 5 × 10ᵏ: the smallest such step giving at most about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|&n| f <= n * (1.0 + 1e-9))
        .unwrap_or(10.0);
    nice * magnitude
}

/// Decimals needed to print multiples of `step` exactly (at most 6).
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

fn linear(min: f64, max: f64, zero: bool, tight: bool) -> Resolved {
    let (mut min, mut max) = (min, max);
    if zero {
        min = min.min(0.0);
        max = max.max(0.0);
    }
    if max <= min {
        if zero {
            // All values are 0.
            max = 1.0;
        } else {
            let half = if min == 0.0 { 1.0 } else { min.abs() * 0.5 };
            min -= half;
            max += half;
        }
    }
    let step = nice_step(max - min, 6.0);
    let (lo, hi) = if tight {
        (min, max)
    } else {
        ((min / step).floor() * step, (max / step).ceil() * step)
    };
    let digits = decimals(step);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let ticks = (first..=last)
        .map(|k| {
            let value = k as f64 * step;
            // `+ 0.0` turns -0 into 0.
            let label = format!("{:.digits$}", value + 0.0);
            Tick {
                value,
                label,
                major: true,
            }
        })
        .collect();
    Resolved {
        log: false,
        lo,
        hi,
        ticks,
    }
}

/// The exponent of the decade at or below `v` (> 0), robust to rounding in `log10`.
fn decade_floor(v: f64) -> i32 {
    let mut d = v.log10().floor() as i32;
    while 10f64.powi(d + 1) <= v {
        d += 1;
    }
    while 10f64.powi(d) > v {
        d -= 1;
    }
    d
}

/// `10^n` for `n ≥ 0` as digits, without floating-point noise.
fn power_of_ten(n: i32) -> String {
    format!("1{}", "0".repeat(n.max(0) as usize))
}

fn decade_label(d: i32, labels: LogLabels) -> String {
    match labels {
        LogLabels::Millis => match d {
            d if d >= 3 => format!("{} s", power_of_ten(d - 3)),
            d if d >= 0 => format!("{} ms", power_of_ten(d)),
            d if d >= -3 => format!("{} µs", power_of_ten(d + 3)),
            d if d >= -6 => format!("{} ns", power_of_ten(d + 6)),
            d => format!("1e{d} ms"),
        },
        LogLabels::Number => match d {
            0..=6 => power_of_ten(d),
            -4..=-1 => format!("0.{}1", "0".repeat((-d - 1) as usize)),
            d => format!("1e{d}"),
        },
    }
}

/// The largest of 1, 2, 5 × 10ᵏ at or below `v` (> 0); with `up`, the smallest at or above it.
fn nice_log_end(v: f64, up: bool) -> f64 {
    let d = decade_floor(v);
    let candidates = [1.0, 2.0, 5.0, 10.0].map(|m| m * 10f64.powi(d));
    if up {
        candidates
            .into_iter()
            .find(|&c| c >= v)
            .unwrap_or(candidates[3])
    } else {
        candidates
            .into_iter()
            .rev()
            .find(|&c| c <= v)
            .unwrap_or(candidates[0])
    }
}

fn logarithmic(min_positive: Option<f64>, max: f64, labels: LogLabels) -> Resolved {
    let Some(min) = min_positive else {
        return log_ticks(1.0, 10.0, labels);
    };
    let max = max.max(min);
    // Ends at 1, 2 or 5 × 10ᵏ, as long as at least two decades are labelled; whole decades otherwise.
    let (lo, hi) = (nice_log_end(min, false), nice_log_end(max, true));
    let first = decade_floor(lo) + i32::from(10f64.powi(decade_floor(lo)) < lo);
    if decade_floor(hi) - first >= 1 {
        return log_ticks(lo, hi, labels);
    }
    let lo = decade_floor(min);
    let top = decade_floor(max);
    let hi = if 10f64.powi(top) < max { top + 1 } else { top }.max(lo + 1);
    log_ticks(10f64.powi(lo), 10f64.powi(hi), labels)
}

/// Ticks of a logarithmic axis from `lo` to `hi`: labelled decades, minor ticks at 2…9 × 10ᵏ.
fn log_ticks(lo: f64, hi: f64, labels: LogLabels) -> Resolved {
    let inside = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let mut ticks = Vec::new();
    for d in decade_floor(lo)..=decade_floor(hi) {
        for m in 1..=9 {
            let value = f64::from(m) * 10f64.powi(d);
            if inside(value) {
                ticks.push(Tick {
                    value,
                    label: if m == 1 {
                        decade_label(d, labels)
                    } else {
                        String::new()
                    },
                    major: m == 1,
                });
            }
        }
    }
    Resolved {
        log: true,
        lo: lo.log10(),
        hi: hi.log10(),
        ticks,
    }
}

fn resolve(scale: Scale, values: impl Iterator<Item = f64> + Clone) -> Resolved {
    let min = values.clone().fold(f64::INFINITY, f64::min);
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    match scale {
        Scale::Linear { zero, tight } => linear(min, max, zero, tight),
        Scale::Log10(labels) => {
            let min_positive = values.filter(|&v| v > 0.0).reduce(f64::min);
            logarithmic(min_positive, max, labels)
        }
    }
}

/// Renders the chart as an SVG document (no XML declaration, so it can be inlined into HTML as it is).
///
/// # Errors
///
/// [`PlotError::NoData`] when no series has a point, [`PlotError::NonFinite`] for a NaN or infinite
/// coordinate.
pub fn render_svg(chart: &Chart) -> Result<String, PlotError> {
    for (name, points) in chart.series {
        if let Some((index, &(x, y))) = points
            .iter()
            .enumerate()
            .find(|(_, (x, y))| !x.is_finite() || !y.is_finite())
        {
            return Err(PlotError::NonFinite {
                series: name.clone(),
                index,
                x,
                y,
            });
        }
    }
    let all = || chart.series.iter().flat_map(|(_, p)| p.iter().copied());
    if all().next().is_none() {
        return Err(PlotError::NoData(format!(
            "{} series, none with points, for '{}'",
            chart.series.len(),
            chart.title
        )));
    }
    let xr = resolve(chart.x.scale, all().map(|p| p.0));
    let yr = resolve(chart.y.scale, all().map(|p| p.1));

    let longest = chart
        .series
        .iter()
        .map(|(n, _)| n.chars().count())
        .chain(std::iter::once(chart.legend_title.chars().count()))
        .max()
        .unwrap_or(0) as f64;
    let legend_w = (longest * LEGEND_CHAR_PX + 44.0).clamp(110.0, 260.0);
    let left = MARGIN_LEFT;
    let top = MARGIN_TOP;
    let width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT - legend_w;
    let height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = top + height;
    let px = |v: f64| left + width * xr.fraction(v);
    let py = |v: f64| bottom - height * yr.fraction(v);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" role="img">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(chart.title));
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="30" font-size="19" font-weight="bold" text-anchor="middle" fill="#111111">{}</text>"##,
        WIDTH / 2.0,
        escape(chart.title)
    );

    // Grid: minor lines lighter than major ones.
    for (major, colour) in [(false, "#eeeeee"), (true, "#d4d4d4")] {
        let _ = writeln!(s, r#"<g stroke="{colour}" stroke-width="1">"#);
        for t in xr.ticks.iter().filter(|t| t.major == major) {
            let x = px(t.value);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}"/>"#
            );
        }
        for t in yr.ticks.iter().filter(|t| t.major == major) {
            let y = py(t.value);
            let _ = writeln!(
                s,
                r#"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
                left + width
            );
        }
        s.push_str("</g>\n");
    }

    // Tick marks outside the frame: long for major ticks, short for minor ones.
    s.push_str("<g stroke=\"#333333\" stroke-width=\"1\">\n");
    for t in &xr.ticks {
        let x = px(t.value);
        let len = if t.major { 6.0 } else { 3.5 };
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}"/>"#,
            bottom + len
        );
    }
    for t in &yr.ticks {
        let y = py(t.value);
        let len = if t.major { 6.0 } else { 3.5 };
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{left:.1}" y2="{y:.1}"/>"#,
            left - len
        );
    }
    s.push_str("</g>\n");

    // Tick labels.
    s.push_str("<g font-size=\"13\" fill=\"#222222\">\n");
    for t in xr.ticks.iter().filter(|t| !t.label.is_empty()) {
        let _ = writeln!(
            s,
            r#"<text class="x-tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(t.value),
            bottom + 22.0,
            escape(&t.label)
        );
    }
    for t in yr.ticks.iter().filter(|t| !t.label.is_empty()) {
        let _ = writeln!(
            s,
            r#"<text class="y-tick" x="{:.1}" y="{:.1}" dy="0.35em" text-anchor="end">{}</text>"#,
            left - 9.0,
            py(t.value),
            escape(&t.label)
        );
    }
    s.push_str("</g>\n");

    // Axis titles.
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="15" text-anchor="middle" fill="#111111">{}</text>"##,
        left + width / 2.0,
        HEIGHT - 14.0,
        escape(chart.x.label)
    );
    let (yx, yy) = (22.0, top + height / 2.0);
    let _ = writeln!(
        s,
        r##"<text x="{yx:.1}" y="{yy:.1}" font-size="15" text-anchor="middle" fill="#111111" transform="rotate(-90 {yx:.1} {yy:.1})">{}</text>"##,
        escape(chart.y.label)
    );

    // Frame under the curves, so that a curve along an edge stays visible.
    let _ = writeln!(
        s,
        r##"<rect class="plot-area" x="{left:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="none" stroke="#333333" stroke-width="1"/>"##
    );

    // Series.
    let _ = writeln!(
        s,
        r#"<g fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">"#
    );
    // Solid series first, then the dashed ones over them.
    let order = (0..chart.series.len())
        .filter(|&i| style(i).1.is_none())
        .chain((0..chart.series.len()).filter(|&i| style(i).1.is_some()));
    for i in order {
        let (name, points) = &chart.series[i];
        let (colour, dash) = style(i);
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        if let [(x, y)] = points.as_slice() {
            let _ = writeln!(
                s,
                r#"<circle class="series" cx="{:.1}" cy="{:.1}" r="3" fill="{colour}" stroke="{colour}"><title>{}</title></circle>"#,
                px(*x),
                py(*y),
                escape(name)
            );
            continue;
        }
        if points.is_empty() {
            continue;
        }
        let mut coords = String::new();
        for &(x, y) in points {
            if !coords.is_empty() {
                coords.push(' ');
            }
            let _ = write!(coords, "{:.1},{:.1}", px(x), py(y));
        }
        let _ = writeln!(
            s,
            r#"<polyline class="series" stroke="{colour}"{dash} points="{coords}"><title>{}</title></polyline>"#,
            escape(name)
        );
    }
    s.push_str("</g>\n");

    // Legend, right of the plot area.
    let lx = left + width + 18.0;
    let mut ly = top + 8.0;
    s.push_str("<g font-size=\"13\" fill=\"#222222\">\n");
    if !chart.legend_title.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            ly + 4.0,
            escape(chart.legend_title)
        );
        ly += 24.0;
    }
    for (i, (name, _)) in chart.series.iter().enumerate() {
        let (colour, dash) = style(i);
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"{dash}/>"#,
            lx + 26.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{ly:.1}" dy="0.35em">{}</text>"#,
            lx + 34.0,
            escape(name)
        );
        ly += 22.0;
    }
    s.push_str("</g>\n</svg>\n");
    Ok(s)
}

/// Colour and dash pattern of series `i`.
fn style(i: usize) -> (&'static str, Option<&'static str>) {
    let dash = (i % 2 == 1).then(|| DASHES[(i / 2) % DASHES.len()]);
    (PALETTE[i % PALETTE.len()], dash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(tag: &str, name: &str) -> f64 {
        let key = format!(" {name}=\"");
        let start = tag.find(&key).unwrap_or_else(|| panic!("{name} in {tag}")) + key.len();
        let end = start + tag[start..].find('"').unwrap();
        tag[start..end].parse().unwrap()
    }

    /// `(x, label)` of every x tick label.
    fn x_ticks(svg: &str) -> Vec<(f64, String)> {
        svg.lines()
            .filter(|l| l.starts_with("<text class=\"x-tick\""))
            .map(|l| {
                let label = &l[l.find('>').unwrap() + 1..l.rfind("</text>").unwrap()];
                (attr(l, "x"), label.to_owned())
            })
            .collect()
    }

    fn plot_area(svg: &str) -> (f64, f64, f64, f64) {
        let l = svg
            .lines()
            .find(|l| l.starts_with("<rect class=\"plot-area\""))
            .unwrap();
        (
            attr(l, "x"),
            attr(l, "y"),
            attr(l, "width"),
            attr(l, "height"),
        )
    }

    fn latency_chart(series: &[(String, Vec<(f64, f64)>)]) -> String {
        render_svg(&Chart {
            title: "Latency <CDF> & co",
            x: Axis {
                label: "latency (ms, log scale)",
                scale: Scale::Log10(LogLabels::Millis),
            },
            y: Axis {
                label: "fraction of requests",
                scale: Scale::Linear {
                    zero: true,
                    tight: false,
                },
            },
            legend_title: "policy",
            series,
        })
        .unwrap()
    }

    #[test]
    fn log_axis_labels_decades_and_places_points_by_their_logarithm() {
        let series = vec![
            (
                "fast".to_owned(),
                vec![(1.5, 0.0), (10.0, 0.5), (40.0, 1.0)],
            ),
            ("slow".to_owned(), vec![(20.0, 0.0), (9900.0, 1.0)]),
        ];
        let svg = latency_chart(&series);
        let ticks = x_ticks(&svg);
        let labels: Vec<&str> = ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]);
        let (left, top, width, height) = plot_area(&svg);
        // Decades are equally spaced: 4 decades over the plot width.
        for (i, (x, _)) in ticks.iter().enumerate() {
            assert!(
                (x - (left + width * i as f64 / 4.0)).abs() < 0.06,
                "{ticks:?}"
            );
        }
        // The point (10 ms, 0.5) lies a quarter of the way across and half way up.
        let expected = format!(
            "{:.1},{:.1}",
            left + width * (10f64.log10() - 0.0) / 4.0,
            top + height * 0.5
        );
        let fast = svg
            .lines()
            .find(|l| l.contains("<title>fast</title>"))
            .unwrap();
        assert!(fast.contains(&expected), "{expected} not in {fast}");
        // 1.5 ms lies at log10(1.5)/4 of the width, not at 0.5/9999 of it as a linear axis would put it.
        let x15 = left + width * 1.5f64.log10() / 4.0;
        assert!(fast.contains(&format!("points=\"{x15:.1},")), "{fast}");
        // A major tick mark per decade, 8 minor ones within each.
        let marks = |len: f64| {
            let end = format!("y2=\"{:.1}\"", top + height + len);
            svg.lines().filter(|l| l.contains(&end)).count()
        };
        assert_eq!((marks(6.0), marks(3.5)), (5, 4 * 8));
        // Text is escaped.
        assert!(svg.contains("Latency &lt;CDF&gt; &amp; co"));
        assert!(!svg.contains("<CDF>"));
    }

    #[test]
    fn log_axis_edges_and_labels() {
        assert_eq!(decade_floor(1000.0), 3);
        assert_eq!(decade_floor(999.999), 2);
        assert_eq!(decade_floor(0.001), -3);
        assert_eq!(decade_label(-1, LogLabels::Millis), "100 µs");
        assert_eq!(decade_label(4, LogLabels::Millis), "10 s");
        assert_eq!(decade_label(-2, LogLabels::Number), "0.01");
        assert_eq!(decade_label(7, LogLabels::Number), "1e7");
        // An exact decade as maximum adds no empty decade; a single value still spans one decade.
        let r = logarithmic(Some(10.0), 1000.0, LogLabels::Millis);
        assert_eq!((r.lo, r.hi), (1.0, 3.0));
        let r = logarithmic(Some(5.0), 5.0, LogLabels::Millis);
        assert_eq!((r.lo, r.hi), (0.0, 1.0));
        // Ends at 1, 2 or 5 × 10ᵏ when two decades stay labelled: 15 ms … 10.06 s spans 10 ms … 20 s.
        let r = logarithmic(Some(15.0), 10_063.0, LogLabels::Millis);
        assert_eq!((r.lo, r.hi), (1.0, 20_000f64.log10()));
        let labels: Vec<&str> = r
            .ticks
            .iter()
            .filter(|t| t.major)
            .map(|t| t.label.as_str())
            .collect();
        assert_eq!(labels, ["10 ms", "100 ms", "1 s", "10 s"]);
        assert_eq!(r.ticks.last().unwrap().value, 20_000.0);
        // 30 ms … 400 ms holds a single decade (100 ms) between nice ends: whole decades instead.
        let r = logarithmic(Some(30.0), 400.0, LogLabels::Millis);
        assert_eq!((r.lo, r.hi), (1.0, 3.0));
        // Non-positive values sit at the axis minimum.
        assert_eq!(r.fraction(0.0), 0.0);
    }

    #[test]
    fn linear_ticks_are_round_numbers() {
        let r = linear(0.0, 7.3, true, false);
        let labels: Vec<&str> = r.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8"]);
        assert_eq!((r.lo, r.hi), (0.0, 8.0));
        let r = linear(0.0, 900.0, false, true);
        assert_eq!((r.lo, r.hi), (0.0, 900.0));
        assert_eq!(r.ticks.last().unwrap().label, "800");
        let r = linear(0.0, 1.0, true, false);
        assert_eq!(r.ticks[1].label, "0.2");
        let r = linear(0.0, 0.14, true, false);
        assert_eq!(r.ticks[1].label, "0.025");
        let r = linear(3.0, 3.0, true, false);
        assert!(r.lo == 0.0 && r.hi >= 3.0);
    }

    #[test]
    fn output_is_deterministic_and_rejects_bad_data() {
        let series = vec![("a".to_owned(), vec![(0.0, 1.0), (1.0, 2.0)])];
        let chart = Chart {
            title: "t",
            x: Axis {
                label: "x (s)",
                scale: Scale::Linear {
                    zero: false,
                    tight: true,
                },
            },
            y: Axis {
                label: "y",
                scale: Scale::Linear {
                    zero: true,
                    tight: false,
                },
            },
            legend_title: "",
            series: &series,
        };
        assert_eq!(render_svg(&chart).unwrap(), render_svg(&chart).unwrap());
        let empty = vec![("a".to_owned(), vec![])];
        assert!(matches!(
            render_svg(&Chart {
                series: &empty,
                ..chart
            }),
            Err(PlotError::NoData(_))
        ));
        let nan = vec![("a".to_owned(), vec![(0.0, 1.0), (f64::NAN, 1.0)])];
        assert!(matches!(
            render_svg(&Chart {
                series: &nan,
                ..chart
            }),
            Err(PlotError::NonFinite { index: 1, .. })
        ));
        let one = vec![("only".to_owned(), vec![(2.0, 2.0)])];
        assert!(
            render_svg(&Chart {
                series: &one,
                ..chart
            })
            .unwrap()
            .contains("<circle class=\"series\"")
        );
    }
}
