//! `index.html` of a `sim serve` report: one self-contained page (inline CSS, inline SVG, no script) with the
//! comparison table, the per-function and training results, the profiler's choices and the plots.
//!
//! Every number is printed as the text table prints it, and the summary's cells also carry the exact JSON
//! value in `data-value` (as in `report.json`). All text from the scenario is escaped. The page holds no
//! timestamp: the same report gives the same bytes.

use crate::chart::escape;
use crate::serve::metrics::{FunctionReport, PolicyReport};
use crate::serve::report::ServeComparison;
use std::fmt::Write as _;

/// A plot placed on the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The SVG file written beside the page (linked from the caption).
    pub file: String,
    /// What the plot shows.
    pub caption: String,
    /// The SVG document, inlined as it is.
    pub svg: String,
}

const STYLE: &str = "\
body{margin:0;background:#f6f7f9;color:#1b1f24;font:15px/1.45 system-ui,-apple-system,'Segoe UI',\
'DejaVu Sans',Roboto,Helvetica,Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px;background:#ffffff}
h1{font-size:26px;margin:0 0 6px}
h2{font-size:20px;margin:36px 0 10px;padding-bottom:4px;border-bottom:1px solid #d0d7de}
p.meta{color:#57606a;margin:0 0 12px}
nav a{margin-right:14px}
code{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:0.92em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:14px;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;white-space:nowrap}
thead th{background:#eef1f4;text-align:center;vertical-align:bottom;white-space:normal}
tbody th{text-align:left;font-weight:600}
td{text-align:right;font-variant-numeric:tabular-nums}
td.t{text-align:left}
tbody tr:nth-child(even){background:#f8f9fb}
td.best{font-weight:700;background:#e6f4ea}
dl.notes{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;color:#444c56}
dl.notes dt{font-weight:600}
dl.notes dd{margin:0}
figure{margin:18px 0 28px}
figure svg{display:block;max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:13px;color:#57606a;margin-top:6px}
";

/// A cell of the summary: the text as the table prints it and the value as JSON prints it.
struct Cell {
    text: String,
    json: String,
}

fn json(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

fn count(v: u64) -> Cell {
    Cell {
        text: v.to_string(),
        json: json(v),
    }
}

fn fixed(v: f64, decimals: usize) -> Cell {
    Cell {
        text: format!("{v:.decimals$}"),
        json: json(v),
    }
}

fn percent(rate: f64) -> Cell {
    Cell {
        text: format!("{:.2}%", rate * 100.0),
        json: json(rate),
    }
}

/// Which value of a column is best, for highlighting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Best {
    Low,
    High,
    None,
}

/// A summary column: heading, explanation, JSON field, value and which end is better.
struct Column {
    head: &'static str,
    note: &'static str,
    field: &'static str,
    cell: fn(&PolicyReport) -> Cell,
    best: Best,
}

/// The figures of the text table (and p95), one row per policy.
const COLUMNS: &[Column] = &[
    Column {
        head: "SLO violations",
        note: "measured requests that missed their SLO: late, dropped, or still waiting past it at the end",
        field: "slo_violation_rate",
        cell: |p| percent(p.slo_violation_rate),
        best: Best::Low,
    },
    Column {
        head: "p50 ms",
        note: "median latency of completed requests, milliseconds",
        field: "p50_ms",
        cell: |p| fixed(p.p50_ms, 1),
        best: Best::Low,
    },
    Column {
        head: "p95 ms",
        note: "95th percentile latency, milliseconds",
        field: "p95_ms",
        cell: |p| fixed(p.p95_ms, 1),
        best: Best::Low,
    },
    Column {
        head: "p99 ms",
        note: "99th percentile latency, milliseconds",
        field: "p99_ms",
        cell: |p| fixed(p.p99_ms, 1),
        best: Best::Low,
    },
    Column {
        head: "inference rps",
        note: "completed requests per second of measured time",
        field: "inference_throughput_rps",
        cell: |p| fixed(p.inference_throughput_rps, 1),
        best: Best::High,
    },
    Column {
        head: "goodput rps",
        note: "requests per second completed within their SLO",
        field: "goodput_rps",
        cell: |p| fixed(p.goodput_rps, 1),
        best: Best::High,
    },
    Column {
        head: "training × alone",
        note: "training progress relative to running alone on whole GPUs (1.0 = alone)",
        field: "training_throughput",
        cell: |p| fixed(p.training_throughput, 3),
        best: Best::High,
    },
    Column {
        head: "GPU-hours",
        note: "∫ active GPUs dt",
        field: "gpu_hours",
        cell: |p| fixed(p.gpu_hours, 2),
        best: Best::Low,
    },
    Column {
        head: "peak GPUs",
        note: "most GPUs active at once",
        field: "peak_active_gpus",
        cell: |p| count(u64::from(p.peak_active_gpus)),
        best: Best::Low,
    },
    Column {
        head: "SM frag",
        note: "time-mean of the unreserved SM fraction of active GPUs",
        field: "mean_sm_frag",
        cell: |p| fixed(p.mean_sm_frag, 3),
        best: Best::Low,
    },
    Column {
        head: "mem frag",
        note: "time-mean of the unused memory fraction of active GPUs",
        field: "mean_mem_frag",
        cell: |p| fixed(p.mean_mem_frag, 3),
        best: Best::Low,
    },
];

/// Counts, in a second table so that neither needs scrolling on a laptop screen.
const COUNTS: &[Column] = &[
    Column {
        head: "cold starts",
        note: "instances started after time zero (each paid a model load)",
        field: "cold_starts",
        cell: |p| count(p.cold_starts),
        best: Best::None,
    },
    Column {
        head: "vertical adj.",
        note: "grant changes by vertical controllers plus quota changes by hybrid scalers",
        field: "vertical_adjustments",
        cell: |p| count(p.vertical_adjustments),
        best: Best::None,
    },
    Column {
        head: "requests",
        note: "measured requests (arrived after the warm-up)",
        field: "requests",
        cell: |p| count(p.requests),
        best: Best::None,
    },
    Column {
        head: "completed",
        note: "measured requests completed",
        field: "completed",
        cell: |p| count(p.completed),
        best: Best::None,
    },
    Column {
        head: "dropped",
        note: "measured requests dropped after waiting past the timeout",
        field: "dropped",
        cell: |p| count(p.dropped),
        best: Best::Low,
    },
    Column {
        head: "unschedulable",
        note: "placement attempts that found no room",
        field: "unschedulable",
        cell: |p| count(p.unschedulable),
        best: Best::None,
    },
    Column {
        head: "events",
        note: "events the simulator processed",
        field: "events",
        cell: |p| count(p.events),
        best: Best::None,
    },
];

/// Indices of the rows holding the best value of a column (none when all rows are equal).
fn best_rows(values: &[f64], best: Best) -> Vec<bool> {
    let pick = match best {
        Best::None => return vec![false; values.len()],
        Best::Low => values.iter().copied().fold(f64::INFINITY, f64::min),
        Best::High => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    };
    let all_equal = values.iter().all(|&v| v == values[0]);
    values.iter().map(|&v| !all_equal && v == pick).collect()
}

fn policy_table(out: &mut String, id: &str, columns: &[Column], policies: &[PolicyReport]) {
    let _ = write!(
        out,
        "<div class=\"scroll\">\n<table id=\"{id}\">\n<thead><tr><th scope=\"col\">policy</th>"
    );
    for c in columns {
        let _ = write!(
            out,
            "<th scope=\"col\" title=\"{}\">{}</th>",
            escape(c.note),
            escape(c.head)
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    let cells: Vec<Vec<Cell>> = policies
        .iter()
        .map(|p| columns.iter().map(|c| (c.cell)(p)).collect())
        .collect();
    let best: Vec<Vec<bool>> = columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            // Compare the printed values, so that equal-looking cells are highlighted alike.
            let values: Vec<f64> = cells
                .iter()
                .map(|row| {
                    row[j]
                        .text
                        .trim_end_matches('%')
                        .parse()
                        .unwrap_or(f64::NAN)
                })
                .collect();
            best_rows(&values, c.best)
        })
        .collect();
    for (i, (p, row)) in policies.iter().zip(&cells).enumerate() {
        let _ = write!(
            out,
            "<tr data-policy=\"{}\"><th scope=\"row\">{}</th>",
            escape(&p.policy),
            escape(&p.policy)
        );
        for (j, (c, cell)) in columns.iter().zip(row).enumerate() {
            let class = if best[j][i] { " class=\"best\"" } else { "" };
            let _ = write!(
                out,
                "<td{class} data-field=\"{}\" data-value=\"{}\">{}</td>",
                c.field,
                escape(&cell.json),
                escape(&cell.text)
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
}

fn summary_tables(out: &mut String, policies: &[PolicyReport]) {
    policy_table(out, "policies", COLUMNS, policies);
    policy_table(out, "counts", COUNTS, policies);
    out.push_str("<dl class=\"notes\">\n");
    for c in COLUMNS.iter().chain(COUNTS) {
        let _ = writeln!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            escape(c.head),
            escape(c.note)
        );
    }
    out.push_str(
        "</dl>\n<p class=\"meta\">Highlighted: the best value of a column, where one is better and the \
         policies differ.</p>\n",
    );
}

fn function_table(out: &mut String, policies: &[PolicyReport]) {
    let names: Vec<&str> = policies
        .first()
        .map(|p| p.functions.iter().map(|f| f.name.as_str()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return;
    }
    out.push_str("<h2 id=\"functions\">Per function</h2>\n<div class=\"scroll\">\n<table id=\"functions-table\">\n");
    out.push_str(
        "<thead><tr><th scope=\"col\">function</th><th scope=\"col\">policy</th><th scope=\"col\">requests</th>\
         <th scope=\"col\">completed</th><th scope=\"col\">dropped</th><th scope=\"col\">SLO violations</th>\
         <th scope=\"col\">p50 ms</th><th scope=\"col\">p99 ms</th><th scope=\"col\">throughput rps</th></tr></thead>\n<tbody>\n",
    );
    for (k, name) in names.iter().enumerate() {
        let rows: Vec<(&str, &FunctionReport)> = policies
            .iter()
            .filter_map(|p| p.functions.get(k).map(|f| (p.policy.as_str(), f)))
            .collect();
        for (i, (policy, f)) in rows.iter().enumerate() {
            out.push_str("<tr>");
            if i == 0 {
                let _ = write!(
                    out,
                    "<th scope=\"rowgroup\" rowspan=\"{}\">{}</th>",
                    rows.len(),
                    escape(name)
                );
            }
            let _ = writeln!(
                out,
                "<th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.1}</td>\
                 <td>{:.1}</td><td>{:.1}</td></tr>",
                escape(policy),
                f.requests,
                f.completed,
                f.dropped,
                f.slo_violation_rate * 100.0,
                f.p50_ms,
                f.p99_ms,
                f.throughput_rps
            );
        }
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
}

fn training_table(out: &mut String, c: &ServeComparison, functions: usize) {
    let jobs = c
        .policies
        .iter()
        .map(|p| p.training_jobs.len())
        .max()
        .unwrap_or(0);
    if jobs == 0 {
        return;
    }
    out.push_str(
        "<h2 id=\"training\">Training jobs</h2>\n<p>Progress relative to running alone on whole GPUs over the \
         job's lifetime (1.000 = alone).</p>\n<div class=\"scroll\">\n<table id=\"training-table\">\n\
         <thead><tr><th scope=\"col\">job</th>",
    );
    for p in &c.policies {
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape(&p.policy));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for j in 0..jobs {
        let name = c
            .profiles
            .get(functions + j)
            .map_or_else(|| format!("job {}", j + 1), |p| p.name.clone());
        let _ = write!(out, "<tr><th scope=\"row\">{}</th>", escape(&name));
        for p in &c.policies {
            match p.training_jobs.get(j) {
                Some(v) => {
                    let _ = write!(out, "<td>{v:.3}</td>");
                }
                None => out.push_str("<td>—</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
}

fn profile_table(out: &mut String, c: &ServeComparison, functions: usize) {
    if c.profiles.is_empty() {
        return;
    }
    out.push_str(
        "<h2 id=\"profiles\">Profiles</h2>\n<p>The quotas every policy starts from: profiled once per function \
         and job, or given in the scenario.</p>\n<div class=\"scroll\">\n<table id=\"profiles-table\">\n\
         <thead><tr><th scope=\"col\">name</th><th scope=\"col\">kind</th><th scope=\"col\">model</th>\
         <th scope=\"col\">batch</th><th scope=\"col\">SM request</th><th scope=\"col\">SM limit</th>\
         <th scope=\"col\">capacity rps / instance</th><th scope=\"col\">points measured</th>\
         <th scope=\"col\">quota</th></tr></thead>\n<tbody>\n",
    );
    for (i, p) in c.profiles.iter().enumerate() {
        let inference = i < functions;
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"t\">{}</td><td class=\"t\">{}</td><td>{}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{}</td><td>{}</td><td class=\"t\">{}</td></tr>",
            escape(&p.name),
            if inference { "inference" } else { "training" },
            escape(&p.model),
            if inference {
                p.batch.to_string()
            } else {
                "—".to_owned()
            },
            p.sm_request,
            p.sm_limit,
            if inference {
                format!("{:.1}", p.capacity_rps)
            } else {
                "—".to_owned()
            },
            p.measured,
            if p.configured {
                "configured"
            } else {
                "profiled"
            }
        );
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
}

/// The report page.
pub fn render_html(c: &ServeComparison, figures: &[Figure]) -> String {
    let functions = c
        .policies
        .first()
        .map_or(c.profiles.len(), |p| p.functions.len());
    let scenario = escape(&c.scenario);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        out,
        "<meta name=\"generator\" content=\"dilu-sim {}\">",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "<title>Serving simulation: {scenario}</title>");
    let _ = write!(out, "<style>\n{STYLE}</style>\n</head>\n<body>\n<main>\n");
    let _ = writeln!(out, "<h1>Serving simulation: {scenario}</h1>");
    let policy_names: Vec<String> = c.policies.iter().map(|p| escape(&p.policy)).collect();
    let _ = writeln!(
        out,
        "<p class=\"meta\">Seed {}, {} s simulated, {} function(s), {} training job(s); policies: {}. Written by \
         <code>dilu sim serve --report</code>; the figures are also in <a href=\"report.json\">report.json</a>.</p>",
        c.seed,
        c.duration_s,
        functions,
        c.profiles.len().saturating_sub(functions),
        policy_names.join(", ")
    );
    out.push_str("<nav><a href=\"#summary\">Policies</a><a href=\"#plots\">Plots</a>");
    if functions > 0 && !c.policies.is_empty() {
        out.push_str("<a href=\"#functions\">Per function</a>");
    }
    if c.policies.iter().any(|p| !p.training_jobs.is_empty()) {
        out.push_str("<a href=\"#training\">Training jobs</a>");
    }
    if !c.profiles.is_empty() {
        out.push_str("<a href=\"#profiles\">Profiles</a>");
    }
    out.push_str("</nav>\n<h2 id=\"summary\">Policies</h2>\n");
    summary_tables(&mut out, &c.policies);
    out.push_str("<h2 id=\"plots\">Plots</h2>\n");
    if figures.is_empty() {
        out.push_str("<p>No data to plot.</p>\n");
    }
    for f in figures {
        out.push_str("<figure>\n");
        out.push_str(&f.svg);
        if !f.svg.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "<figcaption>{} (<a href=\"{}\">{}</a>)</figcaption>\n</figure>",
            escape(&f.caption),
            escape(&f.file),
            escape(&f.file)
        );
    }
    function_table(&mut out, &c.policies);
    training_table(&mut out, c, functions);
    profile_table(&mut out, c, functions);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// Elements HTML writes without an end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// A well-formedness check of the markup this module and [`crate::chart`] write: every start tag has its
/// end tag in nesting order (void and self-closed `…/>` elements aside), text holds no raw `<`, and every
/// `&` starts one of the entities [`escape`] writes. Returns the first problem found.
///
/// # Errors
///
/// A message naming the problem and its byte offset.
pub fn check_markup(text: &str) -> Result<(), String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = text;
    let at = |rest: &str| text.len() - rest.len();
    let check_text = |chunk: &str, offset: usize| -> Result<(), String> {
        for (i, _) in chunk.match_indices('&') {
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .iter()
                .any(|e| chunk[i..].starts_with(e))
            {
                return Err(format!("unescaped '&' at byte {}", offset + i));
            }
        }
        Ok(())
    };
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open], at(rest))?;
        rest = &rest[open..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            let end = comment
                .find("-->")
                .ok_or_else(|| format!("unclosed comment at byte {}", at(rest)))?;
            rest = &comment[end + 3..];
            continue;
        }
        let end = rest
            .find('>')
            .ok_or_else(|| format!("unclosed tag at byte {}", at(rest)))?;
        let tag = &rest[1..end];
        if tag.contains('<') {
            return Err(format!("'<' inside a tag at byte {}", at(rest)));
        }
        let offset = at(rest);
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => {
                    return Err(format!("</{name}> at byte {offset} closes <{open}>"));
                }
                None => return Err(format!("</{name}> at byte {offset} closes nothing")),
            }
            continue;
        }
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = &tag[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad tag name '{name}' at byte {offset}"));
        }
        check_text(&tag[name_end..], offset)?;
        if tag.ends_with('/') || VOID.contains(&name) {
            continue;
        }
        stack.push(name);
        if name == "style" || name == "script" {
            let close = format!("</{name}>");
            let end = rest
                .find(&close)
                .ok_or_else(|| format!("<{name}> at byte {offset} is never closed"))?;
            rest = &rest[end..];
        }
    }
    check_text(rest, at(rest))?;
    match stack.last() {
        Some(open) => Err(format!("<{open}> is never closed")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str) -> PolicyReport {
        PolicyReport {
            policy: name.to_owned(),
            requests: 100,
            completed: 98,
            dropped: 1,
            slo_violation_rate: 0.0312,
            p50_ms: 41.06,
            p95_ms: 90.0,
            p99_ms: 152.46,
            inference_throughput_rps: 409.7,
            goodput_rps: 396.9,
            training_throughput: 0.7072,
            gpu_hours: 0.125,
            peak_active_gpus: 4,
            mean_sm_frag: 0.375,
            mean_mem_frag: 0.528,
            cold_starts: 0,
            vertical_adjustments: 4,
            unschedulable: 0,
            events: 1000,
            functions: vec![FunctionReport {
                name: "f<1>".to_owned(),
                requests: 100,
                completed: 98,
                dropped: 1,
                slo_violation_rate: 0.0312,
                p50_ms: 41.06,
                p99_ms: 152.46,
                throughput_rps: 409.7,
            }],
            training_jobs: vec![0.7072],
        }
    }

    #[test]
    fn text_is_escaped_and_the_page_is_well_formed() {
        let c = ServeComparison {
            scenario: "a<b> & \"c\" 'd'".to_owned(),
            seed: 7,
            duration_s: 120.0,
            profiles: Vec::new(),
            policies: vec![policy("x<script>alert(1)</script>"), policy("plain")],
        };
        let figure = Figure {
            file: "a&b.svg".to_owned(),
            caption: "1 < 2".to_owned(),
            svg: "<svg xmlns=\"http://www.w3.org/2000/svg\"><title>t &amp; u</title><rect/></svg>"
                .to_owned(),
        };
        let page = render_html(&c, std::slice::from_ref(&figure));
        check_markup(&page).unwrap();
        assert!(!page.contains("<script"));
        assert!(page.contains("x&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains(
            "<title>Serving simulation: a&lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;</title>"
        ));
        assert!(page.contains("<th scope=\"rowgroup\" rowspan=\"2\">f&lt;1&gt;</th>"));
        assert!(page.contains("1 &lt; 2 (<a href=\"a&amp;b.svg\">a&amp;b.svg</a>)"));
        // Same figures as the text table, exact JSON values alongside.
        assert!(page.contains(
            "<td data-field=\"slo_violation_rate\" data-value=\"0.0312\">3.12%</td><td data-field=\"p50_ms\" data-value=\"41.06\">41.1</td>"
        ));
        assert_eq!(page, render_html(&c, std::slice::from_ref(&figure)));
    }

    #[test]
    fn the_markup_check_finds_problems() {
        assert!(check_markup("<p><b>x</b></p><br><svg><rect/></svg>").is_ok());
        assert!(
            check_markup("<p><b>x</p></b>")
                .unwrap_err()
                .contains("closes <b>")
        );
        assert!(
            check_markup("<p>x")
                .unwrap_err()
                .contains("<p> is never closed")
        );
        assert!(
            check_markup("<p>a & b</p>")
                .unwrap_err()
                .contains("unescaped '&'")
        );
        assert!(
            check_markup("<p title=\"a<b\">x</p>")
                .unwrap_err()
                .contains("'<' inside a tag")
        );
        assert!(check_markup("<style>a>b{}</style><p>&amp;</p>").is_ok());
    }

    #[test]
    fn best_rows_highlight_only_differing_columns() {
        assert_eq!(best_rows(&[3.0, 1.0, 1.0], Best::Low), [false, true, true]);
        assert_eq!(best_rows(&[3.0, 1.0], Best::High), [true, false]);
        assert_eq!(best_rows(&[2.0, 2.0], Best::Low), [false, false]);
        assert_eq!(best_rows(&[3.0, 1.0], Best::None), [false, false]);
    }
}
