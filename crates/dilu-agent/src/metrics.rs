//! `GET /metrics`: the agent's state in the Prometheus text exposition format (checked by
//! `promtool check metrics` in the tests).

use std::sync::atomic::Ordering::Relaxed;

use dilu_core::prometheus::Family;

use dilu_api::agent::{Budgeting, InstancePhase};

use crate::agent::Agent;
use crate::ticker::LATENESS_BUCKETS_S;

/// Renders every metric of `agent`.
pub fn render(agent: &Agent) -> String {
    let mut out = String::new();
    let budgets = agent.device_budgets();

    let mut f = Family::new(
        &mut out,
        "dilu_agent_device_info",
        "gauge",
        "Devices of this node (value 1).",
    );
    for d in agent.devices() {
        f.sample(
            &[
                ("device", &d.uuid),
                ("kind", d.kind.name()),
                ("name", &d.name),
                ("source", &d.source),
            ],
            1.0,
        );
    }
    let mut f = Family::new(
        &mut out,
        "dilu_agent_device_capacity_units",
        "gauge",
        "Cost units a device executes per window, as used for budgets.",
    );
    for b in &budgets {
        f.sample(&[("device", &b.device)], b.capacity_per_window as f64);
    }
    let mut f = Family::new(
        &mut out,
        "dilu_agent_device_requested_ratio",
        "gauge",
        "Sum of the requests of a device's instances, as a fraction of the device.",
    );
    for b in &budgets {
        f.sample(&[("device", &b.device)], b.requested);
    }
    let mut f = Family::new(
        &mut out,
        "dilu_agent_device_training_budget_ratio",
        "gauge",
        "The vertical controller's training budget multiplier per device (RCKM: training gets request times this while inference is busy; 1 for controllers without one).",
    );
    for b in &budgets {
        f.sample(&[("device", &b.device)], b.training_budget);
    }

    let rows = agent.metric_rows();
    let labels = |r: &crate::agent::InstanceRecord| -> Vec<(&'static str, String)> {
        vec![
            ("instance", r.id.clone()),
            ("device", r.spec.device.clone()),
            ("kind", r.spec.kind.as_str().to_string()),
        ]
    };
    type Getter = fn(
        &crate::agent::InstanceRecord,
        Option<&Budgeting>,
        Option<&dilu_quota::Snapshot>,
    ) -> Option<f64>;
    let families: [(&str, &str, &str, Getter); 15] = [
        (
            "dilu_agent_instance_up",
            "gauge",
            "1 while the instance's process runs.",
            |r, _, _| Some(if r.pid.is_some() { 1.0 } else { 0.0 }),
        ),
        (
            "dilu_agent_instance_ready",
            "gauge",
            "1 when the instance is ready.",
            |r, _, _| {
                Some(if r.status == InstancePhase::Ready {
                    1.0
                } else {
                    0.0
                })
            },
        ),
        (
            "dilu_agent_instance_restarts_total",
            "counter",
            "Restarts of the instance's process.",
            |r, _, _| Some(f64::from(r.restarts)),
        ),
        (
            "dilu_agent_instance_request_ratio",
            "gauge",
            "Guaranteed share of the device.",
            |r, _, _| Some(r.spec.quota.request),
        ),
        (
            "dilu_agent_instance_limit_ratio",
            "gauge",
            "Most of the device the instance may use.",
            |r, _, _| Some(r.spec.quota.limit),
        ),
        (
            "dilu_agent_instance_share_ratio",
            "gauge",
            "Share of the device granted for the current window.",
            |_, v, _| v.map(|v| v.share),
        ),
        (
            "dilu_agent_instance_budget_units",
            "gauge",
            "Budget per window in cost units (+Inf when unlimited).",
            |_, v, _| v.map(|v| v.budget.map_or(f64::INFINITY, |b| b as f64)),
        ),
        (
            "dilu_agent_instance_usage_units",
            "gauge",
            "Cost units used in the last window.",
            |_, v, _| v.map(|v| v.usage_last_window as f64),
        ),
        (
            "dilu_agent_instance_usage_avg_units",
            "gauge",
            "Cost units used per window, averaged over about a second.",
            |_, v, _| v.map(|v| v.usage_avg_per_window),
        ),
        (
            "dilu_agent_instance_cost_units_total",
            "counter",
            "Cost units used since the channel was created.",
            |_, _, s| s.map(|s| s.cost_launched as f64),
        ),
        (
            "dilu_agent_instance_launches_total",
            "counter",
            "Launches (GPU) or work units (CPU) charged.",
            |_, _, s| s.map(|s| s.launches as f64),
        ),
        (
            "dilu_agent_instance_delayed_launches_total",
            "counter",
            "Launches that waited for budget.",
            |_, _, s| s.map(|s| s.launches_delayed as f64),
        ),
        (
            "dilu_agent_instance_delay_seconds_total",
            "counter",
            "Time launches spent waiting for budget.",
            |_, _, s| s.map(|s| s.delay_ns as f64 / 1e9),
        ),
        (
            "dilu_agent_instance_memory_bytes",
            "gauge",
            "Device memory the instance holds.",
            |_, _, s| s.map(|s| s.bytes_allocated as f64),
        ),
        (
            "dilu_agent_instance_alloc_failures_total",
            "counter",
            "Allocations refused by the memory cap.",
            |_, _, s| s.map(|s| s.alloc_failures as f64),
        ),
    ];
    for (name, kind, help, get) in families {
        let mut f = Family::new(&mut out, name, kind, help);
        for (record, view, snapshot) in &rows {
            if let Some(value) = get(record, view.as_ref(), snapshot.as_ref()) {
                let owned = labels(record);
                let borrowed: Vec<(&str, &str)> =
                    owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
                f.sample(&borrowed, value);
            }
        }
    }

    let stats = agent.tick_stats();
    let window = agent.config().window_ns.to_string();
    Family::new(
        &mut out,
        "dilu_agent_ticks_total",
        "counter",
        "Token manager ticks run.",
    )
    .sample(&[("window_ns", &window)], stats.ticks.load(Relaxed) as f64);
    Family::new(
        &mut out,
        "dilu_agent_late_ticks_total",
        "counter",
        "Ticks that started more than a fifth of a window after their deadline.",
    )
    .sample(&[], stats.late_ticks.load(Relaxed) as f64);
    Family::new(
        &mut out,
        "dilu_agent_skipped_windows_total",
        "counter",
        "Windows skipped because a tick ran more than a window late.",
    )
    .sample(&[], stats.skipped_windows.load(Relaxed) as f64);
    let cumulative: Vec<u64> = stats
        .lateness_buckets
        .iter()
        .map(|n| n.load(Relaxed))
        .collect();
    Family::new(
        &mut out,
        "dilu_agent_tick_lateness_seconds",
        "histogram",
        "How late ticks started after their window boundary.",
    )
    .histogram_cumulative(
        &[],
        &LATENESS_BUCKETS_S,
        &cumulative,
        stats.lateness_ns_sum.load(Relaxed) as f64 / 1e9,
        stats.ticks.load(Relaxed),
    );
    Family::new(
        &mut out,
        "dilu_agent_tick_busy_seconds_total",
        "counter",
        "Time spent inside token manager ticks.",
    )
    .sample(&[], stats.busy_ns_sum.load(Relaxed) as f64 / 1e9);
    Family::new(
        &mut out,
        "dilu_agent_tick_busy_max_seconds",
        "gauge",
        "Longest token manager tick so far.",
    )
    .sample(&[], stats.busy_ns_max.load(Relaxed) as f64 / 1e9);
    Family::new(
        &mut out,
        "dilu_agent_uptime_seconds",
        "gauge",
        "Time since the agent started.",
    )
    .sample(&[], agent.uptime().as_secs_f64());
    out
}
