//! The observability configuration in `deploy/` (docs/observability.md): the Prometheus rules
//! (`deploy/prometheus/dilu-rules.yaml`) pass `promtool check rules` and their unit tests
//! (`dilu-rules_test.yaml`); the Grafana dashboard (`deploy/grafana/dilu-dashboard.json`) is well formed, its
//! PromQL parses, and it type-checks against Grafana's published dashboard schema (the TypeScript types of the
//! `@grafana/schema` npm package, with `tsc`); and every metric and label the rules, their tests and the
//! dashboard name is one a live `dilu up` exports, while a real Prometheus scraping that `dilu up` with the
//! rules loaded answers every dashboard query, records every rule, and fires no alert on a healthy platform.
//!
//! Tools: `promtool` and `prometheus` (Debian's prometheus package), and `tsc` with `@grafana/schema` in
//! `$DILU_GRAFANA_SCHEMA` (default `~/.cache/dilu/grafana-schema`); `.ci/run` installs them. In CI a missing
//! tool fails the test; elsewhere it is a loud skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::platform::{UpProc, ensure_models};

const RULES: &str = "deploy/prometheus/dilu-rules.yaml";
const RULES_TEST: &str = "deploy/prometheus/dilu-rules_test.yaml";
const DASHBOARD: &str = "deploy/grafana/dilu-dashboard.json";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Fails in CI, skips loudly elsewhere.
fn missing(what: &str) {
    let note = format!("{what} (.ci/run installs it)");
    if in_ci() {
        panic!("{note}");
    }
    eprintln!("\n*** SKIPPING: {note} ***\n");
}

/// `name` on PATH, or `None` after [`missing`].
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(&format!("{name} not found on PATH"));
    }
    found
}

/// Runs `cmd`; panics with its output unless it succeeds; returns stdout and stderr.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

// ---------------------------------------------------------------------------------------------------------
// The rules file and the dashboard, read as data.

struct Rule {
    /// `record` or `alert` name.
    name: String,
    recorded: bool,
    expr: String,
    /// Annotation texts (alerts).
    annotations: Vec<String>,
}

fn rules() -> Vec<Rule> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(RULES)).expect("rules YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let (name, recorded) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(r), None) => (r, true),
                (None, Some(a)) => (a, false),
                _ => panic!("a rule is a record or an alert: {rule:?}"),
            };
            let annotations = rule["annotations"]
                .as_mapping()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if !recorded {
                let labels = &rule["labels"];
                assert!(
                    matches!(
                        labels["severity"].as_str(),
                        Some("critical" | "warning" | "info")
                    ),
                    "{name}: severity label critical, warning or info"
                );
                for key in ["summary", "description"] {
                    assert!(
                        rule["annotations"][key].as_str().is_some(),
                        "{name}: annotation {key}"
                    );
                }
            }
            out.push(Rule {
                name: name.to_string(),
                recorded,
                expr: rule["expr"].as_str().expect("expr").to_string(),
                annotations,
            });
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON")
}

/// A PromQL query of the dashboard: where it is, and its text as written (with template variables).
struct Query {
    place: String,
    expr: String,
}

/// Every query: panel targets, and template variables' `label_values(metric, label)` as
/// `group by (label) (metric)`.
fn dashboard_queries(d: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                place: format!(
                    "panel {:?} ({}) target {}",
                    p["title"].as_str().unwrap_or(""),
                    p["id"],
                    t["refId"].as_str().unwrap_or("?")
                ),
                expr: t["expr"].as_str().expect("target expr").to_string(),
            });
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: label_values(metric, label)", v["name"]));
        let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
        out.push(Query {
            place: format!("variable {}", v["name"]),
            expr: format!("group by ({}) ({})", label.trim(), metric.trim()),
        });
    }
    out
}

/// Names of the dashboard's template variables.
fn variables(d: &Value) -> BTreeSet<String> {
    d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| v["name"].as_str().expect("variable name").to_string())
        .collect()
}

/// `expr` with template variables as Grafana would fill them for "All" (`.*`) and `$__rate_interval` as
/// `rate_interval`; panics on a variable the dashboard does not define.
fn substitute(expr: &str, vars: &BTreeSet<String>, rate_interval: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval);
    for v in vars {
        s = s
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    assert!(!s.contains('$'), "undefined template variable in {expr}");
    s
}

// ---------------------------------------------------------------------------------------------------------
// A small PromQL scanner: which metrics, matcher labels and grouping labels an expression names.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn lex(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                if i < chars.len() {
                    s.push(chars[i]);
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c == '[' {
            // A range or subquery: durations only.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers (1e-6, 0.5) and offsets' durations (5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len()
                && (chars[i] == '-' || chars[i] == '+')
                && chars[i - 1].eq_ignore_ascii_case(&'e')
            {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "Inf",
    "NaN",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

#[derive(Default, Debug)]
struct Refs {
    /// Metric (or recorded series) name -> labels its matchers name.
    metrics: BTreeMap<String, BTreeSet<String>>,
    /// Labels named in by/without/on/ignoring/group_left/group_right, and label_replace's source label.
    labels: BTreeSet<String>,
    /// Labels label_replace creates.
    created: BTreeSet<String>,
}

/// An open parenthesis: the function it calls (if any), the argument being read, its string arguments by
/// index.
type Frame = (Option<String>, usize, Vec<(usize, String)>);

fn scan(expr: &str, refs: &mut Refs) {
    let toks = lex(expr);
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let next = toks.get(i + 1);
        match &toks[i] {
            Tok::Ident(id) if GROUPING.contains(&id.as_str()) => {
                i += 1;
                if toks.get(i) == Some(&Tok::Punct('(')) {
                    i += 1;
                    while let Some(Tok::Ident(label)) = toks.get(i) {
                        refs.labels.insert(label.clone());
                        i += 1;
                        if toks.get(i) == Some(&Tok::Punct(',')) {
                            i += 1;
                        }
                    }
                    assert_eq!(toks.get(i), Some(&Tok::Punct(')')), "label list in {expr}");
                    i += 1;
                }
                continue;
            }
            Tok::Ident(id) if next == Some(&Tok::Punct('(')) => {
                frames.push((Some(id.clone()), 0, Vec::new()));
                i += 2;
                continue;
            }
            Tok::Ident(id) if KEYWORDS.contains(&id.as_str()) => {}
            Tok::Ident(id) => {
                let labels = refs.metrics.entry(id.clone()).or_default();
                if next == Some(&Tok::Punct('{')) {
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Punct('}') {
                        if let Tok::Ident(label) = &toks[i] {
                            labels.insert(label.clone());
                        }
                        i += 1;
                    }
                }
            }
            Tok::Punct('{') => panic!("a selector without a metric name in {expr}"),
            Tok::Punct('(') => frames.push((None, 0, Vec::new())),
            Tok::Punct(',') => {
                if let Some(f) = frames.last_mut() {
                    f.1 += 1;
                }
            }
            Tok::Punct(')') => {
                let (func, _, strs) = frames.pop().expect("balanced parentheses");
                if func.as_deref() == Some("label_replace") {
                    for (arg, s) in strs {
                        match arg {
                            1 => {
                                refs.created.insert(s);
                            }
                            3 => {
                                refs.labels.insert(s);
                            }
                            _ => {}
                        }
                    }
                }
            }
            Tok::Str(s) => {
                if let Some(f) = frames.last_mut() {
                    let arg = f.1;
                    f.2.push((arg, s.clone()));
                }
            }
            Tok::Punct(_) => {}
        }
        i += 1;
    }
    assert!(frames.is_empty(), "unbalanced parentheses in {expr}");
}

/// Labels `{{ $labels.X }}` of an annotation template.
fn template_labels(text: &str) -> Vec<String> {
    text.split("$labels.")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn the_promql_scanner_finds_metrics_and_labels() {
    let mut refs = Refs::default();
    scan(
        "label_replace(increase(a_total{x=\"1\",y=~\"(.+)-[0-9]+\"}[15m]) > 2 and on (z) b:rec, \"function\", \
         \"$1\", \"instance\", \"(.+)-[0-9]+\") / on (device) group_left () max by (device, le) (c_bucket < Inf) \
         > 1e-6",
        &mut refs,
    );
    let names: Vec<&str> = refs.metrics.keys().map(String::as_str).collect();
    assert_eq!(names, ["a_total", "b:rec", "c_bucket"]);
    assert_eq!(
        refs.metrics["a_total"].iter().collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(
        refs.labels.iter().collect::<Vec<_>>(),
        ["device", "instance", "le", "z"]
    );
    assert_eq!(refs.created.iter().collect::<Vec<_>>(), ["function"]);
}

// ---------------------------------------------------------------------------------------------------------
// Rules: promtool.

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let rules = rules();
    let alerts: BTreeSet<&str> = rules
        .iter()
        .filter(|r| !r.recorded)
        .map(|r| r.name.as_str())
        .collect();
    for wanted in [
        "DiluInstanceCrashLooping",
        "DiluFunctionSLOViolationRateHigh",
        "DiluDeviceRequestsOvercommitted",
        "DiluFunctionNoReadyInstance",
        "DiluFunctionHigh5xxRatio",
    ] {
        assert!(alerts.contains(wanted), "alert {wanted} missing");
    }
    // Every alert has a unit test that shows it firing.
    let tests = read(RULES_TEST);
    for alert in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{RULES_TEST} never shows {alert} firing"
        );
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(repo(RULES)),
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(repo(RULES_TEST)),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---------------------------------------------------------------------------------------------------------
// The dashboard: structure, PromQL, Grafana's schema.

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| (1..=40).contains(&u.len()))
    );
    assert!(d["title"].as_str().is_some());
    let vars = variables(&d);
    for v in ["datasource", "function", "device"] {
        assert!(vars.contains(v), "template variable {v}");
    }
    let list = d["templating"]["list"].as_array().unwrap();
    let ds = list.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for v in list.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], datasource, "variable {}", v["name"]);
    }

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    let mut kinds = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("panel title").to_string();
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} a whole number"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), [x, y, w, h]));
        let kind = p["type"].as_str().expect("panel type");
        kinds.insert(kind.to_string());
        if kind == "row" {
            assert_eq!(p["collapsed"], false, "{title}: rows are expanded");
            if let Some(repeat) = p["repeat"].as_str() {
                assert!(vars.contains(repeat), "{title}: repeat {repeat}");
            }
            continue;
        }
        assert!(
            ["timeseries", "stat", "table"].contains(&kind),
            "{title}: panel type {kind}"
        );
        assert_eq!(p["datasource"], datasource, "{title}: datasource");
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title}: description"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"], datasource, "{title}: target datasource");
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            let expr = t["expr"].as_str().expect("expr");
            substitute(expr, &vars, "1m");
            for legend in t["legendFormat"].as_str().into_iter() {
                assert!(!legend.contains('$'), "{title}: legend {legend}");
            }
        }
        // Titles may use variables; they must exist.
        substitute(&title, &vars, "1m");
    }
    assert!(kinds.contains("timeseries") && kinds.contains("row"));
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let d = dashboard();
    let vars = variables(&d);
    // Each query as a recording rule, so promtool's PromQL parser checks it.
    let mut doc = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, q) in dashboard_queries(&d).iter().enumerate() {
        let expr = substitute(&q.expr, &vars, "5m");
        doc.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, &doc).unwrap();
    run_ok(Command::new(promtool).args(["check", "rules"]).arg(&file));
}

/// `value` as a TypeScript expression (JSON is one).
fn ts(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let dir = std::env::var_os("DILU_GRAFANA_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dilu/grafana-schema")
        });
    let modules = dir.join("node_modules");
    let tsc = modules.join("typescript/bin/tsc");
    if !tsc.is_file() || !modules.join("@grafana/schema/package.json").is_file() {
        missing(&format!(
            "typescript and @grafana/schema not installed in {}",
            dir.display()
        ));
        return;
    }
    let Some(node) = tool("node") else {
        return;
    };
    let d = dashboard();
    // The dashboard against `Dashboard` (panels, rows, variables, annotations, field configs), and each panel's
    // options and custom field config against its plugin's `Options` and `FieldConfig`. `Json<T>` turns string
    // enums into the unions of their values and numeric enums into their members, as JSON spells them; object
    // literals get TypeScript's excess-property check, so a field the schema does not know is an error too.
    let raw = "@grafana/schema/dist/esm/raw/composable";
    let mut src = format!(
        "import type {{ Dashboard }} from '@grafana/schema';\n\
         import type * as timeseries from '{raw}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';\n\
         import type * as stat from '{raw}/stat/panelcfg/x/StatPanelCfg_types.gen';\n\
         import type * as table from '{raw}/table/panelcfg/x/TablePanelCfg_types.gen';\n\
         type Json<T> = T extends string ? `${{T}}`\n  \
           : T extends number ? (`${{T}}` extends `${{infer N extends number}}` ? N : T)\n  \
           : T extends boolean | null | undefined ? T\n  \
           : T extends Array<infer U> ? Array<Json<U>>\n  \
           : T extends object ? {{ [K in keyof T]: Json<T[K]> }} : T;\n\
         export const dashboard: Json<Dashboard> = {};\n",
        ts(&d)
    );
    let mut checked = 0;
    for (i, p) in d["panels"].as_array().unwrap().iter().enumerate() {
        let kind = p["type"].as_str().unwrap();
        if kind == "row" {
            continue;
        }
        src.push_str(&format!(
            "export const options{i}: Json<{kind}.Options> = {};\n",
            ts(&p["options"])
        ));
        if let Some(custom) = p["fieldConfig"]["defaults"].get("custom") {
            src.push_str(&format!(
                "export const custom{i}: Json<{kind}.FieldConfig> = {};\n",
                ts(custom)
            ));
        }
        checked += 1;
    }
    assert!(checked > 10);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("dashboard.ts"), &src).unwrap();
    std::fs::write(
        work.path().join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "noEmit": true, "module": "esnext", "moduleResolution": "bundler",
            "target": "es2022", "types": []}, "files": ["dashboard.ts"]}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(&modules, work.path().join("node_modules")).unwrap();
    let out = Command::new(node)
        .arg(&tsc)
        .arg("-p")
        .arg(work.path().join("tsconfig.json"))
        .output()
        .expect("run tsc");
    assert!(
        out.status.success(),
        "the dashboard does not type-check against @grafana/schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check is real: a field the schema does not know fails it.
    let broken = src.replacen("\"schemaVersion\"", "\"schemaVersio\"", 1);
    std::fs::write(work.path().join("dashboard.ts"), broken).unwrap();
    let out = Command::new(tool("node").unwrap())
        .arg(&tsc)
        .arg("-p")
        .arg(work.path().join("tsconfig.json"))
        .output()
        .expect("run tsc");
    assert!(!out.status.success(), "tsc accepted an unknown field");
}

// ---------------------------------------------------------------------------------------------------------
// Against a live `dilu up`, and a real Prometheus scraping it.

/// A metric family of an exposition: its type, the labels its samples carry, how many samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    samples: usize,
}

fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..end];
        let family = if families.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                .unwrap_or_else(|| panic!("sample {name} outside any family"))
                .to_string()
        };
        let f = families.get_mut(&family).unwrap();
        f.samples += 1;
        if line[end..].starts_with('{') {
            // name="value" pairs; values may hold escaped quotes.
            let mut rest = &line[end + 1..];
            while let Some((key, after)) = rest.split_once("=\"") {
                f.labels.insert(key.trim_start_matches(',').to_string());
                let mut chars = after.char_indices();
                let mut close = after.len();
                while let Some((i, c)) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        close = i;
                        break;
                    }
                }
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    families
}

/// Labels every scraped series has besides its own: the target's (`instance` stays Dilu's own where a
/// family has it: the scrape uses honor_labels).
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Checks that every metric `refs` names is exported (or recorded by the rules) and that its matchers name
/// only labels it has; returns the problems.
fn check_refs(
    what: &str,
    refs: &Refs,
    families: &BTreeMap<String, Family>,
    recorded: &BTreeSet<String>,
    all_labels: &BTreeSet<String>,
    unchecked: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, labels) in &refs.metrics {
        if recorded.contains(name) {
            continue;
        }
        if name.contains(':') {
            problems.push(format!("{what}: {name} is no recording rule of {RULES}"));
            continue;
        }
        let (family, bucket) = match families.get(name) {
            Some(f) if f.kind != "histogram" => (f, false),
            Some(_) => {
                problems.push(format!(
                    "{what}: {name} is a histogram: use _bucket, _sum or _count"
                ));
                continue;
            }
            None => {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).map(|b| (b, *s == "_bucket")));
                match base.and_then(|(b, is_bucket)| {
                    families
                        .get(b)
                        .filter(|f| f.kind == "histogram")
                        .map(|f| (f, is_bucket))
                }) {
                    Some(found) => found,
                    None => {
                        problems.push(format!("{what}: {name} is not exported by dilu up"));
                        continue;
                    }
                }
            }
        };
        for label in labels {
            if label == "le" && bucket || TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if family.samples == 0 {
                unchecked.insert(format!("{name}{{{label}}}"));
                if !all_labels.contains(label) {
                    problems.push(format!("{what}: no exported metric has a label {label}"));
                }
            } else if !family.labels.contains(label) {
                problems.push(format!(
                    "{what}: {name} has no label {label} (it has {:?})",
                    family.labels
                ));
            }
        }
    }
    for label in &refs.labels {
        if !all_labels.contains(label) && !refs.created.contains(label) {
            problems.push(format!("{what}: no exported metric has a label {label}"));
        }
    }
    problems
}

/// The OCR classifier as function `name`, with `min_instances` (0: scaled to zero until its first request).
fn ocr_spec(cache: &Path, name: &str, min_instances: u32) -> String {
    format!(
        "name: {name}\nmodel:\n  path: {}\n  input_shape: [1, 3, 48, 192]\n  max_batch: 4\nslo_ms: 2000\n\
         quota: {{request: 0.2, limit: 0.5}}\n\
         scaling: {{min_instances: {min_instances}, max_instances: 1, capacity_rps: 20}}\n\
         gateway: {{cold_start_timeout_ms: 60000}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    )
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// An instant query's result vector; panics unless Prometheus answers `success`.
    fn query(&self, expr: &str) -> Vec<Value> {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(binary: &Path, dir: &Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    // As docs/observability.md says to scrape dilu up, at a test's pace.
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: dilu\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n",
            repo(RULES).display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        client: reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = prometheus
            .client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return prometheus;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready in 30 s:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Dashboard queries that may rightly be empty on a fresh platform with one healthy function: they count
/// events that may not have happened (5xx answers, quota changes, lost instances). Panel title and refId.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    ("5xx ratio", "A"),
    ("Vertical actions", "A"),
    ("Instances started and lost", "B"),
];

#[test]
fn every_metric_and_label_named_is_exported_by_dilu_up_and_prometheus_answers_them() {
    let Some(cache) = ensure_models() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let up = UpProc::start(&data.path().join("dilu"), &[]);
    // `ocr` keeps an instance; `cold` is scaled to zero, so its first request is a cold start (a horizontal
    // scaling action, and a cold-start wait).
    for (name, min) in [("ocr", 1), ("cold", 0)] {
        let (status, body) = up.deploy_yaml(&ocr_spec(&cache, name, min));
        assert_eq!(status, 201, "{body}");
    }
    up.wait_running("ocr", 1, Duration::from_secs(120));
    let input = std::fs::read(cache.join("inputs/text-upright.json")).expect("example input");
    for name in ["ocr", "ocr", "ocr", "cold", "ocr", "ocr"] {
        let (status, body) = up.infer(name, &input);
        assert_eq!(status, 200, "{name}: {body}");
    }
    let (status, _) = up.infer("no-such-function", &input);
    assert_eq!(status, 404);

    let (status, text) = up.get("/metrics");
    assert_eq!(status, 200);
    let text = text.as_str().expect("text exposition").to_string();
    let families = parse_exposition(&text);
    for prefix in ["dilu_control_", "dilu_gateway_", "dilu_agent_"] {
        assert!(
            families.keys().any(|n| n.starts_with(prefix)),
            "no {prefix}* family in\n{text}"
        );
    }
    let mut all_labels: BTreeSet<String> = families
        .values()
        .flat_map(|f| f.labels.iter().cloned())
        .collect();
    all_labels.extend(TARGET_LABELS.iter().map(|l| l.to_string()));

    let rules = rules();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.recorded)
        .map(|r| r.name.clone())
        .collect();
    let mut problems = Vec::new();
    let mut unchecked = BTreeSet::new();
    let mut used = BTreeSet::new();
    for rule in &rules {
        let mut refs = Refs::default();
        scan(&rule.expr, &mut refs);
        used.extend(refs.metrics.keys().cloned());
        problems.extend(check_refs(
            &format!("{RULES}: {}", rule.name),
            &refs,
            &families,
            &recorded,
            &all_labels,
            &mut unchecked,
        ));
        for text in &rule.annotations {
            for label in template_labels(text) {
                if !all_labels.contains(&label) && !refs.created.contains(&label) {
                    problems.push(format!(
                        "{RULES}: {}: annotation names label {label}, which nothing has",
                        rule.name
                    ));
                }
            }
        }
    }
    // The unit tests' input series are shaped like the real ones.
    let tests: serde_yaml::Value = serde_yaml::from_str(&read(RULES_TEST)).unwrap();
    for test in tests["tests"].as_sequence().unwrap() {
        for series in test["input_series"].as_sequence().unwrap() {
            let mut refs = Refs::default();
            scan(series["series"].as_str().unwrap(), &mut refs);
            problems.extend(check_refs(
                &format!("{RULES_TEST}: {}", test["name"].as_str().unwrap_or("?")),
                &refs,
                &families,
                &BTreeSet::new(),
                &all_labels,
                &mut unchecked,
            ));
        }
    }
    let d = dashboard();
    let vars = variables(&d);
    let queries = dashboard_queries(&d);
    for q in &queries {
        let mut refs = Refs::default();
        scan(&substitute(&q.expr, &vars, "5m"), &mut refs);
        used.extend(refs.metrics.keys().cloned());
        problems.extend(check_refs(
            &format!("{DASHBOARD}: {}", q.place),
            &refs,
            &families,
            &BTreeSet::new(),
            &all_labels,
            &mut unchecked,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    if !unchecked.is_empty() {
        eprintln!("labels not checked (the family had no samples in this scrape): {unchecked:?}");
    }
    let unused: Vec<&String> = families
        .keys()
        .filter(|f| {
            !used.iter().any(|u| {
                u == *f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| *u == format!("{f}{s}"))
            })
        })
        .collect();
    eprintln!("families exported but used by neither the rules nor the dashboard: {unused:?}");

    // A real Prometheus scraping this dilu up as docs/observability.md says, with the rules loaded.
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let target = up
        .url
        .strip_prefix("http://")
        .expect("http URL")
        .to_string();
    let prometheus = start_prometheus(&binary, data.path(), &target);
    let deadline = Instant::now() + Duration::from_secs(90);
    // Enough scrapes for rates, and the recording rules evaluated.
    while prometheus
        .query("count_over_time(dilu_control_functions[1m]) >= 5 and on () count(function:dilu_gateway_requests:rate5m) > 0")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "prometheus has not scraped dilu up and recorded the rules in 90 s:\n{}",
            std::fs::read_to_string(data.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let up_series = prometheus.query("up{job=\"dilu\"}");
    assert_eq!(up_series.len(), 1, "{up_series:?}");
    assert_eq!(up_series[0]["value"][1], "1", "{up_series:?}");
    // The agent's per-instance series keep Dilu's instance id (honor_labels).
    let ready = prometheus.query("dilu_agent_instance_ready{instance=~\"ocr-[0-9]+\"}");
    assert!(!ready.is_empty(), "no ocr-N instance series");

    let mut empty = Vec::new();
    for q in &queries {
        let expr = substitute(&q.expr, &vars, "30s");
        if prometheus.query(&expr).is_empty()
            && !MAY_BE_EMPTY.iter().any(|(title, target)| {
                q.place.starts_with(&format!("panel {title:?} "))
                    && q.place.ends_with(&format!(" target {target}"))
            })
        {
            empty.push(format!("{}: {expr}", q.place));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no data from a live dilu up:\n{}",
        empty.join("\n")
    );
    // Every recording rule yields series, but the 5xx ratio (no 5xx answered).
    for name in &recorded {
        if name == "function:dilu_gateway_requests_5xx:ratio_rate5m" {
            continue;
        }
        assert!(
            !prometheus.query(name).is_empty(),
            "recording rule {name} yields nothing"
        );
    }
    let ocr = prometheus.query("function:dilu_gateway_requests:rate5m{function=\"ocr\"}");
    assert_eq!(ocr.len(), 1, "{ocr:?}");
    let usage = prometheus.query("instance:dilu_agent_usage:ratio{function=\"ocr\"}");
    assert!(
        !usage.is_empty(),
        "the per-instance usage has no function label"
    );
    // A healthy platform raises no alert (pending or firing).
    let alerts = prometheus.query("ALERTS");
    assert!(
        alerts.is_empty(),
        "alerts on a healthy platform: {alerts:?}"
    );
    let rules_api: Value = prometheus
        .client
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .and_then(|r| r.json())
        .unwrap();
    let mut unhealthy = Vec::new();
    for group in rules_api["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule["health"] != "ok" {
                unhealthy.push(format!(
                    "{} {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    assert!(unhealthy.is_empty(), "rules not healthy: {unhealthy:?}");
}
