//! The device plugin's preference hook: which device the kubelet should give the container it admits next.
//!
//! The kubelet tells the device plugin nothing about the pod (`docs/kubernetes.md`, "The device plugin"), but it
//! admits the pods bound to its node one at a time, in the order it sees them bound. So the next allocation is
//! for the oldest pod bound here, with an assignment, that the kubelet has not admitted yet; its assigned device
//! is the answer. Each answer *claims* that pod, so that the next question is answered with the pod after it; a
//! claim lapses after [`CLAIM_TTL`] (the kubelet refused the pod, or asked for another resource), and is dropped
//! when the pod shows it was admitted or goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reconcile::{Order, PodState};

/// How long an answered pod is skipped while the API server does not yet show it admitted.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// A pod the kubelet has not admitted yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// The pod UID.
    pub uid: String,
    /// Its assigned device.
    pub device: String,
    /// Admission order.
    pub order: Order,
}

/// The pods waiting for admission, oldest first: bound here, with a readable assignment, not admitted, not
/// being deleted.
pub fn waiting<'a>(pods: impl IntoIterator<Item = &'a PodState>) -> Vec<Waiting> {
    let mut list: Vec<Waiting> = pods
        .into_iter()
        .filter(|p| !p.admitted && !p.deleting)
        .filter_map(|p| {
            Some(Waiting {
                uid: p.uid.clone(),
                device: p.device.clone()?,
                order: p.order.clone(),
            })
        })
        .collect();
    list.sort_by(|a, b| (&a.order, &a.uid).cmp(&(&b.order, &b.uid)));
    list
}

/// The oldest waiting pod whose device is a candidate and that no live claim holds.
pub fn pick<'a>(
    waiting: &'a [Waiting],
    claims: &HashMap<String, Instant>,
    candidates: &[&str],
    now: Instant,
) -> Option<&'a Waiting> {
    waiting.iter().find(|w| {
        candidates.contains(&w.device.as_str())
            && claims
                .get(&w.uid)
                .is_none_or(|at| now.saturating_duration_since(*at) >= CLAIM_TTL)
    })
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiting>,
    claims: HashMap<String, Instant>,
}

/// The hook's shared state: the node agent keeps the waiting pods current, the device plugin asks
/// [`NodePreference::preferred`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct NodePreference {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for NodePreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePreference").finish_non_exhaustive()
    }
}

impl NodePreference {
    /// An empty preference (answers `None` until pods are known).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the waiting pods; claims of pods no longer waiting are dropped.
    pub fn set_waiting(&self, waiting: Vec<Waiting>) {
        let mut inner = dilu_core::sync::lock(&self.inner);
        inner
            .claims
            .retain(|uid, _| waiting.iter().any(|w| &w.uid == uid));
        inner.waiting = waiting;
    }

    /// The device for the next container, among `candidates` (the healthy devices with free shares): the
    /// assigned device of the oldest unclaimed waiting pod on one of them, which it then claims. `None` when no
    /// waiting pod fits (the plugin then picks by itself).
    pub fn preferred(&self, candidates: &[&str]) -> Option<String> {
        let mut inner = dilu_core::sync::lock(&self.inner);
        let now = Instant::now();
        let chosen = pick(&inner.waiting, &inner.claims, candidates, now)?.clone();
        inner.claims.insert(chosen.uid, now);
        Some(chosen.device)
    }

    /// The waiting pods' UIDs, oldest first (for tests and logs).
    pub fn waiting_uids(&self) -> Vec<String> {
        dilu_core::sync::lock(&self.inner)
            .waiting
            .iter()
            .map(|w| w.uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::reconcile::Want;

    fn state(uid: &str, device: &str, bound: &str, admitted: bool) -> PodState {
        PodState {
            uid: uid.into(),
            key: format!("default/{uid}"),
            want: Want::Keep(String::new()),
            device: Some(device.into()),
            admitted,
            deleting: false,
            order: Order {
                bound: bound.into(),
                ..Order::default()
            },
        }
    }

    #[test]
    fn the_oldest_waiting_pod_gets_its_device_and_the_next_question_the_next_pod() {
        let pods = [
            state("c", "GPU-2", "2024-01-01T00:00:03Z", false),
            state("a", "GPU-1", "2024-01-01T00:00:01Z", false),
            state("b", "GPU-3", "2024-01-01T00:00:02Z", false),
            state("z", "GPU-3", "2024-01-01T00:00:00Z", true),
        ];
        let preference = NodePreference::new();
        preference.set_waiting(waiting(&pods));
        assert_eq!(preference.waiting_uids(), ["a", "b", "c"]);
        let all = ["GPU-1", "GPU-2", "GPU-3"];
        assert_eq!(preference.preferred(&all).as_deref(), Some("GPU-1"));
        assert_eq!(preference.preferred(&all).as_deref(), Some("GPU-3"));
        assert_eq!(preference.preferred(&all).as_deref(), Some("GPU-2"));
        assert_eq!(preference.preferred(&all), None);
    }

    #[test]
    fn pods_on_devices_that_are_not_candidates_are_skipped() {
        // The CPU plugin asks about CPU devices only; a GPU pod first in line does not answer it.
        let pods = [
            state("a", "GPU-1", "1", false),
            state("b", "CPU-1", "2", false),
        ];
        let preference = NodePreference::new();
        preference.set_waiting(waiting(&pods));
        assert_eq!(preference.preferred(&["CPU-1"]).as_deref(), Some("CPU-1"));
        assert_eq!(preference.preferred(&["GPU-1"]).as_deref(), Some("GPU-1"));
    }

    #[test]
    fn claims_lapse_and_are_dropped_when_the_pod_is_admitted() {
        let list = waiting(&[state("a", "GPU-1", "1", false)]);
        let t0 = Instant::now();
        let claims = HashMap::from([("a".to_string(), t0)]);
        assert!(pick(&list, &claims, &["GPU-1"], t0 + Duration::from_secs(1)).is_none());
        assert_eq!(
            pick(&list, &claims, &["GPU-1"], t0 + CLAIM_TTL).map(|w| w.uid.as_str()),
            Some("a")
        );
        let preference = NodePreference::new();
        preference.set_waiting(list);
        assert!(preference.preferred(&["GPU-1"]).is_some());
        preference.set_waiting(Vec::new());
        assert!(dilu_core::sync::lock(&preference.inner).claims.is_empty());
    }
}
