//! Restart safety: SIGKILL the agent; instances keep running at their last budgets; a new agent re-adopts
//! every one of them — none lost, none duplicated — and budgets continue under it.

mod common;

use std::time::Duration;

use common::{AgentProc, alive, channel_path, dilu_bin, wait_for};
use dilu_quota::AgentChannel;
use serde_json::json;

fn cpu_rate(channel: &AgentChannel, over: Duration) -> f64 {
    let before = channel.snapshot().cost_launched;
    std::thread::sleep(over);
    (channel.snapshot().cost_launched - before) as f64 / over.as_nanos() as f64
}

#[test]
fn a_killed_agent_is_replaced_and_re_adopts_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(dir.path(), &["--cpu-cores", "1"]);
    let device = agent.cpu_device();
    let mut ids = Vec::new();
    for share in [0.2, 0.3] {
        let (status, body) = agent.post(
            "/instances",
            json!({"command": [dilu_bin(), "burn", "--report-ms", "60000"], "device": device,
                   "quota": {"request": share, "limit": share}, "priority_class": "training"}),
        );
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let before = AgentProc::recorded(dir.path());
    assert_eq!(before.len(), 2);
    let channel = AgentChannel::open(&channel_path(dir.path(), &ids[0])).unwrap();
    wait_for(Duration::from_secs(5), || {
        (channel.snapshot().launches > 0).then_some(())
    })
    .unwrap();

    agent.kill9();
    for (_, pid) in &before {
        assert!(alive(*pid), "instance {pid} must survive the agent's death");
    }
    // Fail-static: with no agent, the instance keeps its last budget (0.2 of a core): never more, and it keeps
    // running (0.200 on an idle machine; a loaded CI machine may give it less CPU than its budget).
    let down = cpu_rate(&channel, Duration::from_secs(2));
    eprintln!("agent down: instance at {down:.3} of a core (budget 0.2)");
    assert!(
        (0.2 * 0.5..=0.2 * 1.1).contains(&down),
        "rate {down} without an agent"
    );

    let agent = AgentProc::start(dir.path(), &["--cpu-cores", "1"]);
    let (_, list) = agent.get("/instances");
    assert!(
        list["instances"][0].get("pid").is_none(),
        "reports carry no pids: {list}"
    );
    let after = AgentProc::recorded(dir.path());
    assert_eq!(
        after, before,
        "same instances, same processes: none lost, none duplicated"
    );
    for instance in list["instances"].as_array().unwrap() {
        assert_eq!(instance["adopted"], true, "{instance}");
        assert_eq!(instance["status"], "ready", "{instance}");
    }
    let burners = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| {
                    ids.iter().any(|id| {
                        env.windows(id.len() + 17)
                            .any(|w| w == format!("DILU_INSTANCE_ID={id}").as_bytes())
                    })
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(burners, 2, "exactly one process per instance");

    // Budgets continue under the new agent, and it can still change them.
    let rate = cpu_rate(&channel, Duration::from_secs(1));
    eprintln!("re-adopted: instance at {rate:.3} of a core (budget 0.2)");
    assert!(
        (0.2 * 0.5..=0.2 * 1.1).contains(&rate),
        "rate {rate} after re-adoption"
    );
    let (status, body) = agent.patch(
        &format!("/instances/{}/quota", ids[0]),
        json!({"request": 0.5, "limit": 0.5}),
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(100));
    let rate = cpu_rate(&channel, Duration::from_secs(1));
    eprintln!("after re-adoption and a change to 0.5: {rate:.3} of a core");
    assert!(rate <= 0.5 * 1.1, "rate {rate} after the change to 0.5");
    assert!(
        rate >= 0.45 || rate >= down * 1.5,
        "rate {rate} after the change to 0.5 (was {down})"
    );

    for id in &ids {
        assert_eq!(agent.delete(&format!("/instances/{id}")).0, 204);
    }
    for (_, pid) in &before {
        assert!(wait_for(Duration::from_secs(10), || (!alive(*pid)).then_some(())).is_some());
    }
}
