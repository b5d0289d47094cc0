//! The core against hand-made observations, in virtual time.

use std::collections::BTreeSet;
use std::sync::Arc;

use dilu_core::ledger::{DeviceClass, DeviceInventory, DeviceRef, Ledger, NodeInventory};
use dilu_core::policy::{Policy, PolicyName};
use dilu_core::scheduling::{PlacementRules, Taint, TaintEffect, Toleration};
use dilu_core::{InstanceKind, InstanceRequest};

use super::*;
use crate::meta::Assignment;

const SECOND: Nanos = 1_000_000_000;

fn node(name: &str, gpus: usize) -> NodeInventory {
    NodeInventory {
        name: name.into(),
        devices: (0..gpus)
            .map(|i| DeviceInventory {
                uuid: format!("GPU-{name}-{i}"),
                memory_mib: 81_920,
                gpu: true,
            })
            .collect(),
        ..NodeInventory::default()
    }
}

fn at(node: &str, i: usize) -> DeviceRef {
    DeviceRef {
        node: node.into(),
        device: format!("GPU-{node}-{i}"),
    }
}

fn request(sm_request: u32, sm_limit: u32) -> InstanceRequest {
    InstanceRequest {
        kind: InstanceKind::Inference,
        service: Some("f".into()),
        gpu_count: 1,
        sm_request,
        sm_limit,
        gpu_mem_mib: 1024,
        cpu_milli: 0,
        mem_mib: 0,
        gpu_types: Vec::new(),
    }
}

/// A pending pod of ours.
fn pod(name: &str, created: i64, sm_request: u32, sm_limit: u32) -> PodView {
    PodView {
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        created,
        ours: true,
        node_name: None,
        deleting: false,
        finished: false,
        request: Some(Ok(request(sm_request, sm_limit))),
        class: DeviceClass::Gpu,
        rules: PlacementRules::default(),
        assignment: None,
        unschedulable_message: None,
    }
}

/// The same pod, bound at `to` with its assignment (as the API server shows it after the binding).
fn bound(mut view: PodView, to: &DeviceRef) -> PodView {
    view.node_name = Some(to.node.clone());
    view.assignment = Some(Ok(Assignment::of(to)));
    view
}

fn core_with(max_in_flight: usize) -> (Scheduling, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let settings = Settings {
        max_in_flight,
        ..Settings::default()
    };
    let core = Scheduling::new(
        Policy::named(PolicyName::Dilu).placer(),
        settings,
        counters.clone(),
    )
    .unwrap();
    (core, counters)
}

/// Lists `nodes` and `pods` as the two watches' initial lists.
fn sync(core: &mut Scheduling, nodes: &[NodeInventory], pods: &[PodView]) {
    core.begin_node_list();
    for n in nodes {
        core.observe_node(&n.name, Some(Ok(n.clone())));
    }
    core.end_node_list();
    core.begin_pod_list();
    for p in pods {
        core.observe_pod(p.clone());
    }
    core.end_pod_list();
}

fn booked(core: &Scheduling, key: &str) -> Option<DeviceRef> {
    core.ledger().device_of(key).cloned()
}

fn sm(core: &Scheduling, at: &DeviceRef) -> u32 {
    (core.ledger().requested(at) * 1000.0).round() as u32
}

#[test]
fn nothing_is_placed_before_both_lists_and_bound_pods_are_adopted_first() {
    let (mut core, counters) = core_with(64);
    let old = bound(pod("old", 1, 700, 700), &at("n1", 0));
    core.begin_pod_list();
    core.observe_pod(old);
    core.observe_pod(pod("new", 2, 700, 700));
    core.end_pod_list();
    assert!(core.next_binds(0).is_empty(), "nodes not listed yet");
    core.begin_node_list();
    core.observe_node("n1", Some(Ok(node("n1", 2))));
    assert!(core.next_binds(0).is_empty(), "node list not complete");
    core.end_node_list();
    let binds = core.next_binds(0);
    assert_eq!(booked(&core, "ns/old"), Some(at("n1", 0)), "adopted");
    assert_eq!(counters.snapshot().adopted, 1);
    assert_eq!(binds.len(), 1);
    assert_eq!(binds[0].key(), "ns/new");
    assert_eq!(
        binds[0].at,
        at("n1", 1),
        "the adopted pod's device is taken"
    );
    assert_eq!(sm(&core, &at("n1", 0)), 700);
    assert_eq!(sm(&core, &at("n1", 1)), 700);
}

#[test]
fn pods_are_placed_in_creation_order_exactly_as_a_ledger_with_the_same_placer_places_them() {
    let nodes = [node("a", 2), node("c", 1), node("b", 3)];
    // Creation times with ties (seconds); names out of order.
    let shapes = [
        (300, 600),
        (500, 500),
        (200, 1000),
        (1000, 1000),
        (150, 300),
    ];
    let pods: Vec<PodView> = (0..30)
        .map(|i| {
            let (r, l) = shapes[i % shapes.len()];
            pod(&format!("p{:02}", (i * 7) % 30), (i as i64 * 13) % 5, r, l)
        })
        .collect();
    let (mut core, _) = core_with(1000);
    sync(&mut core, &nodes, &pods);
    let binds = core.next_binds(0);

    // The reference: a ledger over the nodes by name, placing the pods in (creation, namespace/name) order.
    let mut sorted_nodes = nodes.to_vec();
    sorted_nodes.sort_by(|x, y| x.name.cmp(&y.name));
    let mut reference =
        Ledger::new(&sorted_nodes, Policy::named(PolicyName::Dilu).placer()).unwrap();
    let mut order = pods.clone();
    order.sort_by_key(|x| (x.created, x.key()));
    let mut expected = Vec::new();
    for p in &order {
        let req = p.request.clone().unwrap().unwrap();
        if let Ok(to) = reference.place(&p.key(), &req, DeviceClass::Gpu) {
            expected.push((p.key(), to));
        }
    }
    let got: Vec<(String, DeviceRef)> = binds.iter().map(|b| (b.key(), b.at.clone())).collect();
    assert_eq!(got, expected);
    assert!(
        expected.len() < pods.len(),
        "some do not fit: {}",
        expected.len()
    );
    assert_eq!(core.pending(), pods.len() - expected.len());
}

#[test]
fn at_most_max_in_flight_binds_are_out() {
    let (mut core, counters) = core_with(2);
    let pods: Vec<PodView> = (0..5).map(|i| pod(&format!("p{i}"), 0, 100, 100)).collect();
    sync(&mut core, &[node("n", 1)], &pods);
    let first = core.next_binds(0);
    assert_eq!(first.len(), 2);
    assert!(core.next_binds(0).is_empty());
    core.bind_done(&first[0], BindOutcome::Bound, 0);
    let next = core.next_binds(0);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].key(), "ns/p2");
    assert_eq!(core.in_flight(), 2);
    assert_eq!(counters.snapshot().binds, 1);
    let lines = core.take_log();
    assert!(
        lines.contains(
            &"dilu-scheduler: bound ns/p0 to n/GPU-n-0 (request 0.10, limit 0.10)".to_string()
        ),
        "{lines:?}"
    );
}

#[test]
fn an_assumed_pod_is_booked_once_whatever_order_the_events_come_in() {
    let (mut core, _) = core_with(64);
    let p = pod("p", 0, 400, 600);
    let q = pod("q", 0, 300, 300);
    sync(&mut core, &[node("n", 1)], &[p.clone(), q.clone()]);
    let binds = core.next_binds(0);
    assert_eq!(binds.len(), 2);
    let to = at("n", 0);
    assert_eq!(sm(&core, &to), 700);

    // p: the API server answers, then a stale event (pending), then the event that shows it bound.
    core.bind_done(&binds[0], BindOutcome::Bound, 0);
    core.observe_pod(p.clone());
    assert!(
        core.next_binds(0).is_empty(),
        "a stale event does not requeue it"
    );
    core.observe_pod(bound(p.clone(), &to));
    assert!(core.next_binds(0).is_empty());
    assert_eq!(sm(&core, &to), 700, "confirmed, not booked twice");

    // q: the watch shows it bound before the API server's answer arrives.
    core.observe_pod(bound(q.clone(), &to));
    core.bind_done(&binds[1], BindOutcome::Bound, 0);
    core.observe_pod(bound(q, &to));
    assert!(core.next_binds(0).is_empty());
    assert_eq!(sm(&core, &to), 700);
    assert_eq!(core.in_flight(), 0);
    assert_eq!(core.pending(), 0);
}

#[test]
fn a_conflict_adopts_what_the_pod_has() {
    let (mut core, counters) = core_with(64);
    let p = pod("p", 0, 500, 500);
    sync(&mut core, &[node("n", 2)], std::slice::from_ref(&p));
    let binds = core.next_binds(0);
    assert_eq!(binds[0].at, at("n", 0));
    // Another replica bound it to the other device meanwhile.
    let elsewhere = bound(p, &at("n", 1));
    core.bind_done(
        &binds[0],
        BindOutcome::Conflict(Some(Box::new(elsewhere))),
        0,
    );
    assert!(core.next_binds(0).is_empty());
    assert_eq!(booked(&core, "ns/p"), Some(at("n", 1)));
    assert_eq!(sm(&core, &at("n", 0)), 0);
    assert_eq!(sm(&core, &at("n", 1)), 500);
    assert_eq!(counters.snapshot().conflicts, 1);
    assert_eq!(counters.snapshot().failures, 0);
}

#[test]
fn a_gone_pod_is_released() {
    let (mut core, counters) = core_with(64);
    sync(&mut core, &[node("n", 1)], &[pod("p", 0, 500, 500)]);
    let binds = core.next_binds(0);
    core.bind_done(&binds[0], BindOutcome::Gone, 0);
    assert_eq!(booked(&core, "ns/p"), None);
    assert!(core.next_binds(0).is_empty());
    assert_eq!(core.pending(), 0);
    assert_eq!(counters.snapshot().gone, 1);
}

#[test]
fn a_failed_bind_is_released_and_retried_after_a_growing_back_off() {
    let (mut core, counters) = core_with(64);
    sync(&mut core, &[node("n", 1)], &[pod("p", 0, 500, 500)]);
    let b = core.next_binds(0);
    core.bind_done(&b[0], BindOutcome::Failed("connection reset".into()), 10);
    assert_eq!(booked(&core, "ns/p"), None, "released");
    assert_eq!(core.next_wakeup(10), Some(10 + SECOND));
    assert!(core.next_binds(SECOND).is_empty(), "still backing off");
    let b = core.next_binds(10 + SECOND);
    assert_eq!(b.len(), 1);
    core.bind_done(&b[0], BindOutcome::Failed("timeout".into()), 2 * SECOND);
    assert_eq!(core.next_wakeup(2 * SECOND), Some(4 * SECOND), "doubled");
    let b = core.next_binds(4 * SECOND);
    core.bind_done(&b[0], BindOutcome::Bound, 4 * SECOND);
    assert_eq!(booked(&core, "ns/p"), Some(at("n", 0)));
    assert_eq!(core.next_wakeup(4 * SECOND), None);
    assert_eq!(counters.snapshot().failures, 2);
    assert_eq!(counters.snapshot().binds, 1);
    let lines = core.take_log();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ns/p: binding to n/GPU-n-0 failed: timeout")),
        "{lines:?}"
    );
}

#[test]
fn an_unschedulable_pod_waits_for_a_node_or_a_release_and_its_condition_is_written_once() {
    let (mut core, counters) = core_with(64);
    let big = bound(pod("big", 0, 800, 800), &at("n1", 0));
    let p = pod("p", 1, 500, 500);
    sync(&mut core, &[node("n1", 1)], &[big.clone(), p.clone()]);
    assert!(core.next_binds(0).is_empty());
    let updates = core.take_condition_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(
        (updates[0].namespace.as_str(), updates[0].name.as_str()),
        ("ns", "p")
    );
    assert!(updates[0].message.contains("no"), "{}", updates[0].message);
    // Nothing changed: not tried again, nothing written again, also after the pod shows the condition.
    for _ in 0..3 {
        assert!(core.next_binds(SECOND).is_empty());
    }
    let mut shown = p.clone();
    shown.unschedulable_message = Some(updates[0].message.clone());
    core.observe_pod(shown);
    assert!(core.next_binds(SECOND).is_empty());
    assert!(core.take_condition_updates().is_empty());
    assert_eq!(counters.snapshot().unschedulable, 1);
    // A node appears: it binds there.
    core.observe_node("n2", Some(Ok(node("n2", 1))));
    let b = core.next_binds(2 * SECOND);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].at, at("n2", 0));

    // A release makes room too: a second one waits, then the big pod finishes.
    let q = pod("q", 2, 600, 600);
    core.observe_pod(q);
    assert!(core.next_binds(3 * SECOND).is_empty());
    let mut done = big;
    done.finished = true;
    core.observe_pod(done);
    let b = core.next_binds(4 * SECOND);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].key().as_str(), &b[0].at), ("ns/q", &at("n1", 0)));
}

#[test]
fn a_pod_with_an_assignment_but_no_node_is_bound_where_it_says() {
    let (mut core, _) = core_with(64);
    let mut p = pod("p", 0, 500, 500);
    p.assignment = Some(Ok(Assignment::of(&at("n", 2))));
    sync(&mut core, &[node("n", 3)], &[p]);
    let b = core.next_binds(0);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].at, at("n", 2));
    assert_eq!(booked(&core, "ns/p"), Some(at("n", 2)));
}

#[test]
fn ended_and_deleted_pods_release_but_a_terminating_bound_pod_keeps_its_booking() {
    let (mut core, _) = core_with(64);
    let a = bound(pod("a", 0, 400, 400), &at("n", 0));
    let b = bound(pod("b", 0, 400, 400), &at("n", 0));
    sync(&mut core, &[node("n", 1)], &[a.clone(), b.clone()]);
    core.next_binds(0);
    assert_eq!(sm(&core, &at("n", 0)), 800);
    let mut terminating = a.clone();
    terminating.deleting = true;
    core.observe_pod(terminating);
    core.next_binds(0);
    assert_eq!(sm(&core, &at("n", 0)), 800, "still runs until it is gone");
    core.pod_deleted("ns", "a", "uid-other");
    assert_eq!(sm(&core, &at("n", 0)), 800, "another pod's deletion");
    core.pod_deleted("ns", "a", "uid-a");
    assert_eq!(sm(&core, &at("n", 0)), 400);
    let mut failed = b;
    failed.finished = true;
    core.observe_pod(failed.clone());
    assert_eq!(sm(&core, &at("n", 0)), 0);
    core.observe_pod(failed);
    core.next_binds(0);
    assert_eq!(
        sm(&core, &at("n", 0)),
        0,
        "an ended pod is not adopted again"
    );
}

#[test]
fn a_relist_forgets_the_pods_it_does_not_show() {
    let (mut core, _) = core_with(64);
    let a = bound(pod("a", 0, 400, 400), &at("n", 0));
    let b = bound(pod("b", 0, 400, 400), &at("n", 0));
    sync(&mut core, &[node("n", 1)], &[a.clone(), b]);
    core.next_binds(0);
    core.begin_pod_list();
    core.observe_pod(a);
    core.end_pod_list();
    core.next_binds(0);
    assert_eq!(sm(&core, &at("n", 0)), 400);
    assert_eq!(booked(&core, "ns/b"), None);
}

#[test]
fn a_node_that_leaves_takes_its_bookings_and_they_come_back_with_it() {
    let (mut core, _) = core_with(64);
    let a = bound(pod("a", 0, 900, 900), &at("n2", 0));
    sync(&mut core, &[node("n1", 1), node("n2", 1)], &[a]);
    core.next_binds(0);
    assert_eq!(booked(&core, "ns/a"), Some(at("n2", 0)));
    core.node_gone("n2");
    core.next_binds(0);
    assert_eq!(booked(&core, "ns/a"), None);
    // A node whose inventory cannot be read offers nothing (logged once).
    core.observe_node("n2", Some(Err("bad json".into())));
    core.observe_node("n2", Some(Err("bad json".into())));
    core.next_binds(0);
    let lines = core.take_log();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("node n2 ignored: bad json"))
            .count(),
        1,
        "{lines:?}"
    );
    core.observe_node("n2", Some(Ok(node("n2", 1))));
    core.next_binds(0);
    assert_eq!(booked(&core, "ns/a"), Some(at("n2", 0)), "adopted again");
    // A pending pod does not get the re-adopted device.
    core.observe_pod(pod("p", 5, 500, 500));
    let b = core.next_binds(0);
    assert_eq!(b[0].at, at("n1", 0));
}

#[test]
fn a_bound_pod_that_does_not_fit_is_not_booked_and_is_retried_after_a_release() {
    let (mut core, _) = core_with(64);
    let a = bound(pod("a", 0, 700, 700), &at("n", 0));
    let b = bound(pod("b", 1, 700, 700), &at("n", 0));
    sync(&mut core, &[node("n", 1)], &[a, b.clone()]);
    core.next_binds(0);
    assert_eq!(sm(&core, &at("n", 0)), 700);
    let lines = core.take_log();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ns/b: bound to n/GPU-n-0 but not booked")),
        "{lines:?}"
    );
    core.pod_deleted("ns", "a", "uid-a");
    core.next_binds(0);
    assert_eq!(booked(&core, "ns/b"), Some(at("n", 0)));
}

#[test]
fn a_pod_with_an_unreadable_booking_is_left_alone_and_said_once() {
    let (mut core, counters) = core_with(64);
    let mut p = pod("p", 0, 100, 100);
    p.request = Some(Err("expected value at line 1".into()));
    let mut q = pod("q", 0, 100, 100);
    q.request = None;
    sync(&mut core, &[node("n", 1)], &[p.clone(), q]);
    core.observe_pod(p);
    assert!(core.next_binds(0).is_empty());
    let lines = core.take_log();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("ns/p: not scheduled: unreadable booking"))
            .count(),
        1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ns/q: not scheduled: no booking annotation")),
        "{lines:?}"
    );
    assert_eq!(counters.snapshot(), CounterSnapshot::default());
}

#[test]
fn pods_of_another_scheduler_are_not_placed_and_a_recreated_pod_starts_afresh() {
    let (mut core, _) = core_with(64);
    let mut other = pod("other", 0, 100, 100);
    other.ours = false;
    let p = pod("p", 0, 600, 600);
    sync(&mut core, &[node("n", 1)], &[other, p.clone()]);
    let b = core.next_binds(0);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].key(), "ns/p");
    // p was deleted and created again under the same name before the bind's answer came.
    let mut again = pod("p", 3, 600, 600);
    again.uid = "uid-p-2".into();
    core.observe_pod(again);
    assert_eq!(
        booked(&core, "ns/p"),
        None,
        "the old pod's booking is released"
    );
    core.bind_done(&b[0], BindOutcome::Gone, 0);
    let b2 = core.next_binds(0);
    assert_eq!(b2.len(), 1);
    assert_eq!(b2[0].uid, "uid-p-2");
    assert_eq!(sm(&core, &at("n", 0)), 600);
}

#[test]
fn a_back_off_that_ended_while_the_window_is_full_waits_for_a_bind_to_come_back() {
    let (mut core, _) = core_with(1);
    sync(
        &mut core,
        &[node("n", 2)],
        &[pod("a", 0, 500, 500), pod("b", 1, 500, 500)],
    );
    let a = core.next_binds(0);
    core.bind_done(&a[0], BindOutcome::Failed("reset".into()), 0);
    let b = core.next_binds(0);
    assert_eq!(b[0].key(), "ns/b", "a backs off, b goes");
    // a's back-off is over but the one slot is taken: no timer to wake up for (it would fire at once, again
    // and again); b's answer is what wakes the loop.
    assert_eq!(core.next_wakeup(0), Some(SECOND));
    assert_eq!(core.next_wakeup(2 * SECOND), None);
    assert!(core.next_binds(2 * SECOND).is_empty());
    core.bind_done(&b[0], BindOutcome::Bound, 2 * SECOND);
    let again = core.next_binds(2 * SECOND);
    assert_eq!(again[0].key(), "ns/a");
}

#[test]
fn nothing_is_placed_on_a_cordoned_or_lost_node_and_its_pods_are_adopted_again_when_it_is_back() {
    let (mut core, _) = core_with(64);
    // n1 is the better fit (a pod already there), so the placer would choose it.
    let a = bound(pod("a", 0, 300, 300), &at("n1", 0));
    sync(&mut core, &[node("n1", 1), node("n2", 1)], &[a]);
    core.next_binds(0);
    assert_eq!(booked(&core, "ns/a"), Some(at("n1", 0)));
    core.set_cordoned("n1", true);
    core.observe_pod(pod("p", 1, 600, 600));
    let b = core.next_binds(SECOND);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].at, at("n2", 0), "not on the cordoned node");
    assert_eq!(booked(&core, "ns/a"), None, "set aside while cordoned");
    let lines = core.take_log();
    assert!(
        lines.iter().any(|l| l.contains("node n1 cordoned"))
            && !lines.iter().any(|l| l.contains("ns/a")),
        "one line for the node, none per pod: {lines:?}"
    );
    core.bind_done(&b[0], BindOutcome::Bound, SECOND);
    core.observe_pod(bound(pod("p", 1, 600, 600), &at("n2", 0)));
    // Uncordoned: its pod is booked again before anything is placed (q fits only beside it).
    core.set_cordoned("n1", false);
    core.observe_pod(pod("q", 2, 500, 500));
    let b = core.next_binds(2 * SECOND);
    assert_eq!(booked(&core, "ns/a"), Some(at("n1", 0)), "adopted again");
    assert_eq!(b[0].at, at("n1", 0), "placeable again");
    core.bind_done(&b[0], BindOutcome::Bound, 2 * SECOND);
    core.observe_pod(bound(pod("q", 2, 500, 500), &at("n1", 0)));

    // Lost (its agent's Lease ran out): the same, until the Lease is renewed.
    core.set_lost_nodes(&BTreeSet::from(["n1".to_string()]));
    core.observe_pod(pod("r", 3, 100, 100));
    let b = core.next_binds(3 * SECOND);
    assert_eq!(b[0].at, at("n2", 0), "not on the lost node");
    assert!(core.take_log().iter().any(|l| l.contains("node n1 lost")));
    core.set_lost_nodes(&BTreeSet::new());
    core.next_binds(4 * SECOND);
    assert_eq!(booked(&core, "ns/a"), Some(at("n1", 0)));
    assert_eq!(booked(&core, "ns/q"), Some(at("n1", 0)));
}

#[test]
fn a_pod_that_fits_only_on_a_lost_node_waits_for_it() {
    let (mut core, counters) = core_with(64);
    sync(&mut core, &[node("n1", 1)], &[]);
    core.set_lost_nodes(&BTreeSet::from(["n1".to_string()]));
    core.observe_pod(pod("p", 0, 500, 500));
    assert!(core.next_binds(0).is_empty());
    assert_eq!(counters.snapshot().unschedulable, 1);
    assert_eq!(core.take_condition_updates().len(), 1);
    core.set_lost_nodes(&BTreeSet::new());
    let b = core.next_binds(SECOND);
    assert_eq!(b.len(), 1, "placed once the node is back");
    assert_eq!(b[0].at, at("n1", 0));
}

#[test]
fn a_pod_goes_only_where_its_selector_and_tolerations_allow_and_waits_for_a_node_that_changes() {
    let gpu_taint = Taint {
        key: "nvidia.com/gpu".into(),
        value: "present".into(),
        effect: TaintEffect::NoSchedule,
    };
    let zone = |n: NodeInventory, z: &str| NodeInventory {
        labels: [("zone".to_string(), z.to_string())].into(),
        ..n
    };
    let a = zone(node("a", 1), "a");
    let b = NodeInventory {
        taints: vec![gpu_taint.clone()],
        ..zone(node("b", 1), "b")
    };
    let in_b = |mut p: PodView| {
        p.rules.node_selector.insert("zone".into(), "b".into());
        p
    };
    let (mut core, _) = core_with(64);
    sync(
        &mut core,
        &[a.clone(), b.clone()],
        &[in_b(pod("p", 0, 100, 100))],
    );
    assert!(core.next_binds(0).is_empty());
    let updates = core.take_condition_updates();
    assert_eq!(
        updates[0].message,
        "0/2 nodes with a gpu device are available to it: 1 didn't match the node selector, 1 \
         had the taint nvidia.com/gpu=present:NoSchedule, not tolerated"
    );
    // A pod that tolerates the taint goes to b at once; one without constraints to a (never to b).
    let mut tolerant = in_b(pod("t", 1, 100, 100));
    tolerant.rules.tolerations.push(Toleration {
        key: "nvidia.com/gpu".into(),
        value: "present".into(),
        ..Toleration::default()
    });
    core.observe_pod(tolerant);
    core.observe_pod(pod("free", 2, 100, 100));
    let mut binds: Vec<(String, DeviceRef)> = core
        .next_binds(SECOND)
        .into_iter()
        .map(|b| (b.key(), b.at))
        .collect();
    binds.sort();
    assert_eq!(
        binds,
        [
            ("ns/free".to_string(), at("a", 0)),
            ("ns/t".to_string(), at("b", 0))
        ]
    );
    // The taint is removed: the waiting pod binds to b.
    let untainted = NodeInventory {
        taints: Vec::new(),
        ..b
    };
    core.observe_node("b", Some(Ok(untainted)));
    let binds = core.next_binds(2 * SECOND);
    assert_eq!(binds.len(), 1);
    assert_eq!(
        (binds[0].key().as_str(), &binds[0].at),
        ("ns/p", &at("b", 0))
    );
}
