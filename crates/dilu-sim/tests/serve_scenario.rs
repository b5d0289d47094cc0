//! Serving scenarios and workloads: the YAML format, its error messages, and the arrival streams' statistics.

mod common;

use std::path::{Path, PathBuf};

use dilu_sim::serve::PolicyName;
use dilu_sim::serve::scenario::{Scenario, ScenarioError, load_scenario, parse_scenario};
use dilu_sim::serve::workload::{
    ArrivalStream, BuiltinSeries, Workload, arrival_seed, builtin_series_seed,
    parse_azure_llm_trace, parse_rate_series,
};

const MODELS: &[&str] = &[
    "resnet152",
    "bert_base",
    "roberta_large",
    "gpt2_large",
    "llama2",
];

/// A fresh directory for one test's fixture files.
fn fixture_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("serve_scenario")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parse(yaml: &str) -> Result<Scenario, ScenarioError> {
    parse_scenario(yaml, Path::new("."), MODELS)
}

/// Parses `yaml` expecting an error, and asserts its message contains every fragment.
fn assert_error(yaml: &str, fragments: &[&str]) {
    let err = match parse(yaml) {
        Ok(s) => panic!("expected an error containing {fragments:?}, parsed {s:?}"),
        Err(e) => e.to_string(),
    };
    for f in fragments {
        assert!(
            err.contains(f),
            "error message\n  {err}\ndoes not contain\n  {f}"
        );
    }
}

/// A minimal valid scenario with `extra` appended to the function (4 spaces of indent) or the document.
fn with_function(extra: &str) -> String {
    format!(
        "name: t\nduration_s: 600\ncluster: {{nodes: 1, gpus_per_node: 4}}\nfunctions:\n  - name: resnet\n    model: resnet152\n    slo_ms: 40\n    workload: {{kind: poisson, rps: 5}}\n{extra}"
    )
}

/// All arrival times (s) of a stream.
fn arrivals_s(workload: &Workload, seed: u64, duration_s: f64) -> Vec<f64> {
    ArrivalStream::new(workload, seed, duration_s)
        .map(|ns| ns as f64 / 1e9)
        .collect()
}

fn gaps(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / mean)
}

// ------------------------------------------------------------------------------------------------------------
// A full scenario and the defaults.

const FULL: &str = r#"
name: colocation-1node
description: "Two inference functions and a training job on one node"
duration_s: 600
seed: 7
warmup_s: 30
sample_interval_s: 0.5
cluster: { nodes: 2, gpus_per_node: 4, gpu_mem_gb: 80, gpu_model: H100, cpu_cores: 96, mem_gb: 512 }
policies: [dilu, exclusive, tgs]
functions:
  - name: resnet
    model: resnet152
    slo_ms: 40
    batch: 8
    min_instances: 0
    max_instances: 32
    initial_instances: 2
    memory_gb: 4
    cold_start_s: 2.5
    request_timeout_s: 10
    workload: { kind: gamma, rps: 50, cv: 4 }
  - name: chat
    model: llama2
    slo_ms: 150
    workload: { kind: series, builtin: periodic, step_s: 2, scale: 10, offset_s: 5, repeat: false }
training:
  - name: gpt2-train
    model: gpt2_large
    gpus: 2
    memory_gb: 20
    sm_request: 0.4
    sm_limit: 1.0
    start_s: 60
    duration_s: 3600
parameters:
  rckm: { window_ms: 40 }
  fast-gshare: {}
"#;

#[test]
fn full_scenario_parses_with_every_key() {
    let s = parse(FULL).unwrap();
    assert_eq!(s.name, "colocation-1node");
    assert_eq!(
        s.description.as_deref(),
        Some("Two inference functions and a training job on one node")
    );
    assert_eq!(s.duration_s, 600.0);
    assert_eq!(s.seed, 7);
    assert_eq!(s.warmup_s, 30.0);
    assert_eq!(s.sample_interval_s, 0.5);
    assert_eq!(s.cluster.nodes, 2);
    assert_eq!(s.cluster.gpus_per_node, 4);
    assert_eq!(s.cluster.gpu_mem_gb, 80.0);
    assert_eq!(s.cluster.gpu_model, "H100");
    assert_eq!(s.cluster.cpu_cores, 96);
    assert_eq!(s.cluster.mem_gb, 512.0);
    assert_eq!(
        s.policies,
        vec![PolicyName::Dilu, PolicyName::Exclusive, PolicyName::Tgs]
    );

    let f = &s.functions[0];
    assert_eq!((f.name.as_str(), f.model.as_str()), ("resnet", "resnet152"));
    assert_eq!(f.slo_ms, 40.0);
    assert_eq!(f.batch, Some(8));
    assert_eq!(
        (f.min_instances, f.max_instances, f.initial_instances),
        (0, 32, 2)
    );
    assert_eq!(f.memory_gb, Some(4.0));
    assert_eq!(f.cold_start_s, Some(2.5));
    assert_eq!(f.request_timeout_s, Some(10.0));
    assert_eq!(f.workload, Workload::Gamma { rps: 50.0, cv: 4.0 });

    let g = &s.functions[1];
    assert_eq!(g.batch, None);
    assert_eq!(
        (g.min_instances, g.max_instances, g.initial_instances),
        (1, 64, 1)
    );
    assert_eq!(
        (g.memory_gb, g.cold_start_s, g.request_timeout_s),
        (None, None, None)
    );
    let Workload::Series {
        rates,
        step_s,
        scale,
        offset_s,
        repeat,
        source,
    } = &g.workload
    else {
        panic!("{:?}", g.workload);
    };
    assert_eq!(
        (*step_s, *scale, *offset_s, *repeat),
        (2.0, 10.0, 5.0, false)
    );
    assert_eq!(source, "builtin:periodic");
    // Enough steps to cover offset + duration: ceil(605 / 2) = 303.
    assert_eq!(rates.len(), 303);
    assert_eq!(
        *rates,
        BuiltinSeries::Periodic.generate(builtin_series_seed(7, 1), 303)
    );

    let t = &s.training[0];
    assert_eq!(
        (t.name.as_str(), t.model.as_str(), t.gpus),
        ("gpt2-train", "gpt2_large", 2)
    );
    assert_eq!(t.memory_gb, Some(20.0));
    assert_eq!((t.sm_request, t.sm_limit), (Some(0.4), Some(1.0)));
    assert_eq!((t.start_s, t.duration_s), (60.0, Some(3600.0)));

    assert_eq!(
        s.parameters.keys().collect::<Vec<_>>(),
        vec!["fast-gshare", "rckm"]
    );
    assert_eq!(s.parameters["rckm"]["window_ms"].as_u64(), Some(40));
}

#[test]
fn minimal_scenario_gets_the_documented_defaults() {
    let s = parse(&with_function("")).unwrap();
    assert_eq!(s.description, None);
    assert_eq!(s.seed, 1);
    assert_eq!(s.warmup_s, 0.0);
    assert_eq!(s.sample_interval_s, 1.0);
    assert_eq!(s.cluster.gpu_mem_gb, 40.0);
    assert_eq!(s.cluster.gpu_model, "A100");
    assert_eq!(s.cluster.cpu_cores, 64);
    assert_eq!(s.cluster.mem_gb, 256.0);
    assert_eq!(s.policies, PolicyName::ALL.to_vec());
    assert!(s.training.is_empty());
    assert!(s.parameters.is_empty());
    let f = &s.functions[0];
    assert_eq!(
        (f.min_instances, f.max_instances, f.initial_instances),
        (1, 64, 1)
    );
    assert_eq!(
        (f.interference, f.capacity_rps, f.request_overhead_ms),
        (0.0, None, 0.0)
    );
    let s = parse(&with_function(
        "    interference: 0.4\n    capacity_rps: 12.5\n    request_overhead_ms: 12.5\n    service_cv: 0.25\n",
    ))
    .unwrap();
    assert_eq!(
        (
            s.functions[0].interference,
            s.functions[0].capacity_rps,
            s.functions[0].request_overhead_ms
        ),
        (0.4, Some(12.5), 12.5)
    );
    assert_eq!(s.functions[0].service_cv, 0.25);
    assert_eq!(f.service_cv, 0.0);

    // initial_instances defaults to max(min_instances, 1).
    let s = parse(&with_function("    min_instances: 0\n")).unwrap();
    assert_eq!(s.functions[0].initial_instances, 1);
    let s = parse(&with_function("    min_instances: 3\n")).unwrap();
    assert_eq!(s.functions[0].initial_instances, 3);

    // Training-only scenarios are fine; training defaults.
    let s = parse(
        "name: t\nduration_s: 10\ncluster: {nodes: 1, gpus_per_node: 2}\ntraining:\n  - {name: j, model: gpt2_large, gpus: 2}\n",
    )
    .unwrap();
    assert!(s.functions.is_empty());
    let t = &s.training[0];
    assert_eq!((t.memory_gb, t.sm_request, t.sm_limit), (None, None, None));
    assert_eq!((t.start_s, t.duration_s), (0.0, None));
}

// ------------------------------------------------------------------------------------------------------------
// Malformed scenarios: every error names the key path and the rule.

#[test]
fn serde_errors_name_the_key_path() {
    assert_error(
        &with_function("").replace("slo_ms: 40", "slo_ms: fast"),
        &[
            r#"functions[0].slo_ms: invalid type: string "fast", expected f64"#,
            "line 7",
        ],
    );
    assert_error(
        &with_function(
            "  - name: b\n    model: resnet152\n    sloms: 3\n    workload: {kind: poisson, rps: 1}\n",
        ),
        &["functions[1]: unknown field `sloms`, expected one of `name`, `model`, `slo_ms`"],
    );
    assert_error(
        &with_function("extra_key: 1\n"),
        &["unknown field `extra_key`, expected one of `name`, `description`"],
    );
    assert_error(
        "name: t\ncluster: {nodes: 1, gpus_per_node: 4}\nfunctions: []\n",
        &["missing field `duration_s`"],
    );
    assert_error(
        &with_function("").replace("gpus_per_node: 4", "gpus_per_node: 4, gpus: 2"),
        &["cluster: unknown field `gpus`"],
    );
    assert_error(
        &with_function("").replace(
            "cluster: {nodes: 1, gpus_per_node: 4}",
            "cluster: {nodes: 1}",
        ),
        &["cluster: missing field `gpus_per_node`"],
    );
    assert_error(
        &with_function("    batch: 1.5\n"),
        &["functions[0].batch: invalid type: floating point `1.5`, expected i64"],
    );
    assert_error(
        &with_function("training:\n  - {name: j, model: gpt2_large, gpus: 1, sm_requests: 0.5}\n"),
        &["training[0]: unknown field `sm_requests`"],
    );
    assert_error("name: [unclosed\n", &["line 1"]);
}

#[test]
fn workload_errors_name_the_key_path() {
    let wl = |w: &str| with_function("").replace("{kind: poisson, rps: 5}", w);
    // Unknown fields are rejected in every workload kind.
    assert_error(
        &wl("{kind: poisson, rps: 5, cv: 3}"),
        &["functions[0].workload: unknown field `cv`, expected `rps`"],
    );
    assert_error(
        &wl("{kind: gamma, rps: 5, cv: 3, burst: 1}"),
        &["functions[0].workload: unknown field `burst`, expected `rps` or `cv`"],
    );
    assert_error(
        &wl("{kind: series, builtin: bursty, steps: 1}"),
        &["functions[0].workload: unknown field `steps`, expected one of `file`, `builtin`"],
    );
    assert_error(
        &wl("{kind: trace, file: x.csv, speed: 2}"),
        &["functions[0].workload: unknown field `speed`, expected one of `file`, `format`"],
    );
    assert_error(
        &wl("{kind: poisson, rps: lots}"),
        &[r#"functions[0].workload.rps: invalid type: string "lots", expected f64"#],
    );
    assert_error(
        &wl("{kind: gamma, rps: 5}"),
        &["functions[0].workload: missing field `cv`"],
    );
    assert_error(
        &wl("{rps: 5}"),
        &["functions[0].workload: missing field `kind` (one of poisson, gamma, series, trace)"],
    );
    assert_error(
        &wl("{kind: weibull, rps: 5}"),
        &[
            r#"functions[0].workload.kind = "weibull": unknown workload kind; valid: poisson, gamma, series, trace"#,
        ],
    );
    assert_error(
        &wl("poisson"),
        &["functions[0].workload: must be a mapping with a `kind`"],
    );
    assert_error(
        &wl("{kind: poisson, rps: -1}"),
        &["functions[0].workload.rps = -1: must be ≥ 0"],
    );
    assert_error(
        &wl("{kind: gamma, rps: 5, cv: 0}"),
        &["functions[0].workload.cv = 0: must be > 0"],
    );
    assert_error(
        &wl("{kind: gamma, rps: 5, cv: 101}"),
        &["functions[0].workload.cv = 101: must be ≤ 100"],
    );
    assert_error(
        &wl("{kind: series, builtin: wavy}"),
        &[
            "functions[0].workload.builtin: unknown variant `wavy`, expected one of `bursty`, `periodic`, `sporadic`",
        ],
    );
    assert_error(
        &wl("{kind: series, builtin: bursty, file: r.txt}"),
        &["functions[0].workload: a series needs exactly one of `file` or `builtin`"],
    );
    assert_error(
        &wl("{kind: series}"),
        &["functions[0].workload: a series needs exactly one of `file` or `builtin`"],
    );
    assert_error(
        &wl("{kind: series, builtin: bursty, step_s: 0}"),
        &["functions[0].workload.step_s = 0: must be ≥ 0.001 (1 ms)"],
    );
    assert_error(
        &wl("{kind: series, builtin: bursty, scale: -2}"),
        &["functions[0].workload.scale = -2: must be ≥ 0"],
    );
    assert_error(
        &wl("{kind: series, builtin: bursty, offset_s: -1}"),
        &["functions[0].workload.offset_s = -1: must be ≥ 0"],
    );
    assert_error(
        &wl("{kind: trace, file: x.csv, format: alibaba}"),
        &["functions[0].workload.format: unknown variant `alibaba`, expected `azure-llm`"],
    );
    assert_error(
        &wl("{kind: trace, file: x.csv, time_scale: 0}"),
        &["functions[0].workload.time_scale = 0: must be > 0"],
    );
    assert_error(
        &wl("{kind: trace, file: definitely-missing.csv}"),
        &[
            r#"functions[0].workload.file = "definitely-missing.csv": cannot read"#,
            "definitely-missing.csv",
        ],
    );
}

#[test]
fn semantic_errors_name_the_key_value_and_rule() {
    let cases: &[(String, &str)] = &[
        (
            with_function("").replace("slo_ms: 40", "slo_ms: -3"),
            "functions[0].slo_ms = -3: must be > 0",
        ),
        (
            with_function("").replace("slo_ms: 40", "slo_ms: .nan"),
            "functions[0].slo_ms = NaN: must be > 0",
        ),
        (
            with_function("    interference: 11\n"),
            "functions[0].interference = 11: must be in [0, 10]",
        ),
        (
            with_function("    interference: -0.1\n"),
            "functions[0].interference = -0.1: must be in [0, 10]",
        ),
        (
            with_function("    request_overhead_ms: -1\n"),
            "functions[0].request_overhead_ms = -1: must be ≥ 0 and below the function's slo_ms (40)",
        ),
        (
            with_function("    service_cv: 2.5\n"),
            "functions[0].service_cv = 2.5: must be in [0, 2]",
        ),
        (
            with_function("    service_cv: -0.1\n"),
            "functions[0].service_cv = -0.1: must be in [0, 2]",
        ),
        (
            with_function("    request_overhead_ms: 40\n"),
            "functions[0].request_overhead_ms = 40: must be ≥ 0 and below the function's slo_ms (40)",
        ),
        (
            with_function("    capacity_rps: 0\n"),
            "functions[0].capacity_rps = 0: must be > 0",
        ),
        (
            with_function("").replace("resnet152", "resnet999"),
            r#"functions[0].model = "resnet999": unknown model; known: resnet152, bert_base, roberta_large, gpt2_large, llama2"#,
        ),
        (
            with_function(
                "  - name: resnet\n    model: bert_base\n    slo_ms: 10\n    workload: {kind: poisson, rps: 1}\n",
            ),
            r#"functions[1].name = "resnet": duplicate name (also functions[0].name)"#,
        ),
        (
            with_function("training:\n  - {name: resnet, model: gpt2_large, gpus: 1}\n"),
            r#"training[0].name = "resnet": duplicate name (also functions[0].name)"#,
        ),
        (
            with_function("").replace("name: resnet", "name: \"res net\""),
            r#"functions[0].name = "res net": must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'"#,
        ),
        (
            with_function("").replace("name: t\n", "name: \"\"\n"),
            r#"name = "": must be 1-64 characters"#,
        ),
        (
            with_function("    min_instances: 5\n    max_instances: 3\n"),
            "functions[0].min_instances = 5: must be ≤ max_instances (3)",
        ),
        (
            with_function("    max_instances: 0\n"),
            "functions[0].max_instances = 0: must be ≥ 1",
        ),
        (
            with_function("    min_instances: -1\n"),
            "functions[0].min_instances = -1: must be ≥ 0",
        ),
        (
            with_function("    min_instances: 2\n    initial_instances: 1\n"),
            "functions[0].initial_instances = 1: must be within [min_instances, max_instances] ([2, 64])",
        ),
        (
            with_function("    batch: 0\n"),
            "functions[0].batch = 0: must be ≥ 1",
        ),
        (
            with_function("    memory_gb: 41\n"),
            "functions[0].memory_gb = 41: must be > 0 and ≤ cluster.gpu_mem_gb (40)",
        ),
        (
            with_function("    cold_start_s: -0.5\n"),
            "functions[0].cold_start_s = -0.5: must be ≥ 0",
        ),
        (
            with_function("    request_timeout_s: 0\n"),
            "functions[0].request_timeout_s = 0: must be > 0",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt2_large, gpus: 8}\n"),
            "training[0].gpus = 8: must be ≤ cluster.gpus_per_node (4)",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt2_large, gpus: 0}\n"),
            "training[0].gpus = 0: must be ≥ 1",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt9, gpus: 1}\n"),
            r#"training[0].model = "gpt9": unknown model; known: resnet152"#,
        ),
        (
            with_function(
                "training:\n  - {name: j, model: gpt2_large, gpus: 1, sm_request: 1.5}\n",
            ),
            "training[0].sm_request = 1.5: must be in (0, 1]",
        ),
        (
            with_function(
                "training:\n  - {name: j, model: gpt2_large, gpus: 1, sm_request: 0.5, sm_limit: 0.3}\n",
            ),
            "training[0].sm_limit = 0.3: must be ≥ sm_request (0.5)",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt2_large, gpus: 1, start_s: 600}\n"),
            "training[0].start_s = 600: must be < duration_s (600)",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt2_large, gpus: 1, duration_s: 0}\n"),
            "training[0].duration_s = 0: must be > 0",
        ),
        (
            with_function("training:\n  - {name: j, model: gpt2_large, gpus: 1, memory_gb: 0}\n"),
            "training[0].memory_gb = 0: must be > 0 and ≤ cluster.gpu_mem_gb (40)",
        ),
        (
            with_function("policies: [dilu, exclusive, fast]\n"),
            r#"policies[2] = "fast": unknown policy; valid: dilu, exclusive, infless, fast-gshare, tgs, has, dilu-slo"#,
        ),
        (
            with_function("policies: [dilu, tgs, dilu]\n"),
            r#"policies[2] = "dilu": duplicate policy (also policies[0])"#,
        ),
        (
            with_function("policies: []\n"),
            "policies: must list at least one policy",
        ),
        (
            with_function("").replace("duration_s: 600", "duration_s: 0"),
            "duration_s = 0: must be > 0",
        ),
        (
            with_function("").replace("duration_s: 600", "duration_s: 700000"),
            "duration_s = 700000: must be ≤ 604800 (7 days)",
        ),
        (
            with_function("warmup_s: 600\n"),
            "warmup_s = 600: must be < duration_s (600)",
        ),
        (
            with_function("warmup_s: -1\n"),
            "warmup_s = -1: must be ≥ 0",
        ),
        (
            with_function("sample_interval_s: 0\n"),
            "sample_interval_s = 0: must be > 0",
        ),
        (
            with_function("sample_interval_s: 601\n"),
            "sample_interval_s = 601: must be ≤ duration_s (600)",
        ),
        (
            with_function("sample_interval_s: 0.00001\n"),
            "sample_interval_s = 0.00001: must be ≥ duration_s / 10000000",
        ),
        (
            with_function("").replace("nodes: 1,", "nodes: 0,"),
            "cluster.nodes = 0: must be ≥ 1",
        ),
        (
            with_function("").replace("gpus_per_node: 4", "gpus_per_node: 0"),
            "cluster.gpus_per_node = 0: must be ≥ 1",
        ),
        (
            with_function("").replace("gpus_per_node: 4", "gpus_per_node: 4, gpu_mem_gb: -40"),
            "cluster.gpu_mem_gb = -40: must be > 0",
        ),
        (
            with_function("parameters:\n  rkcm: {a: 1}\n"),
            "parameters.rkcm: unknown component; valid: rckm, slack, tgs, lazy, lazy_slo, kpa, infless, fast-gshare, has, batching, profiler",
        ),
        (
            with_function("parameters:\n  rckm: 3\n"),
            "parameters.rckm: must be a mapping",
        ),
        (
            "name: t\nduration_s: 10\ncluster: {nodes: 1, gpus_per_node: 1}\n".to_owned(),
            "functions: at least one function is required",
        ),
    ];
    for (yaml, fragment) in cases {
        assert_error(yaml, &[fragment]);
    }
}

// ------------------------------------------------------------------------------------------------------------
// Data files: relative paths, rate series, traces.

#[test]
fn load_scenario_resolves_data_files_against_its_directory() {
    let dir = fixture_dir("relative");
    std::fs::create_dir_all(dir.join("rates")).unwrap();
    std::fs::write(dir.join("rates/r.txt"), "1\n\n 2.5 \n0\n").unwrap();
    std::fs::write(
        dir.join("t.csv"),
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:17:03.5000000,100,10\n\
         2023-11-16 18:17:05.0000000,200,20\n\
         2023-11-16 18:17:04.0000000,300,30\n\
         2023-11-16 18:18:03.5000000,400,40\n",
    )
    .unwrap();
    let yaml = "name: files\nduration_s: 30\ncluster: {nodes: 1, gpus_per_node: 1}\nfunctions:\n  - name: a\n    model: resnet152\n    slo_ms: 40\n    workload: {kind: series, file: rates/r.txt, scale: 2}\n  - name: b\n    model: llama2\n    slo_ms: 100\n    workload: {kind: trace, file: t.csv, format: azure-llm, time_scale: 2, start_s: 0.25}\n";
    let path = dir.join("scenario.yaml");
    std::fs::write(&path, yaml).unwrap();
    let s = load_scenario(&path, MODELS).unwrap();
    assert_eq!(
        s.functions[0].workload,
        Workload::Series {
            rates: vec![1.0, 2.5, 0.0],
            step_s: 1.0,
            scale: 2.0,
            offset_s: 0.0,
            repeat: true,
            source: "rates/r.txt".to_owned(),
        }
    );
    // Sorted and relative to the earliest row (0, 0.5, 1.5, 60), halved (0, 0.25, 0.75, 30), shifted by
    // -0.25 s (-0.25, 0, 0.5, 29.75), kept within [0, 30).
    assert_eq!(
        s.functions[1].workload,
        Workload::Trace {
            offsets_s: vec![0.0, 0.5, 29.75],
            source: "t.csv".to_owned(),
        }
    );
}

#[test]
fn data_file_errors_name_the_file_line_and_text() {
    let dir = fixture_dir("bad_data");
    std::fs::write(dir.join("r.txt"), "1\n2\n\nabc\n").unwrap();
    std::fs::write(dir.join("neg.txt"), "1\n-2\n").unwrap();
    std::fs::write(dir.join("empty.txt"), "\n\n").unwrap();
    std::fs::write(
        dir.join("t.csv"),
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,1\n2023-13-16 18:17:04.0319600,31,8\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tok.csv"),
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,many\n",
    )
    .unwrap();
    std::fs::write(dir.join("hdr.csv"), "time,ctx,gen\n").unwrap();
    std::fs::write(
        dir.join("late.csv"),
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,1\n",
    )
    .unwrap();
    let wl = |w: &str| with_function("").replace("{kind: poisson, rps: 5}", w);
    let check = |w: &str, fragments: &[&str]| {
        let err = parse_scenario(&wl(w), &dir, MODELS)
            .unwrap_err()
            .to_string();
        for f in fragments {
            assert!(err.contains(f), "{err}\n does not contain\n{f}");
        }
    };
    let shown = |name: &str| dir.join(name).display().to_string();
    check(
        "{kind: series, file: r.txt}",
        &[
            r#"functions[0].workload.file = "r.txt": "#,
            &shown("r.txt"),
            r#"line 4: "abc": not a number"#,
        ],
    );
    check(
        "{kind: series, file: neg.txt}",
        &[r#"line 2: "-2": a rate must be finite and ≥ 0"#],
    );
    check(
        "{kind: series, file: empty.txt}",
        &["line 1: \"\": the file holds no rates"],
    );
    check(
        "{kind: trace, file: t.csv}",
        &[
            &shown("t.csv"),
            r#"line 3, field TIMESTAMP: "2023-13-16 18:17:04.0319600": month 13 is not in 1..=12"#,
        ],
    );
    check(
        "{kind: trace, file: tok.csv}",
        &[r#"line 2, field GeneratedTokens: "many": expected a whole number ≥ 0"#],
    );
    check(
        "{kind: trace, file: hdr.csv}",
        &[r#"line 1: "time,ctx,gen": expected the header TIMESTAMP,ContextTokens,GeneratedTokens"#],
    );
    check(
        "{kind: trace, file: late.csv, start_s: 5}",
        &[r#"functions[0].workload.file = "late.csv": no arrivals in [0, duration_s)"#],
    );

    // load_scenario names the scenario file; a missing one says it cannot be read.
    let path = dir.join("bad.yaml");
    std::fs::write(&path, wl("{kind: series, file: r.txt}")).unwrap();
    let err = load_scenario(&path, MODELS).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: functions[0].workload.file", path.display())),
        "{err}"
    );
    let missing = dir.join("nope.yaml");
    let err = load_scenario(&missing, MODELS).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: cannot read the scenario", missing.display())),
        "{err}"
    );
}

#[test]
fn inline_trace_parses_sorts_and_reads_tokens() {
    let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n\
               2023-11-16 23:59:59.5,4808,10\r\n\
               2023-11-17 00:00:00.25,3180,8\r\n\
               2023-11-16 23:59:59.0,110,27\r\n";
    let reqs = parse_azure_llm_trace(csv).unwrap();
    let offsets: Vec<f64> = reqs.iter().map(|r| r.offset_s).collect();
    assert_eq!(offsets, vec![0.0, 0.5, 1.25]);
    assert_eq!(
        reqs.iter()
            .map(|r| (r.context_tokens, r.generated_tokens))
            .collect::<Vec<_>>(),
        vec![(110, 27), (4808, 10), (3180, 8)]
    );
    assert!(
        parse_azure_llm_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1\n")
            .unwrap_err()
            .to_string()
            .contains("line 2: \"2023-11-16 18:00:00,1\": expected 3 fields, found 2")
    );
    assert!(
        parse_azure_llm_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n")
            .unwrap_err()
            .to_string()
            .contains("the trace holds no requests")
    );
    assert_eq!(
        parse_rate_series("3\n 4.5\n\n0\n").unwrap(),
        vec![3.0, 4.5, 0.0]
    );
}

#[test]
fn readme_full_example_parses() {
    // The example's trace lives in the shared data folder; skip (loudly) where it is absent.
    if common::shared_data("azure-llm-2023/AzureLLMInferenceTrace_conv.csv").is_none() {
        return;
    }
    let readme = include_str!("../../../scenarios/README.md");
    let (_, rest) = readme.split_once("## A full example").unwrap();
    let (_, rest) = rest.split_once("```yaml\n").unwrap();
    let (yaml, _) = rest.split_once("```").unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let s = parse_scenario(yaml, &dir, MODELS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "colocation-2node");
    assert_eq!(s.functions.len(), 3);
    assert_eq!(s.training.len(), 1);
    let Workload::Trace { offsets_s, .. } = &s.functions[2].workload else {
        panic!("{:?}", s.functions[2].workload);
    };
    assert!(offsets_s.len() > 10_000, "{}", offsets_s.len());
}

#[test]
fn real_azure_llm_code_trace_has_8819_requests_over_about_an_hour() {
    let Some(path) = common::shared_data("azure-llm-2023/AzureLLMInferenceTrace_code.csv") else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let reqs = parse_azure_llm_trace(&text).unwrap();
    assert_eq!(reqs.len(), 8_819);
    let span = reqs.last().unwrap().offset_s;
    assert!((3_000.0..3_600.0).contains(&span), "span {span} s");
    assert!(reqs.windows(2).all(|w| w[0].offset_s <= w[1].offset_s));
    assert_eq!(reqs[0].offset_s, 0.0);
    assert_eq!(
        (reqs[0].context_tokens, reqs[0].generated_tokens),
        (4808, 10)
    );
    // Second row: 18:17:04.0319600 - 18:17:03.9799600 = 0.052 s.
    assert!((reqs[1].offset_s - 0.052).abs() < 1e-9);

    // Through a scenario: the whole trace within an hour; at time_scale 2 the first 1000 s hold about half.
    let dir = path.parent().unwrap();
    let yaml = |extra: &str| {
        format!(
            "name: llm\nduration_s: 3600\ncluster: {{nodes: 1, gpus_per_node: 1}}\nfunctions:\n  - name: code\n    model: llama2\n    slo_ms: 100\n    workload: {{kind: trace, file: AzureLLMInferenceTrace_code.csv{extra}}}\n"
        )
    };
    let s = parse_scenario(&yaml(""), dir, MODELS).unwrap();
    let w = &s.functions[0].workload;
    assert_eq!(arrivals_s(w, 1, 3600.0).len(), 8_819);
    let rps = ArrivalStream::mean_rps(w, 3600.0);
    assert!((rps - 8_819.0 / 3600.0).abs() < 1e-12);
    let s = parse_scenario(&yaml(", time_scale: 2, start_s: 100"), dir, MODELS).unwrap();
    let Workload::Trace { offsets_s, .. } = &s.functions[0].workload else {
        panic!();
    };
    let expected = reqs
        .iter()
        .filter(|r| (0.0..3600.0).contains(&(r.offset_s / 2.0 - 100.0)))
        .count();
    assert_eq!(offsets_s.len(), expected);
    assert!(offsets_s.len() > 4_000 && offsets_s.len() < 8_819);
}

// ------------------------------------------------------------------------------------------------------------
// Arrival streams.

#[test]
fn poisson_rate_and_cv_match() {
    let w = Workload::Poisson { rps: 200.0 };
    let t = arrivals_s(&w, 42, 2_000.0);
    let n = t.len() as f64;
    assert!((n / 2_000.0 / 200.0 - 1.0).abs() < 0.01, "{n} arrivals");
    let (mean, cv) = mean_and_cv(&gaps(&t));
    assert!((mean * 200.0 - 1.0).abs() < 0.01, "mean gap {mean}");
    assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
    assert!(t.iter().all(|x| (0.0..2_000.0).contains(x)));
    assert_eq!(ArrivalStream::mean_rps(&w, 10.0), 200.0);
}

#[test]
fn gamma_rate_and_cv_match() {
    let w = Workload::Gamma {
        rps: 500.0,
        cv: 4.0,
    };
    let t = arrivals_s(&w, 42, 4_000.0);
    let n = t.len() as f64;
    assert!(n > 1.5e6, "{n} arrivals");
    assert!((n / 4_000.0 / 500.0 - 1.0).abs() < 0.05, "{n} arrivals");
    let (mean, cv) = mean_and_cv(&gaps(&t));
    assert!((mean * 500.0 - 1.0).abs() < 0.05, "mean gap {mean}");
    assert!((cv / 4.0 - 1.0).abs() < 0.05, "cv {cv}");

    let w = Workload::Gamma {
        rps: 100.0,
        cv: 0.5,
    };
    let (mean, cv) = mean_and_cv(&gaps(&arrivals_s(&w, 3, 2_000.0)));
    assert!((mean * 100.0 - 1.0).abs() < 0.01, "mean gap {mean}");
    assert!((cv / 0.5 - 1.0).abs() < 0.02, "cv {cv}");
}

#[test]
fn series_counts_per_step_track_the_rates() {
    let rates = vec![0.0, 50.0, 200.0, 10.0, 0.0, 100.0];
    let w = Workload::Series {
        rates: rates.clone(),
        step_s: 2.0,
        scale: 10.0,
        offset_s: 0.0,
        repeat: true,
        source: "test".to_owned(),
    };
    // 100 cycles of 6 steps of 2 s.
    let duration = 1_200.0;
    let mut counts = [0.0f64; 6];
    for t in arrivals_s(&w, 9, duration) {
        counts[((t / 2.0) as usize) % 6] += 1.0;
    }
    for (i, (&c, &r)) in counts.iter().zip(&rates).enumerate() {
        let expected = r * 10.0 * 2.0 * 100.0;
        if r == 0.0 {
            assert_eq!(c, 0.0, "step {i}");
        } else {
            let sd = expected.sqrt();
            assert!(
                (c - expected).abs() < 5.0 * sd,
                "step {i}: {c} vs {expected}"
            );
        }
    }
    let mean = ArrivalStream::mean_rps(&w, duration);
    assert!((mean - 10.0 * 360.0 / 6.0).abs() < 1e-9, "{mean}");

    // Offset and no repeat: starting 3 s in (inside step 1), 0 after the 12-s series ends.
    let w = Workload::Series {
        rates: rates.clone(),
        step_s: 2.0,
        scale: 10.0,
        offset_s: 3.0,
        repeat: false,
        source: "test".to_owned(),
    };
    let mut total = 0;
    let mut per_step = [0usize; 6];
    for seed in 0..200 {
        for t in arrivals_s(&w, seed, 100.0) {
            assert!(t < 9.0, "arrival at {t} after the series ended");
            per_step[((t + 3.0) / 2.0) as usize] += 1;
            total += 1;
        }
    }
    // Expected per run: 1 s at 500 + 2 s at 2000 + 2 s at 100 + 0 + 2 s at 1000 = 500+4000+200+2000.
    let expected = 200.0 * 6_700.0;
    assert!((total as f64 / expected - 1.0).abs() < 0.01, "{total}");
    assert_eq!((per_step[0], per_step[4]), (0, 0));
    let mean = ArrivalStream::mean_rps(&w, 100.0);
    assert!((mean - 6_700.0 / 100.0).abs() < 1e-9, "{mean}");
}

#[test]
fn streams_are_deterministic_in_the_seed() {
    let workloads = [
        Workload::Poisson { rps: 30.0 },
        Workload::Gamma { rps: 30.0, cv: 4.0 },
        Workload::Series {
            rates: BuiltinSeries::Bursty.generate(5, 100),
            step_s: 1.0,
            scale: 30.0,
            offset_s: 0.0,
            repeat: true,
            source: "builtin:bursty".to_owned(),
        },
    ];
    for w in &workloads {
        let a: Vec<u64> = ArrivalStream::new(w, 7, 100.0).collect();
        let b: Vec<u64> = ArrivalStream::new(w, 7, 100.0).collect();
        let c: Vec<u64> = ArrivalStream::new(w, 8, 100.0).collect();
        assert!(a.len() > 100, "{}", w.kind_name());
        assert_eq!(a, b, "{}", w.kind_name());
        assert_ne!(a, c, "{}", w.kind_name());
        assert!(a.windows(2).all(|p| p[0] <= p[1]), "{}", w.kind_name());
        assert!(
            a.iter().all(|&ns| ns < 100_000_000_000),
            "{}",
            w.kind_name()
        );
    }
    assert_ne!(arrival_seed(1, 0), arrival_seed(1, 1));
    assert_ne!(arrival_seed(1, 0), arrival_seed(2, 0));
    assert_ne!(arrival_seed(1, 0), builtin_series_seed(1, 0));

    // Builtin series of a scenario depend on the seed and the function index only.
    let yaml = |seed: u64| {
        format!(
            "name: t\nduration_s: 100\nseed: {seed}\ncluster: {{nodes: 1, gpus_per_node: 1}}\nfunctions:\n  - {{name: a, model: resnet152, slo_ms: 40, workload: {{kind: series, builtin: sporadic}}}}\n  - {{name: b, model: resnet152, slo_ms: 40, workload: {{kind: series, builtin: sporadic}}}}\n"
        )
    };
    let s1 = parse(&yaml(1)).unwrap();
    let s1b = parse(&yaml(1)).unwrap();
    let s2 = parse(&yaml(2)).unwrap();
    assert_eq!(s1, s1b);
    assert_ne!(s1.functions[0].workload, s2.functions[0].workload);
    assert_ne!(s1.functions[0].workload, s1.functions[1].workload);
}

#[test]
fn empty_and_degenerate_streams_end_at_once() {
    for w in [
        Workload::Poisson { rps: 0.0 },
        Workload::Gamma { rps: 0.0, cv: 2.0 },
        Workload::Series {
            rates: vec![0.0; 10],
            step_s: 1.0,
            scale: 5.0,
            offset_s: 0.0,
            repeat: true,
            source: String::new(),
        },
        Workload::Trace {
            offsets_s: vec![],
            source: String::new(),
        },
    ] {
        assert_eq!(ArrivalStream::new(&w, 1, 1e6).next_ns(), None, "{w:?}");
    }
    let mut s = ArrivalStream::new(&Workload::Poisson { rps: 10.0 }, 1, 0.0);
    assert_eq!(s.next_ns(), None);
    // A trace stream keeps only offsets inside [0, duration).
    let w = Workload::Trace {
        offsets_s: vec![0.0, 0.5, 2.0, 9.9, 10.0],
        source: String::new(),
    };
    let got: Vec<u64> = ArrivalStream::new(&w, 1, 10.0).collect();
    assert_eq!(got, vec![0, 500_000_000, 2_000_000_000, 9_900_000_000]);
    assert_eq!(ArrivalStream::mean_rps(&w, 10.0), 0.4);
}

#[test]
fn builtin_series_have_their_documented_means_and_shapes() {
    let steps = 1_000_000;
    for b in BuiltinSeries::ALL {
        let r = b.generate(123, steps);
        assert_eq!(r.len(), steps);
        assert!(
            r.iter().all(|x| x.is_finite() && *x >= 0.0),
            "{}",
            b.as_str()
        );
        let mean = r.iter().sum::<f64>() / steps as f64;
        assert!((mean - 1.0).abs() < 0.03, "{}: mean {mean}", b.as_str());
    }
    assert_eq!(BuiltinSeries::Periodic.raw_mean(), 1.0);
    assert_eq!(BuiltinSeries::Bursty.raw_mean(), 1.5);
    assert_eq!(BuiltinSeries::Sporadic.raw_mean(), 0.125);

    // periodic: within 1 ± (0.8 + 0.1), period 300.
    let p = BuiltinSeries::Periodic.generate(1, 3_000);
    assert!(p.iter().all(|x| (0.1 - 1e-12..=1.9 + 1e-12).contains(x)));
    let lag_300: f64 = p
        .windows(301)
        .map(|w| (w[300] - w[0]).abs())
        .fold(0.0, f64::max);
    assert!(lag_300 <= 0.2 + 1e-12, "{lag_300}");

    // bursty: levels 1/3 (base) or 2..4 (bursts); about a quarter of the steps in bursts.
    let b = BuiltinSeries::Bursty.generate(1, 200_000);
    assert!(
        b.iter()
            .all(|&x| (x - 1.0 / 3.0).abs() < 1e-12 || (2.0..=4.0).contains(&x))
    );
    let burst_share = b.iter().filter(|&&x| x > 1.0).count() as f64 / b.len() as f64;
    assert!((burst_share - 0.25).abs() < 0.03, "{burst_share}");

    // sporadic: 0 or spikes of 8..32; about 5% of the steps.
    let s = BuiltinSeries::Sporadic.generate(1, 200_000);
    assert!(s.iter().all(|&x| x == 0.0 || (8.0..=32.0).contains(&x)));
    let spike_share = s.iter().filter(|&&x| x > 0.0).count() as f64 / s.len() as f64;
    assert!((spike_share - 0.05).abs() < 0.003, "{spike_share}");
}
