//! dilu-scheduler: a secondary Kubernetes scheduler that binds Dilu's pods to a node *and a device*, placing
//! through the same [`Ledger`](dilu_core::ledger::Ledger) and policy [`Placer`](dilu_core::placement::Placer)
//! as every other Dilu scheduler (`docs/kubernetes.md`).
//!
//! It places nothing on a cordoned node (`spec.unschedulable`) or on a lost one (its node agent's Lease ran
//! out, [`crate::nodes`]).
//!
//! It binds the pods whose `spec.schedulerName` is [`SCHEDULER_NAME`](crate::meta::SCHEDULER_NAME) and that
//! have no node yet, in the watched namespace(s). Each carries the [`FUNCTION`](crate::meta::FUNCTION) label
//! and the [`BOOKING`](crate::meta::BOOKING) annotation, which give its ledger request. The ledger is rebuilt
//! from the Nodes' [`INVENTORY`](crate::meta::INVENTORY) and the bound pods' [`ASSIGNMENT`]
//! (crate::meta::ASSIGNMENT); a bind is one `POST …/pods/{name}/binding` whose annotations carry the
//! assignment, which the API server writes onto the pod in the same update that sets `spec.nodeName`.
//!
//! Two layers:
//! - [`Scheduling`] (`state`): the pure state and decisions, no I/O and no clock, unit-tested with fakes;
//! - [`run`] (`io`): the watches, the binds (each its own task, up to
//!   [`SchedulerConfig::max_in_flight`] at once, no lock around them) and the status writes.

mod io;
mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dilu_core::ledger::LedgerError;
use dilu_core::policy::PolicyName;

pub use self::io::{pod_view, run};
pub use self::state::{Bind, BindOutcome, ConditionUpdate, Nanos, PodView, Scheduling, Settings};

/// What dilu-scheduler has done so far, counted while it runs; the caller keeps an `Arc` and reads
/// [`Counters::snapshot`] whenever it likes.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) binds: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) gone: AtomicU64,
    pub(crate) unschedulable: AtomicU64,
    pub(crate) adopted: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Binds the API server accepted.
    pub binds: u64,
    /// Binds that failed for a reason other than a conflict or a missing pod (released, retried later), and
    /// placements the ledger refused after the placer chose.
    pub failures: u64,
    /// Binds refused with 409 (the pod was bound already, or being deleted); what the pod had was adopted.
    pub conflicts: u64,
    /// Binds refused with 404 (the pod was gone); released.
    pub gone: u64,
    /// Placement attempts that found no device with room.
    pub unschedulable: u64,
    /// Bound pods booked from their assignment (at start, after a restart, or bound by someone else).
    pub adopted: u64,
}

impl Counters {
    /// Appends the counters as Prometheus counters (`dilu_scheduler_*_total`) to `out`.
    pub fn render(&self, out: &mut String) {
        let c = self.snapshot();
        for (name, help, value) in [
            (
                "dilu_scheduler_binds_total",
                "Binds the API server accepted.",
                c.binds,
            ),
            (
                "dilu_scheduler_bind_failures_total",
                "Binds that failed (released and retried), and placements the ledger refused.",
                c.failures,
            ),
            (
                "dilu_scheduler_bind_conflicts_total",
                "Binds refused with 409 (the pod was bound already or being deleted; adopted).",
                c.conflicts,
            ),
            (
                "dilu_scheduler_pods_gone_total",
                "Binds refused with 404 (the pod was gone).",
                c.gone,
            ),
            (
                "dilu_scheduler_unschedulable_total",
                "Placement attempts that found no device with room.",
                c.unschedulable,
            ),
            (
                "dilu_scheduler_adopted_total",
                "Bound pods booked from their assignment.",
                c.adopted,
            ),
        ] {
            dilu_core::prometheus::Family::new(out, name, "counter", help)
                .sample(&[], value as f64);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            binds: get(&self.binds),
            failures: get(&self.failures),
            conflicts: get(&self.conflicts),
            gone: get(&self.gone),
            unschedulable: get(&self.unschedulable),
            adopted: get(&self.adopted),
        }
    }
}

/// How dilu-scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The namespace whose pods it binds; `None`: all namespaces.
    pub namespace: Option<String>,
    /// The policy whose placer decides (default `dilu`).
    pub policy: PolicyName,
    /// The `spec.schedulerName` it serves (default [`crate::meta::SCHEDULER_NAME`]).
    pub scheduler_name: String,
    /// The most binds in flight at once (default 64; 0 counts as 1).
    pub max_in_flight: usize,
    /// The first back-off after a failed bind (default 1 s), doubling per failure in a row.
    pub backoff_initial: Duration,
    /// The longest back-off (default 60 s).
    pub backoff_max: Duration,
    /// Where it counts what it does; keep a clone to read it.
    pub counters: Arc<Counters>,
    /// The namespace of the node agents' Leases (default [`crate::meta::NODE_LEASE_NAMESPACE`]): nothing is
    /// placed on a node whose Lease ran out ([`crate::nodes`]). `None`: Leases are not followed.
    pub node_lease_namespace: Option<String>,
    /// Whether it writes Kubernetes Events (`Scheduled`, `FailedScheduling`) on the pods (default true).
    pub events: bool,
    /// Where its event writer counts; keep a clone to read it.
    pub event_counts: Arc<crate::events::EventCounts>,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            namespace: None,
            policy: PolicyName::Dilu,
            scheduler_name: crate::meta::SCHEDULER_NAME.to_string(),
            max_in_flight: 64,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            counters: Arc::new(Counters::default()),
            node_lease_namespace: Some(crate::meta::NODE_LEASE_NAMESPACE.to_string()),
            events: true,
            event_counts: Arc::default(),
        }
    }
}

impl SchedulerConfig {
    /// The core's settings.
    pub fn settings(&self) -> Settings {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Settings {
            max_in_flight: self.max_in_flight.max(1),
            backoff_initial: nanos(self.backoff_initial),
            backoff_max: nanos(self.backoff_max),
        }
    }
}

/// Why dilu-scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The ledger could not be created.
    #[error("dilu-scheduler: ledger: {0}")]
    Ledger(#[from] LedgerError),
}
