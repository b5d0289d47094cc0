//! `GET /metrics`: the agent's state in the Prometheus text exposition format (checked by
//! `promtool check metrics` in the tests).

use std::sync::atomic::Ordering::Relaxed;

use dilu_core::prometheus::Family;

use dilu_api::agent::{Budgeting, Counters, InstancePhase};

use crate::agent::{Agent, counters};
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
        "dilu_agent_device_healthy",
        "gauge",
        "1 while a device may be given work; 0 after a critical Xid or while NVML cannot reach it.",
    );
    for d in agent.devices() {
        let healthy = agent.health().health(&d.uuid).is_healthy();
        f.sample(&[("device", &d.uuid)], if healthy { 1.0 } else { 0.0 });
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

    let rows = rows(agent);
    type Getter = fn(&Row) -> Option<f64>;
    let families: [(&str, &str, &str, Getter); 15] = [
        (
            "dilu_agent_instance_up",
            "gauge",
            "1 while the instance's process runs (instances the agent starts).",
            |r| r.up,
        ),
        (
            "dilu_agent_instance_ready",
            "gauge",
            "1 when the instance is ready (instances the agent starts).",
            |r| r.ready,
        ),
        (
            "dilu_agent_instance_restarts_total",
            "counter",
            "Restarts of the instance's process (instances the agent starts).",
            |r| r.restarts,
        ),
        (
            "dilu_agent_instance_request_ratio",
            "gauge",
            "Guaranteed share of the device.",
            |r| Some(r.request),
        ),
        (
            "dilu_agent_instance_limit_ratio",
            "gauge",
            "Most of the device the instance may use.",
            |r| Some(r.limit),
        ),
        (
            "dilu_agent_instance_share_ratio",
            "gauge",
            "Share of the device granted for the current window.",
            |r| r.budgeting.as_ref().map(|v| v.share),
        ),
        (
            "dilu_agent_instance_budget_units",
            "gauge",
            "Budget per window in cost units (+Inf when unlimited).",
            |r| {
                r.budgeting
                    .as_ref()
                    .map(|v| v.budget.map_or(f64::INFINITY, |b| b as f64))
            },
        ),
        (
            "dilu_agent_instance_usage_units",
            "gauge",
            "Cost units used in the last window.",
            |r| r.budgeting.as_ref().map(|v| v.usage_last_window as f64),
        ),
        (
            "dilu_agent_instance_usage_avg_units",
            "gauge",
            "Cost units used per window, averaged over about a second.",
            |r| r.budgeting.as_ref().map(|v| v.usage_avg_per_window),
        ),
        (
            "dilu_agent_instance_cost_units_total",
            "counter",
            "Cost units used since the channel was created.",
            |r| r.counters.as_ref().map(|c| c.cost as f64),
        ),
        (
            "dilu_agent_instance_launches_total",
            "counter",
            "Launches (GPU) or work units (CPU) charged.",
            |r| r.counters.as_ref().map(|c| c.launches as f64),
        ),
        (
            "dilu_agent_instance_delayed_launches_total",
            "counter",
            "Launches that waited for budget.",
            |r| r.counters.as_ref().map(|c| c.launches_delayed as f64),
        ),
        (
            "dilu_agent_instance_delay_seconds_total",
            "counter",
            "Time launches spent waiting for budget.",
            |r| r.counters.as_ref().map(|c| c.delay_seconds),
        ),
        (
            "dilu_agent_instance_memory_bytes",
            "gauge",
            "Device memory the instance holds.",
            |r| r.counters.as_ref().map(|c| c.memory_bytes as f64),
        ),
        (
            "dilu_agent_instance_alloc_failures_total",
            "counter",
            "Allocations refused by the memory cap.",
            |r| r.counters.as_ref().map(|c| c.alloc_failures as f64),
        ),
    ];
    for (name, kind, help, get) in families {
        let mut f = Family::new(&mut out, name, kind, help);
        for row in &rows {
            if let Some(value) = get(row) {
                let labels = [
                    ("instance", row.id.as_str()),
                    ("device", row.device.as_str()),
                    ("kind", row.kind),
                ];
                f.sample(&labels, value);
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

/// One budgeted channel as the per-instance families show it: an instance the agent runs, or an attached
/// channel (`instance` = the attached id), which has no process of the agent's and so no up/ready/restarts.
struct Row {
    id: String,
    device: String,
    kind: &'static str,
    up: Option<f64>,
    ready: Option<f64>,
    restarts: Option<f64>,
    request: f64,
    limit: f64,
    budgeting: Option<Budgeting>,
    counters: Option<Counters>,
}

fn rows(agent: &Agent) -> Vec<Row> {
    let instances = agent
        .metric_rows()
        .into_iter()
        .map(|(r, budgeting, snapshot)| Row {
            up: Some(if r.pid.is_some() { 1.0 } else { 0.0 }),
            ready: Some(if r.status == InstancePhase::Ready {
                1.0
            } else {
                0.0
            }),
            restarts: Some(f64::from(r.restarts)),
            request: r.spec.quota.request,
            limit: r.spec.quota.limit,
            kind: r.spec.kind.as_str(),
            device: r.spec.device,
            id: r.id,
            budgeting,
            counters: snapshot.as_ref().map(counters),
        });
    let attached = agent.attached().into_iter().map(|a| Row {
        up: None,
        ready: None,
        restarts: None,
        request: a.quota.request,
        limit: a.quota.limit,
        kind: a.kind.as_str(),
        device: a.device,
        id: a.id,
        budgeting: a.budgeting,
        counters: a.counters,
    });
    instances.chain(attached).collect()
}
