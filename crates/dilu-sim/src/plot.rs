//! SVG line charts for simulation reports.
//!
//! Built on plotters' SVG backend. plotters (with the `ab_glyph` text
//! feature, i.e. without system font discovery) can only measure and lay out
//! text for fonts registered explicitly, so the crate embeds DejaVu Sans and
//! registers it once as `"sans-serif"`, the family plotters uses by default.
//! Charts are therefore identical on every machine, with or without fonts installed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans (free license), embedded so text layout needs no system fonts.
static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

/// Colour-blind-safe series colours (Okabe–Ito), used in order and then repeated.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 600);

/// Why a chart could not be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlotError {
    /// The embedded font could not be registered with plotters.
    #[error("cannot register the embedded font: {0}")]
    Font(String),
    /// There is nothing to plot.
    #[error("no data to plot: {0}")]
    NoData(String),
    /// A point has a NaN or infinite coordinate.
    #[error("series '{series}' point {index} = ({x}, {y}): coordinates must be finite")]
    NonFinite {
        /// Name of the series containing the point.
        series: String,
        /// 0-based index of the point in its series.
        index: usize,
        /// The x coordinate.
        x: f64,
        /// The y coordinate.
        y: f64,
    },
    /// plotters failed while drawing or writing the file.
    #[error("cannot draw chart {path}: {message}")]
    Draw {
        /// The output file.
        path: String,
        /// plotters' error message.
        message: String,
    },
}

/// Registers the embedded font as `"sans-serif"` exactly once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "embedded DejaVuSans.ttf is not a valid font".to_owned())
        })
        .clone()
        .map_err(PlotError::Font)
}

/// `(min, max)` widened so that the range is never empty, with `pad` (a
/// fraction of the span) added on both sides.
fn padded_range(min: f64, max: f64, pad: f64) -> (f64, f64) {
    if max > min {
        let p = (max - min) * pad;
        (min - p, max + p)
    } else {
        let half = if min == 0.0 { 1.0 } else { min.abs() * 0.5 };
        (min - half, max + half)
    }
}

/// Draws an SVG line chart with one line per series, a legend, axes and labels.
///
/// `series` is a list of `(name, points)`; points are drawn in the given order.
/// The axes span all points (the y axis with 5 % headroom). Fails if there
/// are no points at all, if a coordinate is not finite, or if the file cannot
/// be written.
///
/// # Errors
///
/// [`PlotError::NoData`] / [`PlotError::NonFinite`] for unusable data,
/// [`PlotError::Font`] if the embedded font cannot be registered and
/// [`PlotError::Draw`] if plotters fails (e.g. the file cannot be created).
pub fn plot_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    ensure_font()?;
    let mut x_min = f64::INFINITY;
    let mut x_max = f64::NEG_INFINITY;
    let mut y_min = f64::INFINITY;
    let mut y_max = f64::NEG_INFINITY;
    for (name, points) in series {
        for (index, &(x, y)) in points.iter().enumerate() {
            if !x.is_finite() || !y.is_finite() {
                return Err(PlotError::NonFinite {
                    series: name.clone(),
                    index,
                    x,
                    y,
                });
            }
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !x_min.is_finite() {
        return Err(PlotError::NoData(format!(
            "{} series, none with points, for '{title}'",
            series.len()
        )));
    }
    let (x0, x1) = padded_range(x_min, x_max, 0.0);
    let (y0, y1) = padded_range(y_min, y_max, 0.05);

    let path_text = path.display().to_string();
    let draw_err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path_text.clone(),
        message: e.to_string(),
    };

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| draw_err(&e))?;

    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| draw_err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| draw_err(&e))?;
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A fresh path in the temp directory (process id + time + tag make it unique).
    fn temp_svg(tag: &str) -> std::path::PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!(
            "dilu-sim-plot-{tag}-{}-{nanos}.svg",
            std::process::id()
        ))
    }

    #[test]
    fn plots_two_series_with_legend() {
        let path = temp_svg("two");
        let series = vec![
            (
                "Dilu".to_owned(),
                (0..20).map(|i| (f64::from(i), f64::from(i * i))).collect(),
            ),
            (
                "Exclusive".to_owned(),
                (0..20)
                    .map(|i| (f64::from(i), 3.0 * f64::from(i)))
                    .collect(),
            ),
        ];
        plot_lines(&path, "GPUs used over time", "time (s)", "GPUs", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("<svg"));
        assert!(svg.contains("Dilu"));
        assert!(svg.contains("Exclusive"));
        assert!(svg.contains("GPUs used over time"));
        assert!(svg.contains("time (s)"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    #[test]
    fn constant_and_single_point_series_are_drawn() {
        let path = temp_svg("flat");
        let series = vec![("flat".to_owned(), vec![(5.0, 2.0)])];
        plot_lines(&path, "one point", "x", "y", &series).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("flat"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn rejects_empty_and_non_finite_data() {
        let path = temp_svg("bad");
        let empty: Vec<(String, Vec<(f64, f64)>)> = vec![("a".into(), vec![])];
        assert!(matches!(
            plot_lines(&path, "t", "x", "y", &empty),
            Err(PlotError::NoData(_))
        ));
        let nan = vec![("a".to_owned(), vec![(0.0, 1.0), (1.0, f64::NAN)])];
        let err = plot_lines(&path, "t", "x", "y", &nan).unwrap_err();
        assert!(matches!(err, PlotError::NonFinite { index: 1, .. }));
        assert!(err.to_string().contains("series 'a' point 1"));
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let path = temp_svg("dir").join("missing-subdir").join("x.svg");
        let series = vec![("a".to_owned(), vec![(0.0, 1.0), (1.0, 2.0)])];
        let err = plot_lines(&path, "t", "x", "y", &series).unwrap_err();
        assert!(matches!(err, PlotError::Draw { .. }), "{err:?}");
    }
}
