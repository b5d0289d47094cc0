//! The layering rules of `docs/architecture.md`, checked on the workspace's manifests: the control plane and the
//! gateway never depend (directly or through another crate) on the node agent, the worker or the simulator; the
//! simulator never depends on a runtime crate; the interposer depends on the quota channel and libc only; and
//! `dilu-core` and `dilu-api` depend on no other runtime crate of the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Workspace crate → the workspace crates it uses as normal (not dev or build) dependencies.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(*n))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

fn closure(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(c) = todo.pop() {
        for d in graph.get(&c).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_crates_keep_their_layers() {
    let graph = workspace_graph();
    for c in ["dilu-control", "dilu-gateway"] {
        let deps = closure(&graph, c);
        for forbidden in ["dilu-agent", "dilu-worker", "dilu-sim", "dilu-server"] {
            assert!(
                !deps.contains(forbidden),
                "{c} depends on {forbidden}: {deps:?}"
            );
        }
        println!("{c} depends on {deps:?}");
    }
    let sim = closure(&graph, "dilu-sim");
    for runtime in [
        "dilu-agent",
        "dilu-worker",
        "dilu-control",
        "dilu-gateway",
        "dilu-server",
    ] {
        assert!(!sim.contains(runtime), "dilu-sim depends on {runtime}");
    }
    assert_eq!(
        closure(&graph, "dilu-cuda"),
        BTreeSet::from(["dilu-quota".to_string()])
    );
    assert!(closure(&graph, "dilu-core").is_empty());
    assert!(closure(&graph, "dilu-api").is_subset(&BTreeSet::from([
        "dilu-core".to_string(),
        "dilu-quota".to_string()
    ])));
}
