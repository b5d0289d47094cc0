//! Calibrated profiles in scenarios (`profile:` on functions and training jobs, `sm_request`/`sm_limit` on
//! functions): parsing, its errors, and that the simulator runs from the calibrated table.

use std::path::{Path, PathBuf};

use dilu_sim::serve::scenario::{Scenario, ScenarioError, load_scenario};
use dilu_sim::serve::{PolicyName, prepare, run_policy};

const MODELS: &[&str] = &["resnet152", "bert_base"];

/// A complete 2 × 3 grid: batch 1 and 2 at 25, 50 and 100 % (per-batch seconds, samples/s).
const TABLE: &str = "1,25,0.200000,5.0\n1,50,0.100000,10.0\n1,100,0.100000,10.0\n\
                     2,25,0.360000,5.555556\n2,50,0.180000,11.111111\n2,100,0.180000,11.111111\n";

/// A training table: one batch (64) at four shares; iterations/s = 1 / latency.
const TRAINING_TABLE: &str = "64,25,0.010000,6400.0\n64,50,0.005000,12800.0\n64,75,0.004000,16000.0\n64,100,0.004000,16000.0\n";

fn fixture_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("serve_profile")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.csv"), TABLE).unwrap();
    std::fs::write(dir.join("t.csv"), TRAINING_TABLE).unwrap();
    dir
}

/// A one-device scenario whose function lines are `function` (8 spaces of indent inside the entry) and whose
/// document ends with `tail`.
fn scenario(function: &str, tail: &str) -> String {
    format!(
        "name: t\nduration_s: 60\nseed: 3\ncluster: {{nodes: 1, gpus_per_node: 1, gpu_mem_gb: 8}}\n\
         policies: [dilu]\nfunctions:\n  - name: f\n    model: my-cnn\n    slo_ms: 500\n\
         \x20   workload: {{kind: poisson, rps: 2}}\n{function}{tail}"
    )
}

const FULL_FUNCTION: &str = "    profile: m.csv\n    memory_gb: 0.5\n    cold_start_s: 1.5\n    batch: 2\n    sm_request: 0.25\n    sm_limit: 0.5\n";

fn load(dir: &Path, yaml: &str) -> Result<Scenario, ScenarioError> {
    let path = dir.join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    load_scenario(&path, MODELS)
}

fn assert_error(dir: &Path, yaml: &str, fragments: &[&str]) {
    let err = match load(dir, yaml) {
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

#[test]
fn a_function_and_a_job_run_from_calibrated_tables() {
    let dir = fixture_dir("runs");
    let yaml = scenario(
        FULL_FUNCTION,
        "training:\n  - name: j\n    model: my-mlp\n    profile: t.csv\n    gpus: 1\n    memory_gb: 0.5\n    sm_request: 0.25\n    sm_limit: 0.5\n",
    );
    let s = load(&dir, &yaml).unwrap();
    let f = &s.functions[0];
    assert_eq!(f.model, "my-cnn");
    assert_eq!(f.profile.as_ref().map(|t| t.points().len()), Some(6));
    assert_eq!((f.sm_request, f.sm_limit), (Some(0.25), Some(0.5)));
    assert_eq!(
        s.training[0].profile.as_ref().map(|t| t.max_batch()),
        Some(64)
    );

    let setup = prepare(&s).unwrap();
    let p = &setup.prepared.functions[0];
    // The configured quota is taken as it is, its capacity read from the calibrated table.
    assert_eq!(p.quota.batch, 2);
    assert_eq!((p.quota.sm_request, p.quota.sm_limit), (0.25, 0.5));
    assert!(
        (p.quota.capacity_rps - 2.0 / 0.36).abs() < 1e-3,
        "{:?}",
        p.quota
    );
    assert_eq!(p.mem_mib, 512);
    assert_eq!(p.cold_start_ns, 1_500_000_000);
    assert_eq!(setup.prepared.training[0].mem_mib, 512);

    let run = run_policy(&setup, PolicyName::Dilu).unwrap();
    let r = &run.report;
    assert!(r.requests > 60, "{r:?}");
    // At 2 req/s nothing queues: a request takes at least one batch-1 execution at the limit (100 ms) and
    // rarely more than a batch of 2 at the request.
    assert!(r.p50_ms >= 100.0 && r.p50_ms < 400.0, "{r:?}");
    // Training never gets more than its limit (50 %): at most 12800 / 16000 of its full-device throughput.
    assert!(
        r.training_jobs[0] > 0.0 && r.training_jobs[0] <= 0.8 + 1e-9,
        "{r:?}"
    );
    // Deterministic.
    let again = run_policy(&setup, PolicyName::Dilu).unwrap();
    assert_eq!(again.latencies_ms, run.latencies_ms);
}

#[test]
fn without_a_profile_the_model_must_be_known() {
    let dir = fixture_dir("unknown");
    assert_error(
        &dir,
        &scenario("", ""),
        &["functions[0].model", "\"my-cnn\"", "unknown model"],
    );
}

#[test]
fn a_profile_needs_memory_and_cold_start() {
    let dir = fixture_dir("needs");
    assert_error(
        &dir,
        &scenario("    profile: m.csv\n    cold_start_s: 1\n", ""),
        &[
            "functions[0].memory_gb",
            "required with profile (\"m.csv\")",
        ],
    );
    assert_error(
        &dir,
        &scenario("    profile: m.csv\n    memory_gb: 1\n", ""),
        &["functions[0].cold_start_s", "required with profile"],
    );
    assert_error(
        &dir,
        &scenario(
            FULL_FUNCTION,
            "training:\n  - name: j\n    model: my-mlp\n    profile: t.csv\n    gpus: 1\n",
        ),
        &["training[0].memory_gb", "required with profile (\"t.csv\")"],
    );
    // The model name with a profile is still a name.
    assert_error(
        &dir,
        &scenario(FULL_FUNCTION, "").replace("model: my-cnn", "model: \"my cnn\""),
        &["functions[0].model", "must be 1-64 characters"],
    );
}

#[test]
fn profile_file_errors_name_the_key_the_file_and_the_rule() {
    let dir = fixture_dir("files");
    assert_error(
        &dir,
        &scenario(&FULL_FUNCTION.replace("m.csv", "absent.csv"), ""),
        &["functions[0].profile", "absent.csv"],
    );
    std::fs::write(
        dir.join("holes.csv"),
        "1,25,0.2,5\n1,50,0.1,10\n2,25,0.36,5.5\n",
    )
    .unwrap();
    assert_error(
        &dir,
        &scenario(&FULL_FUNCTION.replace("m.csv", "holes.csv"), ""),
        &[
            "functions[0].profile",
            "holes.csv",
            "batch=2 sm_pct=50 is missing",
        ],
    );
    std::fs::write(dir.join("bad.csv"), "1,25,0.2,5\n1,50,fast,10\n").unwrap();
    assert_error(
        &dir,
        &scenario(&FULL_FUNCTION.replace("m.csv", "bad.csv"), ""),
        &["functions[0].profile", "bad.csv", "line 2", "fast"],
    );
}

#[test]
fn configured_quota_rules() {
    let dir = fixture_dir("quota");
    let base = "    profile: m.csv\n    memory_gb: 0.5\n    cold_start_s: 1.5\n";
    assert_error(
        &dir,
        &scenario(&format!("{base}    sm_request: 0.25\n"), ""),
        &["functions[0].sm_request = 0.25", "needs batch"],
    );
    assert_error(
        &dir,
        &scenario(&format!("{base}    batch: 2\n    sm_limit: 0.5\n"), ""),
        &["functions[0].sm_limit = 0.5", "needs sm_request"],
    );
    assert_error(
        &dir,
        &scenario(
            &format!("{base}    batch: 2\n    sm_request: 0.5\n    sm_limit: 0.25\n"),
            "",
        ),
        &["functions[0].sm_limit = 0.25", "must be ≥ sm_request (0.5)"],
    );
    assert_error(
        &dir,
        &scenario(&format!("{base}    batch: 2\n    sm_request: 0\n"), ""),
        &["functions[0].sm_request = 0", "must be in (0, 1]"],
    );
    // Without sm_limit the limit is the request: a fixed share.
    let s = load(
        &dir,
        &scenario(&format!("{base}    batch: 2\n    sm_request: 0.5\n"), ""),
    )
    .unwrap();
    let setup = prepare(&s).unwrap();
    let q = setup.prepared.functions[0].quota;
    assert_eq!((q.sm_request, q.sm_limit), (0.5, 0.5));
}

#[test]
fn a_profile_without_a_configured_batch_is_profiled_by_the_search() {
    let dir = fixture_dir("search");
    let s = load(
        &dir,
        &scenario(
            "    profile: m.csv\n    memory_gb: 0.5\n    cold_start_s: 1\n",
            "",
        ),
    )
    .unwrap();
    let setup = prepare(&s).unwrap();
    let q = setup.prepared.functions[0].quota;
    // SLO 500 ms × slo_fraction 0.5 = 250 ms: batch 2 at 50 % (180 ms) fits; the search measured the table.
    assert!(q.batch >= 1 && q.sm_request > 0.0, "{q:?}");
    assert!(
        setup.prepared.functions[0]
            .perf
            .slo_latency_s(q.batch, q.sm_request)
            <= 0.25
    );
    assert!(setup.profiles[0].measured > 0);
}

#[test]
fn shipped_live_scenarios_parse_and_simulate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    for name in ["live-colocation.yaml", "live-scale-out.yaml"] {
        let s = load_scenario(&root.join(name), MODELS).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((s.cluster.nodes, s.cluster.gpus_per_node), (1, 1), "{name}");
        assert!(s.functions.iter().all(|f| f.profile.is_some()), "{name}");
        let setup = prepare(&s).unwrap();
        let run = run_policy(&setup, PolicyName::Dilu).unwrap();
        assert!(run.report.requests > 0, "{name}");
    }
}
