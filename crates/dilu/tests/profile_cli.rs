//! End-to-end checks of `dilu profile`: the real binary on embedded and on-disk tables.

use std::process::Command;

fn dilu(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dilu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64()
        .is_some_and(|x| (x - want).abs() <= 1e-9 * want.abs().max(1.0))
}

/// ResNet-152 at a 40 ms SLO on the embedded table: HGS picks batch 16 at 30% after 9 of 60 points, the
/// exhaustive optimum too; the quota follows (capacity = 16 / 0.03997 s).
#[test]
fn builtin_resnet152_json() {
    let (ok, out, err) = dilu(&[
        "profile",
        "--builtin",
        "resnet152",
        "--slo-ms",
        "40",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["model"], "resnet152");
    assert_eq!(v["kind"], "inference");
    assert_eq!(v["latency_unit"], "per_batch");
    assert_eq!(v["feasible"], true);
    assert_eq!(v["chosen"]["batch"], 16);
    assert_eq!(v["chosen"]["sm_pct"], 30);
    assert!(close(&v["chosen"]["latency_ms"], 39.97));
    assert!(close(&v["chosen"]["te"], 16.0 / 0.03997 / 30.0));
    assert!(close(&v["quota"]["sm_request"], 0.3));
    assert!(close(&v["quota"]["sm_limit"], 0.5));
    assert!(close(&v["quota"]["capacity_rps"], 16.0 / 0.03997));
    assert_eq!(v["quota"]["batch"], 16);
    assert_eq!(v["measured"], 9);
    assert_eq!(v["measured_points"].as_array().unwrap().len(), 9);
    assert_eq!(v["grid_points"], 60);
    assert_eq!(v["measured_against"], "table");
    assert_eq!(v["exhaustive"]["batch"], 16);
    assert_eq!(v["exhaustive"]["sm_pct"], 30);
    assert_eq!(v["matches_exhaustive"], true);
    assert_eq!(v["te_drop"], "rel:0.1");
}

/// The text report names the chosen point and the quota; aliases work.
#[test]
fn builtin_text_report_and_alias() {
    let (ok, out, err) = dilu(&["profile", "--builtin", "resnet-152", "--slo-ms", "40"]);
    assert!(ok, "{err}");
    assert!(out.contains("chosen:      batch 16 at 30% SM"), "{out}");
    assert!(out.contains("sm_request 0.30, sm_limit 0.50"), "{out}");
    assert!(out.contains("measured:    9 of 60 points"), "{out}");
    assert!(out.contains("HGS matches"), "{out}");
}

/// Training bisection on the largest-batch column, and an LLM's per-token report.
#[test]
fn training_and_llm() {
    let (ok, out, err) = dilu(&[
        "profile",
        "--builtin",
        "gpt2-large",
        "--kind",
        "training",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["kind"], "training");
    assert_eq!(v["batch"], 32);
    let pct = v["sm_request_pct"].as_f64().unwrap();
    let knee = v["curve_knee_pct"].as_f64().unwrap();
    assert!(pct >= knee && pct <= knee + 5.0, "{pct} vs {knee}");
    assert!(close(&v["quota"]["sm_limit"], 1.0));

    let (ok, out, err) = dilu(&[
        "profile",
        "--builtin",
        "llama2",
        "--slo-ms",
        "42",
        "--te-drop",
        "abs:0.2",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["latency_unit"], "per_token");
    assert_eq!(v["tokens_per_request"], 32);
    assert_eq!(v["te_drop"], "abs:0.2");
    assert_eq!(v["feasible"], true);
}

/// A malformed table fails with an error naming the file, line, field and rule.
#[test]
fn malformed_table_names_line_and_field() {
    let dir = std::env::temp_dir().join(format!("dilu-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bs_sm_bad.csv");
    std::fs::write(&path, "1,10,0.02,50\n1,120,0.01,100\n").unwrap();
    let p = path.display().to_string();
    let (ok, out, err) = dilu(&["profile", "--table", &p, "--slo-ms", "40"]);
    assert!(!ok, "{out}");
    assert!(err.contains(&p), "{err}");
    assert!(
        err.contains("line 2: field 'sm_pct' = \"120\": must be in 1..=100"),
        "{err}"
    );

    // A valid table that is not a full grid cannot become a performance model.
    std::fs::write(&path, "1,10,0.02,50\n1,20,0.01,100\n2,10,0.03,66\n").unwrap();
    let (ok, _, err) = dilu(&["profile", "--table", &p, "--slo-ms", "40"]);
    assert!(!ok);
    assert!(err.contains("batch=2 sm_pct=20 is missing"), "{err}");

    let (ok, _, err) = dilu(&["profile", "--builtin", "nope", "--slo-ms", "40"]);
    assert!(!ok);
    assert!(err.contains("unknown model"), "{err}");
    let (ok, _, err) = dilu(&["profile", "--builtin", "resnet152"]);
    assert!(!ok);
    assert!(err.contains("--slo-ms"), "{err}");
    let (ok, _, err) = dilu(&[
        "profile",
        "--builtin",
        "resnet152",
        "--slo-ms",
        "40",
        "--te-drop",
        "rel:2",
    ]);
    assert!(!ok);
    assert!(err.contains("te_drop"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A shared Dilu profile on disk gives the same answer as the calibration check (skipped without the data).
#[test]
fn shared_table_on_disk() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/dilu/profiles/bs_sm_llama2.csv");
    if !path.exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("required test data {} is missing (CI=true)", path.display());
        }
        eprintln!(
            "SKIPPED: test data {} not found; this test did not run",
            path.display()
        );
        return;
    }
    let p = path.display().to_string();
    let (ok, out, err) = dilu(&[
        "profile", "--table", &p, "--slo-ms", "42", "--format", "json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["model"], "llama2");
    assert_eq!(v["chosen"]["batch"], 8);
    assert_eq!(v["chosen"]["sm_pct"], 50);
    assert_eq!(v["measured"], 10);
    assert_eq!(v["matches_exhaustive"], true);
}
