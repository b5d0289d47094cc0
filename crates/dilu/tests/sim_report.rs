//! `dilu sim serve --report DIR`: the files it writes, and `index.html` against the table and JSON printed on
//! stdout, the SVG files, a logarithmic latency axis, well-formed markup and byte-identical reruns.

use dilu_sim::serve::html::check_markup;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [&str; 6] = [
    "report.json",
    "latency-cdf.svg",
    "slo-violations.svg",
    "active-gpus.svg",
    "sm-shares.svg",
    "index.html",
];

/// The shipped inference–training scenario, shortened to 120 s (60 s measured): 7 policies, latencies from
/// milliseconds to hundreds of them (fast-gshare's tail).
fn run_report(dir: &Path, format: &str) -> String {
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios/colocation-inference-training.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_dilu"))
        .args(["sim", "serve", "--scenario"])
        .arg(&scenario)
        .args(["--duration-s", "120", "--format", format, "--report"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dilu sim serve failed: {stderr}");
    for f in FILES {
        assert!(
            stderr.contains(&format!("wrote {}", dir.join(f).display())),
            "{f} not reported written: {stderr}"
        );
    }
    String::from_utf8(out.stdout).unwrap()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The value of attribute `name` in a tag's text.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

fn num(tag: &str, name: &str) -> f64 {
    attr(tag, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name} in {tag}"))
}

/// What follows the tag `tag` (a slice of `html`, as [`tags`] returns it).
fn after<'a>(html: &'a str, tag: &str) -> &'a str {
    &html[tag.as_ptr() as usize - html.as_ptr() as usize + tag.len() + 1..]
}

/// The text right after the tag `tag` (up to the next `<`).
fn text_after<'a>(html: &'a str, tag: &str) -> &'a str {
    let rest = after(html, tag);
    &rest[..rest.find('<').unwrap()]
}

/// Every start tag of `element`, as the text between `<` and `>`.
fn tags<'a>(html: &'a str, element: &str) -> Vec<&'a str> {
    let open = format!("<{element} ");
    html.match_indices(&open)
        .map(|(i, _)| &html[i + 1..i + html[i..].find('>').unwrap()])
        .collect()
}

/// Per policy: field → (text, JSON value) of the summary cells in the tables `ids`.
fn summary_cells(html: &str, ids: &[&str]) -> BTreeMap<String, BTreeMap<String, (String, String)>> {
    let mut rows = BTreeMap::new();
    for id in ids {
        let start = html
            .find(&format!("<table id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no table {id}"));
        let table = &html[start..start + html[start..].find("</table>").unwrap()];
        for row in tags(table, "tr") {
            let Some(policy) = attr(row, "data-policy") else {
                continue;
            };
            let row_start = row.as_ptr() as usize - table.as_ptr() as usize;
            let row_text = &table[row_start..row_start + table[row_start..].find("</tr>").unwrap()];
            let cells: &mut BTreeMap<String, (String, String)> =
                rows.entry(policy.to_owned()).or_default();
            for td in tags(row_text, "td") {
                let field = attr(td, "data-field").expect("data-field").to_owned();
                let value = attr(td, "data-value").expect("data-value").to_owned();
                cells.insert(field, (text_after(row_text, td).to_owned(), value));
            }
        }
    }
    rows
}

/// Same scenario and seed: the same files, byte for byte, whatever the stdout format; `index.html` holds the
/// text table's figures and the JSON's values for every policy, the four plots inline, and a latency CDF on
/// a logarithmic axis.
#[test]
fn serve_report_html_matches_the_table_and_json_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let table = run_report(&a, "table");
    let json: Value = serde_json::from_str(&run_report(&b, "json")).unwrap();
    for f in FILES {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
    let html = read(&a, "index.html");
    check_markup(&html).unwrap_or_else(|e| panic!("index.html: {e}"));
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.contains("<style>") && !html.contains("<script") && !html.contains("<link"));
    assert!(html.contains("<title>Serving simulation: colocation-inference-training</title>"));

    // Every SVG file is inlined as it is.
    assert_eq!(html.matches("<svg ").count(), 4);
    for f in &FILES[1..5] {
        let svg = read(&a, f);
        check_markup(&svg).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(html.contains(&svg), "{f} is not inlined in index.html");
        assert!(html.contains(&format!("<a href=\"{f}\">{f}</a>")));
    }

    // The policies' rows: the text table's figures, in its column order, and the JSON's exact values.
    let cells = summary_cells(&html, &["policies", "counts"]);
    let policies = json["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 7, "the scenario lists seven policies");
    assert_eq!(cells.len(), policies.len());
    let table_fields = [
        "slo_violation_rate",
        "p50_ms",
        "p99_ms",
        "inference_throughput_rps",
        "goodput_rps",
        "training_throughput",
        "gpu_hours",
        "peak_active_gpus",
        "mean_sm_frag",
        "mean_mem_frag",
        "cold_starts",
        "vertical_adjustments",
    ];
    for p in policies {
        let name = p["policy"].as_str().unwrap();
        let row = &cells[name];
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no table row for {name}:\n{table}"));
        let printed: Vec<&str> = line.split_whitespace().skip(1).collect();
        let html_texts: Vec<&str> = table_fields.iter().map(|f| row[*f].0.as_str()).collect();
        assert_eq!(html_texts, printed, "{name}: HTML cells vs the table row");
        for (field, value) in p.as_object().unwrap() {
            if value.is_number() {
                let (_, cell) = row
                    .get(field)
                    .unwrap_or_else(|| panic!("{name}: no cell for {field}"));
                assert_eq!(
                    &serde_json::from_str::<Value>(cell).unwrap(),
                    value,
                    "{name}.{field}"
                );
            }
        }
        for f in p["functions"].as_array().unwrap() {
            let function = f["name"].as_str().unwrap();
            assert!(html.contains(&format!(
                "<th scope=\"row\">{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.1}</td>",
                f["requests"],
                f["completed"],
                f["dropped"],
                f["slo_violation_rate"].as_f64().unwrap() * 100.0,
                f["p50_ms"].as_f64().unwrap()
            )), "{name}/{function}: no per-function row");
        }
    }

    // The latency CDF: decades labelled from 10 ms up to the slowest request's, equally spaced.
    let cdf = read(&a, "latency-cdf.svg");
    for label in [
        "request latency (log scale)",
        "fraction of completed requests",
        "Request latency CDF",
    ] {
        assert!(cdf.contains(label), "{label}");
    }
    let ticks: Vec<(f64, &str)> = tags(&cdf, "text")
        .into_iter()
        .filter(|t| t.starts_with("text class=\"x-tick\""))
        .map(|t| (num(t, "x"), text_after(&cdf, t)))
        .collect();
    let labels: Vec<&str> = ticks.iter().map(|t| t.1).collect();
    let decades = ["10 ms", "100 ms", "1 s", "10 s"];
    assert!(
        labels.len() >= 3 && labels[..] == decades[..labels.len()],
        "{ticks:?}"
    );
    let decade = ticks[1].0 - ticks[0].0;
    assert!(decade > 100.0);
    for w in ticks.windows(2) {
        assert!((w[1].0 - w[0].0 - decade).abs() < 0.11, "{ticks:?}");
    }
    let x_of = |ms: f64| ticks[0].0 + decade * (ms / 10.0).log10();
    // Each policy's curve crosses half of the requests at its median, where the log scale puts it.
    let area = tags(&cdf, "rect")
        .into_iter()
        .find(|t| t.contains("class=\"plot-area\""))
        .unwrap();
    let (top, height) = (num(area, "y"), num(area, "height"));
    let y_half = top + height / 2.0;
    for p in policies {
        let name = p["policy"].as_str().unwrap();
        let line = tags(&cdf, "polyline")
            .into_iter()
            .find(|t| after(&cdf, t).starts_with(&format!("<title>{name}</title>")))
            .unwrap_or_else(|| panic!("no curve for {name}"));
        let points: Vec<(f64, f64)> = attr(line, "points")
            .unwrap()
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        let crossing = points
            .windows(2)
            .find(|w| w[0].1 >= y_half && w[1].1 <= y_half)
            .map(|w| w[1].0)
            .unwrap();
        let p50 = p["p50_ms"].as_f64().unwrap();
        assert!(
            (crossing - x_of(p50)).abs() < 1.5,
            "{name}: the curve reaches 0.5 at x = {crossing}, the p50 {p50} ms lies at {}",
            x_of(p50)
        );
    }
}
