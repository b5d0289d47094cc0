//! Every launch and allocation path is seen, through all three ways programs reach the driver.

mod common;

use common::{
    DEVICE_UUID, LAUNCH_FUNCTIONS, Rig, WAVE_BLOCK, WAVE_GRID, WAVE_UNITS, launches_of, spec,
};
use dilu_cuda_testkit::Resolve;
use dilu_quota::{DEFAULT_WINDOW_NS, UNLIMITED};

const MIB: u64 = 1 << 20;

#[test]
fn every_launch_path_is_charged_in_every_resolution_mode() {
    for resolve in Resolve::ALL {
        let rig = Rig::new();
        let (path, channel) = rig.channel(
            "launch.quota",
            spec(UNLIMITED, DEFAULT_WINDOW_NS, UNLIMITED),
        );
        let launch = |api: &str| format!("launch,{api},10,{WAVE_GRID},{WAVE_BLOCK}");
        let run = rig.run(
            resolve,
            Some(&path),
            &[&launch("kernel"), &launch("ex"), &launch("coop"), "sync"],
        );
        for line in run.ops("launch") {
            assert_eq!(line["rc"], "0", "{}: {line:?}", resolve.name());
        }
        let snap = channel.snapshot();
        assert_eq!(snap.launches, 30, "{}", resolve.name());
        assert_eq!(snap.cost_launched, 30 * WAVE_UNITS, "{}", resolve.name());
        assert_eq!(snap.attached_pid, run.pid);
        let log = rig.log();
        let reached = launches_of(&log, run.pid);
        assert_eq!(
            reached.len(),
            30,
            "{}: every launch reaches the driver",
            resolve.name()
        );
        let expected_suffix = resolve == Resolve::ProcAddrPtds;
        assert!(
            reached
                .iter()
                .all(|c| c.function.ends_with("_ptsz") == expected_suffix),
            "{}: {:?}",
            resolve.name(),
            reached.iter().map(|c| &c.function).collect::<Vec<_>>()
        );
        assert!(reached.iter().all(|c| c.rc == 0));
    }
}

#[test]
fn block_shape_changes_the_charge() {
    let rig = Rig::new();
    let (path, channel) = rig.channel("shape.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, UNLIMITED));
    // 264 blocks of 32 threads: 1/32 of a wave each; HAMi would have charged these like full blocks.
    rig.run(Resolve::Dlsym, Some(&path), &["launch,kernel,64,264,32"]);
    assert_eq!(channel.snapshot().cost_launched, 64 * WAVE_UNITS / 32);
}

#[test]
fn a_graph_launched_100_times_is_charged_for_its_kernels_each_time() {
    for resolve in Resolve::ALL {
        let rig = Rig::new();
        let (path, channel) =
            rig.channel("graph.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, UNLIMITED));
        // Three kernel nodes of 132 × 256 threads = 1/8 wave each.
        let run = rig.run(resolve, Some(&path), &["graph,3,132,256,100"]);
        assert_eq!(run.ops("graph").next().map(|l| l["rc"].as_str()), Some("0"));
        let snap = channel.snapshot();
        assert_eq!(
            snap.cost_launched,
            100 * 3 * WAVE_UNITS / 8,
            "{}",
            resolve.name()
        );
        assert_eq!(snap.launches, 100, "{}", resolve.name());
        let log = rig.log();
        let graph_launches: Vec<_> = log
            .by_pid(run.pid)
            .filter(|c| c.function.starts_with("cuGraphLaunch"))
            .collect();
        assert_eq!(graph_launches.len(), 100);
        assert!(
            graph_launches
                .iter()
                .all(|c| c.field_u64("kernels") == Some(3))
        );
        assert!(launches_of(&log, run.pid).is_empty());
    }
}

#[test]
fn allocations_are_capped_counted_and_restored_exactly_on_every_path() {
    for resolve in Resolve::ALL {
        let rig = Rig::new();
        let cap = 64 * MIB;
        let (path, channel) = rig.channel("mem.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, cap));
        let run = rig.run(
            resolve,
            Some(&path),
            &[
                "alloc,v2,16777216",     // id 0: 16 MiB
                "alloc,pitch,1000",      // id 1: pitch 1024 × 1
                "alloc,managed,8388608", // id 2
                "alloc,async,8388608",   // id 3
                "alloc,pool,8388608",    // id 4
                "alloc,vmm,4194304",     // id 5
                "meminfo",
                "alloc,v2,33554432", // id 6: over the cap
                "alloc,v2,4194304",  // id 7: fits again
                "totalmem",
                "free,0",
                "free,1",
                "free,2",
                "free,3",
                "free,4",
                "free,5",
                "free,7",
                "meminfo",
            ],
        );
        let name = resolve.name();
        let allocs: Vec<_> = run.ops("alloc").collect();
        let rcs: Vec<&str> = allocs.iter().map(|l| l["rc"].as_str()).collect();
        assert_eq!(rcs, ["0", "0", "0", "0", "0", "0", "2", "0"], "{name}");
        let held = 16 * MIB + 1024 + 3 * 8 * MIB + 4 * MIB;
        let meminfo: Vec<_> = run.ops("meminfo").collect();
        assert_eq!(
            meminfo[0]["total"],
            cap.to_string(),
            "{name}: cuMemGetInfo reports the cap"
        );
        assert_eq!(meminfo[0]["free"], (cap - held).to_string(), "{name}");
        assert_eq!(
            meminfo[1]["free"],
            cap.to_string(),
            "{name}: every byte came back"
        );
        assert_eq!(
            run.ops("totalmem").next().unwrap()["bytes"],
            cap.to_string(),
            "{name}"
        );
        assert!(run.ops("free").all(|l| l["rc"] == "0"), "{name}");

        let snap = channel.snapshot();
        assert_eq!(snap.bytes_allocated, 0, "{name}");
        assert_eq!(snap.bytes_peak, held + 4 * MIB, "{name}");
        assert_eq!(snap.alloc_failures, 1, "{name}");
        // The refused allocation never reached the driver.
        let log = rig.log();
        let v2: Vec<_> = log
            .by_pid(run.pid)
            .filter(|c| c.function == "cuMemAlloc_v2")
            .collect();
        assert_eq!(v2.len(), 2, "{name}");
        for function in ["cuMemFree_v2", "cuMemFreeAsync", "cuMemRelease"] {
            assert!(
                log.by_pid(run.pid)
                    .any(|c| c.function.starts_with(function)),
                "{name}: {function}"
            );
        }
    }
}

#[test]
fn pass_through_without_a_channel_warns_once_and_changes_nothing() {
    let rig = Rig::new();
    let run = rig.run(
        Resolve::ProcAddr,
        None,
        &[
            "launch,kernel,5,264,1024",
            "alloc,v2,1048576",
            "meminfo",
            "free,0",
        ],
    );
    assert_eq!(
        run.stderr.matches("dilu-cuda:").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("no quota channel named"),
        "{}",
        run.stderr
    );
    assert!(run.ops("launch").all(|l| l["rc"] == "0"));
    let meminfo = run.ops("meminfo").next().unwrap();
    assert_eq!(
        meminfo["total"],
        (80u64 << 30).to_string(),
        "the device's own memory"
    );
    assert_eq!(launches_of(&rig.log(), run.pid).len(), 5);
    let _ = (DEVICE_UUID, LAUNCH_FUNCTIONS);
}
