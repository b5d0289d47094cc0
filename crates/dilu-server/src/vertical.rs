//! Vertical reactions as events: the token manager re-divides each device every window, far too often to log
//! each grant, so this watcher samples the instances' shares every [`PERIOD`] and records one `vertical` event
//! per device when a share moved by at least [`MIN_CHANGE`] — who gained (busy), who was squeezed, from and to.
//! At most one event per device per [`MIN_GAP`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dilu_agent::Agent;
use dilu_api::EventKind;
use dilu_api::agent::InstanceStatus;
use dilu_control::Controller;
use serde_json::json;

/// How often the shares are sampled.
pub const PERIOD: Duration = Duration::from_millis(200);
/// The smallest change of a share that counts as a reaction.
pub const MIN_CHANGE: f64 = 0.05;
/// The least time between two events of one device.
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// One instance's share as last reported.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    device: String,
    share: f64,
    busy: bool,
    kind: &'static str,
}

/// A device's moves between two samples: (instance, kind, from, to, busy), largest gain first.
type Moves = Vec<(String, &'static str, f64, f64, bool)>;

/// The moves of at least [`MIN_CHANGE`] between `before` and `now`, per device.
fn moves(before: &BTreeMap<String, Seen>, now: &BTreeMap<String, Seen>) -> BTreeMap<String, Moves> {
    let mut out: BTreeMap<String, Moves> = BTreeMap::new();
    for (id, seen) in now {
        let Some(old) = before.get(id) else { continue };
        if old.device == seen.device && (seen.share - old.share).abs() >= MIN_CHANGE {
            out.entry(seen.device.clone()).or_default().push((
                id.clone(),
                seen.kind,
                old.share,
                seen.share,
                seen.busy,
            ));
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| (b.3 - b.2).total_cmp(&(a.3 - a.2)));
    }
    out
}

fn seen(instances: &[InstanceStatus]) -> BTreeMap<String, Seen> {
    instances
        .iter()
        .filter_map(|i| {
            let b = i.budgeting.as_ref()?;
            Some((
                i.id.clone(),
                Seen {
                    device: i.device.clone(),
                    share: b.share,
                    busy: b.busy,
                    kind: i.kind.as_str(),
                },
            ))
        })
        .collect()
}

/// The event's words for one device's moves.
fn describe(device: &str, moves: &Moves, owners: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = moves
        .iter()
        .map(|(id, kind, from, to, busy)| {
            let why = match (to > from, busy) {
                (true, true) => "busy",
                (true, false) => "released",
                (false, _) if *kind == "training" => "squeezed",
                (false, _) => "idle",
            };
            let function = owners.get(id).map(String::as_str).unwrap_or("-");
            format!("{id} ({function}, {kind}) {from:.2} -> {to:.2} ({why})")
        })
        .collect();
    format!("device {device} re-divided: {}", parts.join("; "))
}

/// Samples the agent's shares for the life of the runtime, recording reactions in the controller's event log.
pub async fn watch(agent: Arc<Agent>, controller: Arc<Controller>) {
    let mut before: BTreeMap<String, Seen> = BTreeMap::new();
    let mut last_event: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = seen(&agent.instances());
        let moved = moves(&before, &now);
        before = now;
        if moved.is_empty() {
            continue;
        }
        let owners = controller.owners();
        for (device, list) in moved {
            if last_event
                .get(&device)
                .is_some_and(|t| t.elapsed() < MIN_GAP)
            {
                continue;
            }
            last_event.insert(device.clone(), Instant::now());
            let function = list
                .first()
                .and_then(|m| owners.get(&m.0))
                .map(String::as_str);
            let data = json!({
                "device": device,
                "moves": list.iter().map(|(id, kind, from, to, busy)| json!({
                    "instance": id, "function": owners.get(id), "kind": kind,
                    "from": from, "to": to, "busy": busy,
                })).collect::<Vec<_>>(),
            });
            controller.events().record(
                EventKind::Vertical,
                function,
                list.first().map(|m| m.0.as_str()),
                describe(&device, &list, &owners),
                data,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(device: &str, share: f64, busy: bool, kind: &'static str) -> Seen {
        Seen {
            device: device.into(),
            share,
            busy,
            kind,
        }
    }

    #[test]
    fn a_burst_reads_as_who_gained_and_who_was_squeezed() {
        let before = BTreeMap::from([
            ("i1".to_string(), s("GPU-a", 0.3, false, "inference")),
            ("t1".to_string(), s("GPU-a", 1.0, true, "training")),
            ("x".to_string(), s("GPU-b", 0.5, false, "inference")),
        ]);
        let now = BTreeMap::from([
            ("i1".to_string(), s("GPU-a", 0.8, true, "inference")),
            ("t1".to_string(), s("GPU-a", 0.2, true, "training")),
            ("x".to_string(), s("GPU-b", 0.52, false, "inference")),
        ]);
        let m = moves(&before, &now);
        assert_eq!(m.len(), 1, "GPU-b moved less than the threshold");
        let owners = BTreeMap::from([
            ("i1".to_string(), "ocr".to_string()),
            ("t1".to_string(), "mlp".to_string()),
        ]);
        assert_eq!(
            describe("GPU-a", &m["GPU-a"], &owners),
            "device GPU-a re-divided: i1 (ocr, inference) 0.30 -> 0.80 (busy); t1 (mlp, training) 1.00 -> 0.20 \
             (squeezed)"
        );
    }
}
