//! One policy name selects the same components in the simulator and on the live platform. For every policy,
//! the simulator runs a small scenario and reports the components its engine ran (named by the objects
//! themselves), and a real `dilu up --policy NAME` runs a function and a training job and reports the
//! components that run (`GET /v1/policy`: the ledger's placer, each device's vertical controller in the agent,
//! each function's horizontal scaler). The names must be equal, and so must the registry's quota rules.

mod common;

use std::path::Path;
use std::time::Duration;

use common::platform::{UpProc, ensure_models};
use dilu_core::perf::builtin_model_names;
use dilu_core::policy::{Policy, PolicyName};
use dilu_sim::serve::scenario::parse_scenario;
use dilu_sim::serve::{prepare, run_policy};
use reqwest::Method;

const SCENARIO: &str = "
name: registry
duration_s: 20
seed: 3
cluster: { nodes: 1, gpus_per_node: 2 }
functions:
  - name: f
    model: resnet152
    slo_ms: 80
    max_instances: 2
    workload: { kind: poisson, rps: 50 }
training:
  - name: t
    model: gpt2_large
    gpus: 1
    sm_request: 0.3
    sm_limit: 0.6
";

#[test]
fn each_policy_name_selects_the_same_components_in_the_simulator_and_in_dilu_up() {
    let Some(cache) = ensure_models() else { return };
    let scenario =
        parse_scenario(SCENARIO, Path::new("."), &builtin_model_names()).expect("scenario");
    let setup = prepare(&scenario).expect("prepared");
    let model = cache.join("onnx-light/light_squeezenet.onnx");
    for name in PolicyName::ALL {
        let sim = run_policy(&setup, name)
            .expect("simulated")
            .components
            .expect("the engine reports its components");
        let registry = Policy::named(name).components();
        assert_eq!(
            (sim.inference_quota, sim.training_quota, sim.share_rule),
            (
                registry.inference_quota,
                registry.training_quota,
                registry.share_rule
            ),
            "{name}"
        );

        let dir = tempfile::tempdir().unwrap();
        let up = UpProc::start(
            &dir.path().join("data"),
            &[
                "--policy",
                name.as_str(),
                "--cpu-cores",
                "2",
                "--cpu-devices",
                "2",
            ],
        );
        let (s, b) = up.deploy_yaml(&format!(
            "name: f\nmodel: {{path: {}}}\nslo_ms: 1000\nquota: {{request: 0.2, limit: 0.5}}\n\
             scaling: {{capacity_rps: 10}}\n",
            model.display()
        ));
        assert_eq!(s, 201, "{name}: {b}");
        let (s, b) = up.call(
            Method::POST,
            "/v1/functions",
            Some((
                "application/yaml",
                b"name: t\nkind: training\nquota: {request: 0.2, limit: 0.5}\n".to_vec(),
            )),
            true,
        );
        assert_eq!(s, 201, "{name}: {b}");
        up.wait_running("f", 1, Duration::from_secs(60));
        let (_, live) = up.get("/v1/policy");
        let running = &live["running"];
        assert_eq!(live["policy"], name.as_str());
        assert_eq!(running["placer"], sim.placer, "{name}: {live:#}");
        let vertical = running["vertical"].as_object().expect("devices");
        assert_eq!(vertical.len(), 2, "{live:#}");
        for (device, controller) in vertical {
            assert_eq!(
                controller, sim.vertical,
                "{name}: device {device}: {live:#}"
            );
        }
        assert_eq!(
            running["horizontal"]["f"], sim.horizontal,
            "{name}: {live:#}"
        );
        assert_eq!(
            live["components"]["inference_quota"],
            serde_json::to_value(sim.inference_quota).unwrap(),
            "{name}"
        );
        println!(
            "{name}: placer {}, vertical {}, horizontal {} — the same in the simulator and in dilu up",
            sim.placer, sim.vertical, sim.horizontal
        );
    }
}
