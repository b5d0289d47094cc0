//! The control plane's own metrics (functions, instances, scaling and profiling actions), rendered with the
//! gateway's and the node's into one `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use std::time::Duration;

use dilu_core::prometheus::{AtomicHistogram, Family, STARTUP_BUCKETS_S};

#[derive(Default)]
struct Counts {
    deployed: u64,
    deleted: u64,
    instances_started: BTreeMap<String, u64>,
    instances_lost: BTreeMap<String, u64>,
    scaling: BTreeMap<(String, &'static str), u64>,
    vertical: BTreeMap<String, u64>,
    profiling: BTreeMap<(String, String, &'static str), u64>,
    startup: BTreeMap<String, AtomicHistogram<{ STARTUP_BUCKETS_S.len() }>>,
}

/// Counters the control plane keeps.
#[derive(Default)]
pub struct ControlMetrics {
    counts: Mutex<Counts>,
}

impl ControlMetrics {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut dilu_core::sync::lock(&self.counts));
    }

    /// A function was deployed.
    pub fn deployed(&self) {
        self.with(|c| c.deployed += 1);
    }

    /// A function was deleted.
    pub fn deleted(&self) {
        self.with(|c| c.deleted += 1);
    }

    /// An instance of `function` was started.
    pub fn instance_started(&self, function: &str) {
        self.with(|c| *c.instances_started.entry(function.into()).or_default() += 1);
    }

    /// An instance of `function` became ready for the first time, `took` after it was created.
    pub fn instance_ready(&self, function: &str, took: Duration) {
        self.with(|c| {
            c.startup
                .entry(function.into())
                .or_insert_with(|| AtomicHistogram::new(&STARTUP_BUCKETS_S))
                .observe(took)
        });
    }

    /// An instance of `function` exited or vanished without being asked to.
    pub fn instance_lost(&self, function: &str) {
        self.with(|c| *c.instances_lost.entry(function.into()).or_default() += 1);
    }

    /// A horizontal action: `out`, `in` or `cold-start`.
    pub fn scaling_action(&self, function: &str, direction: &'static str) {
        self.with(|c| *c.scaling.entry((function.into(), direction)).or_default() += 1);
    }

    /// A quota change sent to the agent for one instance.
    pub fn vertical_action(&self, function: &str) {
        self.with(|c| *c.vertical.entry(function.into()).or_default() += 1);
    }

    /// A profiling (or calibration) run finished.
    pub fn profiled(&self, function: &str, source: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.with(|c| {
            *c.profiling
                .entry((function.into(), source.into(), result))
                .or_default() += 1
        });
    }

    /// Appends the families; `instances` is (function, state, count) of what runs now.
    pub fn render(
        &self,
        out: &mut String,
        functions: usize,
        instances: &[(String, &'static str, usize)],
    ) {
        let c = dilu_core::sync::lock(&self.counts);
        Family::new(
            out,
            "dilu_control_functions",
            "gauge",
            "Functions deployed.",
        )
        .sample(&[], functions as f64);
        let mut f = Family::new(
            out,
            "dilu_control_instances",
            "gauge",
            "Instances by function and state.",
        );
        for (function, state, n) in instances {
            f.sample(&[("function", function), ("state", state)], *n as f64);
        }
        let mut f = Family::new(
            out,
            "dilu_control_deployments_total",
            "counter",
            "Functions deployed and deleted.",
        );
        f.sample(&[("action", "deploy")], c.deployed as f64);
        f.sample(&[("action", "delete")], c.deleted as f64);
        let mut f = Family::new(
            out,
            "dilu_control_instances_started_total",
            "counter",
            "Instances started.",
        );
        for (function, n) in &c.instances_started {
            f.sample(&[("function", function)], *n as f64);
        }
        let mut f = Family::new(
            out,
            "dilu_control_instance_startup_seconds",
            "histogram",
            "Time from an instance's creation to its first readiness (process start, model load, readiness probe), \
             as the control plane sees it (to one reconcile pass).",
        );
        for (function, h) in &c.startup {
            h.render(&mut f, &[("function", function)]);
        }
        let mut f = Family::new(
            out,
            "dilu_control_instances_lost_total",
            "counter",
            "Instances that exited or vanished without being asked to.",
        );
        for (function, n) in &c.instances_lost {
            f.sample(&[("function", function)], *n as f64);
        }
        let mut f = Family::new(
            out,
            "dilu_control_scaling_actions_total",
            "counter",
            "Horizontal scaling actions (out, in, cold-start).",
        );
        for ((function, direction), n) in &c.scaling {
            f.sample(
                &[("function", function), ("direction", direction)],
                *n as f64,
            );
        }
        let mut f = Family::new(
            out,
            "dilu_control_vertical_actions_total",
            "counter",
            "Quota changes sent to the node agent, per instance.",
        );
        for (function, n) in &c.vertical {
            f.sample(&[("function", function)], *n as f64);
        }
        let mut f = Family::new(
            out,
            "dilu_control_profiling_runs_total",
            "counter",
            "Profiling runs.",
        );
        for ((function, source, result), n) in &c.profiling {
            f.sample(
                &[
                    ("function", function),
                    ("source", source),
                    ("result", result),
                ],
                *n as f64,
            );
        }
    }
}
