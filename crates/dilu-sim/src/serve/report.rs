//! Comparison reports of a serving scenario: a text table, JSON, SVG plots (latency CDF on a logarithmic
//! latency axis, SLO violations over time, active GPUs over time, SM share in use over time) and an HTML page
//! holding the tables and the plots ([`crate::serve::html`]).

use crate::chart::{Axis, Chart, LogLabels, Scale, render_svg};
use crate::plot::PlotError;
use crate::serve::html::{Figure, render_html};
use crate::serve::metrics::{PolicyReport, PolicyRun};
use crate::serve::setup::ProfileSummary;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Named series of (x, y) points, one per policy.
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Most points per plotted series (latency CDFs are downsampled to this).
const MAX_POINTS: usize = 600;
/// Samples averaged for the SLO-violation series.
const SMOOTH_SAMPLES: usize = 10;

/// Everything a `sim serve` run reports, as written to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServeComparison {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated seconds.
    pub duration_s: f64,
    /// What the profiler chose per function and job.
    pub profiles: Vec<ProfileSummary>,
    /// One report per policy, in the order run.
    pub policies: Vec<PolicyReport>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File system trouble.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// JSON encoding failed.
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A plot failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Formats the comparison as an aligned text table, one row per policy.
pub fn format_table(c: &ServeComparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} (seed {}, {:.0} s simulated)",
        c.scenario, c.seed, c.duration_s
    );
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9} {:>8} {:>6} {:>7} {:>7} {:>6} {:>8}",
        "policy",
        "SLO-viol",
        "p50 ms",
        "p99 ms",
        "inf rps",
        "goodput",
        "train x",
        "GPU-h",
        "peak",
        "SMfrag",
        "memfrag",
        "cold",
        "vert-adj"
    );
    for p in &c.policies {
        let _ = writeln!(
            out,
            "{:<12} {:>7.2}% {:>8.1} {:>9.1} {:>9.1} {:>10.1} {:>9.3} {:>8.2} {:>6} {:>7.3} {:>7.3} {:>6} {:>8}",
            p.policy,
            p.slo_violation_rate * 100.0,
            p.p50_ms,
            p.p99_ms,
            p.inference_throughput_rps,
            p.goodput_rps,
            p.training_throughput,
            p.gpu_hours,
            p.peak_active_gpus,
            p.mean_sm_frag,
            p.mean_mem_frag,
            p.cold_starts,
            p.vertical_adjustments
        );
    }
    out
}

/// The comparison as pretty JSON (deterministic: fixed field order, no maps).
pub fn to_json(c: &ServeComparison) -> Result<String, ReportError> {
    Ok(serde_json::to_string_pretty(c)? + "\n")
}

fn downsample(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let step = points.len().div_ceil(MAX_POINTS);
    let last = points.last().copied();
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if let Some(l) = last
        && out.last() != Some(&l)
    {
        out.push(l);
    }
    out
}

fn cdf(latencies_ms: &[f64]) -> Vec<(f64, f64)> {
    let n = latencies_ms.len() as f64;
    downsample(
        latencies_ms
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, (i + 1) as f64 / n))
            .collect(),
    )
}

fn smoothed(values: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let out: Vec<(f64, f64)> = values
        .chunks(SMOOTH_SAMPLES)
        .map(|c| {
            let n = c.len() as f64;
            let (t, v) = c.iter().fold((0.0, 0.0), |(t, v), p| (t + p.0, v + p.1));
            (t / n, v / n)
        })
        .collect();
    downsample(out)
}

/// One plot of the report: file name, caption and chart.
struct Plot {
    file: &'static str,
    caption: &'static str,
    title: String,
    x: Axis<'static>,
    y: Axis<'static>,
    data: Series,
}

/// Time on the x axis: from 0 to the last sample, ticks at round seconds.
const TIME_AXIS: Axis<'static> = Axis {
    label: "simulated time (s)",
    scale: Scale::Linear {
        zero: true,
        tight: true,
    },
};

/// A y axis from zero to a round number above the data.
const fn from_zero(label: &'static str) -> Axis<'static> {
    Axis {
        label,
        scale: Scale::Linear {
            zero: true,
            tight: false,
        },
    }
}

/// The report's plots, in page order; plots without data are left out.
fn plots(comparison: &ServeComparison, runs: &[PolicyRun]) -> Vec<Plot> {
    let name = |r: &PolicyRun| r.report.policy.clone();
    let title = |what: &str| format!("{what} — {}", comparison.scenario);
    let latency: Series = runs
        .iter()
        .filter(|r| !r.latencies_ms.is_empty())
        .map(|r| (name(r), cdf(&r.latencies_ms)))
        .collect();
    let series = |f: &dyn Fn(&crate::serve::metrics::TimelinePoint) -> f64, smooth: bool| {
        runs.iter()
            .map(|r| {
                let pts: Vec<(f64, f64)> = r.timeline.iter().map(|p| (p.t_s, f(p))).collect();
                (
                    name(r),
                    if smooth {
                        smoothed(&pts)
                    } else {
                        downsample(pts)
                    },
                )
            })
            .collect::<Series>()
    };
    let all = [
        Plot {
            file: "latency-cdf.svg",
            caption: "Cumulative distribution of the latency of completed measured requests; the latency axis is \
                      logarithmic, one decade per major tick.",
            title: title("Request latency CDF"),
            x: Axis {
                label: "request latency (log scale)",
                scale: Scale::Log10(LogLabels::Millis),
            },
            y: from_zero("fraction of completed requests"),
            data: latency,
        },
        Plot {
            file: "slo-violations.svg",
            caption: "Share of the requests finished (completed or dropped) between samples that missed their \
                      SLO, averaged over 10 samples.",
            title: title("SLO violations over time"),
            x: TIME_AXIS,
            y: from_zero("SLO violations (% of requests)"),
            data: series(&|p| p.slo_violation_rate * 100.0, true),
        },
        Plot {
            file: "active-gpus.svg",
            caption: "GPUs with at least one resident instance or training job.",
            title: title("Active GPUs over time"),
            x: TIME_AXIS,
            y: from_zero("active GPUs (count)"),
            data: series(&|p| f64::from(p.active_gpus), false),
        },
        Plot {
            file: "sm-shares.svg",
            caption: "Mean SM·time share in use per active GPU at each sample, averaged over 10 samples.",
            title: title("SM share in use per active GPU"),
            x: TIME_AXIS,
            y: from_zero("SM·time share in use (% of GPU)"),
            data: series(&|p| p.sm_used * 100.0, true),
        },
    ];
    all.into_iter()
        .filter(|p| p.data.iter().any(|(_, pts)| !pts.is_empty()))
        .collect()
}

fn write_file(path: PathBuf, text: &str, written: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    std::fs::write(&path, text).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    written.push(path);
    Ok(())
}

/// Writes `report.json`, the four SVG plots and `index.html` (the tables and the same plots inline, one
/// self-contained page) into `dir` (created if missing); returns the files written.
pub fn write_report(
    dir: &Path,
    comparison: &ServeComparison,
    runs: &[PolicyRun],
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    write_file(dir.join("report.json"), &to_json(comparison)?, &mut written)?;
    let mut figures = Vec::new();
    for plot in plots(comparison, runs) {
        let svg = render_svg(&Chart {
            title: &plot.title,
            x: plot.x,
            y: plot.y,
            legend_title: "policy",
            series: &plot.data,
        })?;
        write_file(dir.join(plot.file), &svg, &mut written)?;
        figures.push(Figure {
            file: plot.file.to_owned(),
            caption: plot.caption.to_owned(),
            svg,
        });
    }
    write_file(
        dir.join("index.html"),
        &render_html(comparison, &figures),
        &mut written,
    )?;
    Ok(written)
}
