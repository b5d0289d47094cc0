//! The software driver and the test application, without any interposer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use dilu_cuda_testkit::{
    AppRun, DriverCall, DriverLog, ENV_DEVICES, ENV_MEM_BYTES, ENV_NS_PER_WAVE, ENV_SMS, ENV_UUID,
    FakeCuda, Resolve, artifacts, interposer_library, kernel_duration_ns, parse_app_output,
    run_app,
};

fn run(command: &mut std::process::Command) -> AppRun {
    run_app(command).unwrap_or_else(|e| panic!("application failed: {e}"))
}

fn read_log(fake: &FakeCuda) -> DriverLog {
    fake.log().expect("driver log parses")
}

fn num(line: &BTreeMap<String, String>, key: &str) -> u64 {
    let text = line
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    text.parse()
        .unwrap_or_else(|_| panic!("{key}={text} is not a number"))
}

fn rc(line: &BTreeMap<String, String>) -> i64 {
    line.get("rc")
        .unwrap_or_else(|| panic!("no rc in {line:?}"))
        .parse()
        .expect("rc is an integer")
}

fn field(call: &DriverCall, key: &str) -> u64 {
    call.field_u64(key)
        .unwrap_or_else(|| panic!("no numeric {key} in {call:?}"))
}

/// The exported names each mode's calls should reach.
fn expected_names(resolve: Resolve) -> [(&'static str, usize); 14] {
    let ptsz = resolve == Resolve::ProcAddrPtds;
    let pick =
        |plain: &'static str, per_thread: &'static str| if ptsz { per_thread } else { plain };
    [
        ("cuMemAlloc_v2", 1),
        ("cuMemAllocPitch_v2", 1),
        ("cuMemAllocManaged", 1),
        (pick("cuMemAllocAsync", "cuMemAllocAsync_ptsz"), 1),
        (
            pick("cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz"),
            1,
        ),
        ("cuMemCreate", 1),
        ("cuMemFree_v2", 3),
        (pick("cuMemFreeAsync", "cuMemFreeAsync_ptsz"), 2),
        ("cuMemRelease", 1),
        (pick("cuLaunchKernel", "cuLaunchKernel_ptsz"), 3),
        (pick("cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"), 2),
        (
            pick(
                "cuLaunchCooperativeKernel",
                "cuLaunchCooperativeKernel_ptsz",
            ),
            1,
        ),
        (pick("cuGraphLaunch", "cuGraphLaunch_ptsz"), 2),
        (pick("cuStreamSynchronize", "cuStreamSynchronize_ptsz"), 1),
    ]
}

const MIXED_COMMANDS: [&str; 20] = [
    "meminfo",
    "alloc,v2,1000",
    "alloc,pitch,1000",
    "alloc,managed,4096",
    "alloc,async,4096",
    "alloc,pool,4096",
    "alloc,vmm,2097152",
    "meminfo",
    "free,0",
    "free,1",
    "free,2",
    "free,3",
    "free,4",
    "free,5",
    "meminfo",
    "launch,kernel,3,264,1024",
    "launch,ex,2,4,128",
    "launch,coop,1,4,128",
    "graph,3,2,64,2",
    "sync",
];

#[test]
fn every_resolve_mode_reaches_the_expected_exports() {
    for resolve in Resolve::ALL {
        for stream in ["default", "created"] {
            let fake = FakeCuda::new().expect("temp dir");
            let out = run(fake
                .app(resolve)
                .args(["--stream", stream])
                .args(MIXED_COMMANDS));
            let context = format!("{} --stream {stream}", resolve.name());
            assert_eq!(
                out.lines.len(),
                MIXED_COMMANDS.len(),
                "{context}: {}",
                out.stdout
            );
            for line in &out.lines {
                assert_eq!(rc(line), 0, "{context}: {line:?}");
            }
            let meminfo: Vec<_> = out.ops("meminfo").collect();
            let used = 1000 + 1024 + 4096 * 3 + 2 * 1024 * 1024;
            assert_eq!(
                num(meminfo[0], "free") - num(meminfo[1], "free"),
                used,
                "{context}"
            );
            assert_eq!(
                num(meminfo[0], "free"),
                num(meminfo[2], "free"),
                "{context}"
            );

            let log = read_log(&fake);
            assert_eq!(log.pids(), vec![out.pid], "{context}");
            for (name, count) in expected_names(resolve) {
                assert_eq!(log.count(name), count, "{context}: calls to {name}");
            }
            for call in &log.calls {
                assert_eq!(call.rc, 0, "{context}: {call:?}");
                if resolve == Resolve::ProcAddrPtds {
                    for plain in [
                        "cuLaunchKernel",
                        "cuLaunchKernelEx",
                        "cuGraphLaunch",
                        "cuMemFreeAsync",
                    ] {
                        assert_ne!(
                            call.function, plain,
                            "{context}: a per-thread app reached {plain}"
                        );
                    }
                }
            }
            let graph_launch = if resolve == Resolve::ProcAddrPtds {
                "cuGraphLaunch_ptsz"
            } else {
                "cuGraphLaunch"
            };
            for call in log.calls_to(graph_launch) {
                assert_eq!(field(call, "kernels"), 3, "{context}: {call:?}");
                assert_eq!(field(call, "blocks"), 6);
                assert_eq!(field(call, "threads"), 6 * 64);
            }
            let launch = if resolve == Resolve::ProcAddrPtds {
                "cuLaunchKernel_ptsz"
            } else {
                "cuLaunchKernel"
            };
            for call in log.calls_to(launch) {
                assert_eq!(call.field("kernel"), Some("dilu_test_kernel"));
                assert_eq!(call.field("grid"), Some("264,1,1"));
                assert_eq!(call.field("block"), Some("1024,1,1"));
                assert_eq!(field(call, "blocks"), 264);
                assert_eq!(field(call, "threads"), 264 * 1024);
                if stream == "default" {
                    assert_eq!(field(call, "stream"), 0);
                } else {
                    assert!(field(call, "stream") > 2, "{context}: {call:?}");
                }
            }
            let pitch = log
                .calls_to("cuMemAllocPitch_v2")
                .next()
                .expect("pitch allocation");
            assert_eq!((field(pitch, "bytes"), field(pitch, "pitch")), (1024, 1024));

            let lookups: Vec<_> = log.calls_to("cuGetProcAddress_v2").collect();
            match resolve {
                Resolve::Linked | Resolve::Dlsym => assert!(lookups.is_empty(), "{context}"),
                Resolve::ProcAddr | Resolve::ProcAddrPtds => {
                    let resolved = |symbol: &str| {
                        lookups
                            .iter()
                            .find(|c| c.field("symbol") == Some(symbol))
                            .and_then(|c| c.field("resolved"))
                            .unwrap_or_else(|| panic!("{context}: no lookup of {symbol}"))
                            .to_owned()
                    };
                    assert_eq!(resolved("cuMemAlloc"), "cuMemAlloc_v2");
                    assert_eq!(resolved("cuCtxCreate"), "cuCtxCreate_v2");
                    assert_eq!(
                        resolved("cuGraphInstantiate"),
                        "cuGraphInstantiateWithFlags"
                    );
                    assert_eq!(resolved("cuGraphAddKernelNode"), "cuGraphAddKernelNode_v2");
                    assert_eq!(resolved("cuDeviceGetUuid"), "cuDeviceGetUuid_v2");
                    let per_thread = resolve == Resolve::ProcAddrPtds;
                    let expect = |base: &str| {
                        if per_thread {
                            format!("{base}_ptsz")
                        } else {
                            base.to_owned()
                        }
                    };
                    for base in [
                        "cuLaunchKernel",
                        "cuLaunchKernelEx",
                        "cuGraphLaunch",
                        "cuStreamSynchronize",
                    ] {
                        assert_eq!(resolved(base), expect(base), "{context}");
                    }
                    for call in &lookups {
                        assert_eq!(field(call, "version"), 12040);
                        assert_eq!(field(call, "flags"), if per_thread { 2 } else { 0 });
                    }
                }
            }
        }
    }
}

#[test]
fn linked_and_dlsym_builds_use_ptsz_exports_with_ptds() {
    for resolve in [Resolve::Linked, Resolve::Dlsym] {
        let fake = FakeCuda::new().expect("temp dir");
        let out = run(fake.app(resolve).arg("--ptds").args([
            "launch,kernel,2,1,32",
            "launch,ex,1,1,32",
            "graph,1,1,32,1",
        ]));
        assert!(out.lines.iter().all(|l| rc(l) == 0), "{}", out.stdout);
        let log = read_log(&fake);
        assert_eq!(log.count("cuLaunchKernel_ptsz"), 2, "{}", resolve.name());
        assert_eq!(log.count("cuLaunchKernelEx_ptsz"), 1);
        assert_eq!(log.count("cuGraphLaunch_ptsz"), 1);
        assert_eq!(log.count("cuLaunchKernel"), 0);
    }
}

#[test]
fn kernel_durations_follow_the_formula() {
    let ns_per_wave = 10_000;
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_NS_PER_WAVE, ns_per_wave.to_string());
    let out = run(fake.app(Resolve::Linked).args([
        "launch,kernel,1,264,1024",
        "launch,kernel,1,1000,256",
        "launch,ex,1,1,1",
        "launch,coop,1,2,96",
        "sync",
    ]));
    assert!(out.lines.iter().all(|l| rc(l) == 0), "{}", out.stdout);
    let log = read_log(&fake);
    let launches: Vec<&DriverCall> = log
        .calls
        .iter()
        .filter(|c| c.fields.contains_key("kernel"))
        .collect();
    let shapes = [(264, 1024), (1000, 256), (1, 1), (2, 96)];
    assert_eq!(launches.len(), shapes.len());
    let expected = [10_000, 9_470, 1, 8];
    for ((call, (blocks, tpb)), want) in launches.iter().zip(shapes).zip(expected) {
        let duration = field(call, "end") - field(call, "start");
        assert_eq!(duration, kernel_duration_ns(blocks, tpb, 132, ns_per_wave));
        assert_eq!(duration, want, "{call:?}");
    }
    // One stream, one device: each kernel starts no earlier than the previous one ended.
    for pair in launches.windows(2) {
        assert!(field(pair[1], "start") >= field(pair[0], "end"), "{pair:?}");
    }
    // A wider SM count shortens the same kernel.
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_NS_PER_WAVE, "1000")
        .env(ENV_SMS, "66");
    run(fake.app(Resolve::Dlsym).arg("launch,kernel,1,264,1024"));
    let log = read_log(&fake);
    let call = log
        .calls_to("cuLaunchKernel")
        .next()
        .expect("launch logged");
    assert_eq!(field(call, "end") - field(call, "start"), 2000);
}

#[test]
fn launches_are_asynchronous_and_sync_waits_for_the_tail() {
    // Five one-wave kernels of 50 ms each: issuing them returns long before they run.
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_NS_PER_WAVE, "50000000");
    let out = run(fake.app(Resolve::Linked).args([
        "--stream",
        "created",
        "launch,kernel,5,264,1024",
        "sync",
    ]));
    assert!(out.lines.iter().all(|l| rc(l) == 0), "{}", out.stdout);
    let log = read_log(&fake);
    let launches: Vec<_> = log.calls_to("cuLaunchKernel").collect();
    assert_eq!(launches.len(), 5);
    let last = launches[4];
    assert_eq!(
        field(last, "start") - field(launches[0], "start"),
        4 * 50_000_000
    );
    assert!(
        last.t_ns < field(last, "start"),
        "the fifth launch returned only after it started: {last:?}"
    );
    let sync = log
        .calls_to("cuCtxSynchronize")
        .next()
        .expect("sync logged");
    assert!(
        sync.t_ns >= field(last, "end"),
        "sync returned before the last kernel ended"
    );
    assert_eq!(field(sync, "until"), field(last, "end"));
}

#[test]
fn a_second_process_waits_for_the_first_ones_kernels() {
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_NS_PER_WAVE, "20000000");
    // The first process queues 100 ms of work and exits without synchronising.
    let first = run(fake.app(Resolve::Linked).arg("launch,kernel,5,264,1024"));
    let second = run(fake
        .app(Resolve::ProcAddr)
        .args(["launch,kernel,1,264,1024", "sync"]));
    let log = read_log(&fake);
    let first_end = log
        .by_pid(first.pid)
        .filter(|c| c.function == "cuLaunchKernel")
        .map(|c| field(c, "end"))
        .max()
        .expect("first process launched");
    let second_launch = log
        .by_pid(second.pid)
        .find(|c| c.function == "cuLaunchKernel")
        .expect("second process launched");
    assert!(
        field(second_launch, "start") >= first_end,
        "second kernel started at {} before the first process's work ended at {first_end}",
        field(second_launch, "start")
    );
}

#[test]
fn concurrent_processes_never_overlap_on_the_device() {
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_NS_PER_WAVE, "2000000");
    let mut children: Vec<_> = [Resolve::Linked, Resolve::ProcAddrPtds]
        .into_iter()
        .map(|resolve| {
            fake.app(resolve)
                .args(["--stream", "created", "burn,0.2,264,1024,4"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("application starts")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    for child in children.drain(..) {
        let output = child.wait_with_output().expect("application finishes");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines = parse_app_output(&String::from_utf8_lossy(&output.stdout));
        assert_eq!(rc(&lines[0]), 0);
        assert!(num(&lines[0], "launches") > 0);
    }
    let log = read_log(&fake);
    let mut intervals: Vec<(u64, u64, u32)> = log
        .calls
        .iter()
        .filter(|c| c.function.starts_with("cuLaunchKernel"))
        .map(|c| (field(c, "start"), field(c, "end"), c.pid))
        .collect();
    for pid in &pids {
        assert!(
            intervals.iter().any(|i| i.2 == *pid),
            "process {pid} launched nothing"
        );
    }
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "kernels overlap on the device: {pair:?}"
        );
        assert_eq!(pair[0].1 - pair[0].0, 2_000_000);
    }
}

#[test]
fn allocation_beyond_the_device_total_fails_and_later_allocations_succeed() {
    let total: u64 = 1 << 30;
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_MEM_BYTES, total.to_string());
    let out = run(fake.app(Resolve::Dlsym).args([
        &format!("alloc,v2,{}", total + 1),
        "alloc,v2,1048576",
        &format!("alloc,managed,{}", total),
        "free,1",
        &format!("alloc,pool,{}", total),
        "alloc,async,1",
        "free,3",
        "alloc,vmm,3145728",
        "alloc,vmm,4194304",
        "totalmem",
        "meminfo",
    ]));
    let rcs: Vec<i64> = out.lines.iter().map(rc).collect();
    assert_eq!(rcs, vec![2, 0, 2, 0, 0, 2, 0, 1, 0, 0, 0], "{}", out.stdout);
    assert_eq!(num(&out.lines[9], "bytes"), total);
    assert_eq!(num(&out.lines[10], "free"), total - 4194304);
    let log = read_log(&fake);
    let failed = log.calls_to("cuMemAlloc_v2").next().expect("alloc logged");
    assert_eq!(
        (failed.rc, field(failed, "bytes"), field(failed, "ptr")),
        (2, total + 1, 0)
    );
}

#[test]
fn frees_restore_meminfo_exactly() {
    let fake = FakeCuda::new().expect("temp dir");
    let out = run(fake.app(Resolve::ProcAddr).args([
        "meminfo",
        "alloc,v2,12345",
        "meminfo",
        "alloc,pitch,513",
        "meminfo",
        "alloc,managed,777",
        "alloc,async,65536",
        "alloc,pool,3",
        "alloc,vmm,6291456",
        "meminfo",
        "free,0",
        "free,0",
        "free,1",
        "free,2",
        "free,3",
        "free,4",
        "free,5",
        "free,5",
        "meminfo",
    ]));
    let info: Vec<u64> = out.ops("meminfo").map(|l| num(l, "free")).collect();
    assert_eq!(info[0] - info[1], 12345);
    assert_eq!(info[1] - info[2], 1024, "pitch rounds 513 up to 512 × 2");
    assert_eq!(info[2] - info[3], 777 + 65536 + 3 + 6291456);
    assert_eq!(info[4], info[0]);
    let frees: Vec<i64> = out.ops("free").map(rc).collect();
    assert_eq!(
        frees,
        vec![0, 1, 0, 0, 0, 0, 0, 1],
        "double frees are invalid"
    );
    // Every free reports exactly what its allocation took.
    let log = read_log(&fake);
    let freed: Vec<u64> = log
        .calls
        .iter()
        .filter(|c| {
            c.rc == 0 && (c.function.starts_with("cuMemFree") || c.function == "cuMemRelease")
        })
        .map(|c| field(c, "bytes"))
        .collect();
    assert_eq!(freed, vec![12345, 1024, 777, 65536, 3, 6291456]);
    let release = log.calls_to("cuMemRelease").next().expect("release logged");
    assert_eq!(field(release, "location"), 1);
}

#[test]
fn memory_is_shared_between_processes_and_released_at_exit() {
    let fake = FakeCuda::new().expect("temp dir");
    let mut holder = fake
        .app(Resolve::Linked)
        .args(["alloc,v2,1073741824", "sleep,60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("holder starts");
    let mut first_line = String::new();
    let stdout = holder.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .expect("holder prints its allocation");
    assert_eq!(rc(&parse_app_output(&first_line)[0]), 0, "{first_line}");
    let during = run(fake.app(Resolve::Dlsym).arg("meminfo"));
    let free_during = num(&during.lines[0], "free");
    assert_eq!(num(&during.lines[0], "total") - free_during, 1 << 30);
    holder.kill().expect("holder killed");
    holder.wait().expect("holder reaped");

    // A killed process cannot release; one that exits normally does (as a real driver frees a
    // process's memory when it ends).
    let leaver = run(fake
        .app(Resolve::Linked)
        .args(["alloc,managed,4096", "alloc,vmm,2097152"]));
    assert!(leaver.lines.iter().all(|l| rc(l) == 0));
    let after = run(fake.app(Resolve::Dlsym).arg("meminfo"));
    assert_eq!(num(&after.lines[0], "free"), free_during);
}

#[test]
fn invalid_launches_are_rejected() {
    let fake = FakeCuda::new().expect("temp dir");
    let out = run(fake.app(Resolve::Linked).args([
        "launch,kernel,1,0,128",
        "launch,kernel,1,1,1025",
        "launch,ex,1,1,0",
        "launch,coop,1,1,1024",
        "graph,2,1,2048,1",
    ]));
    let rcs: Vec<i64> = out.lines.iter().map(rc).collect();
    assert_eq!(rcs, vec![1, 1, 1, 0, 1], "{}", out.stdout);
    let log = read_log(&fake);
    let rejected = log
        .calls_to("cuLaunchKernel")
        .next()
        .expect("launch logged");
    assert_eq!(
        (
            rejected.rc,
            field(rejected, "start"),
            field(rejected, "end")
        ),
        (1, 0, 0)
    );
    assert_eq!(
        log.calls_to("cuGraphAddKernelNode_v2").next().map(|c| c.rc),
        Some(1)
    );
}

#[test]
fn devices_uuids_and_attributes_follow_the_environment() {
    let fake = FakeCuda::new()
        .expect("temp dir")
        .env(ENV_DEVICES, "3")
        .env(ENV_SMS, "64")
        .env(ENV_UUID, "GPU-12345678-9abc-def0-1234-56789abcdef0");
    let zero = run(fake.app(Resolve::Linked).arg("info"));
    assert_eq!(
        zero.lines[0]["uuid"],
        "GPU-12345678-9abc-def0-1234-56789abcdef0"
    );
    assert_eq!(num(&zero.lines[0], "sms"), 64);
    assert_eq!(num(&zero.lines[0], "threads_per_sm"), 2048);
    assert_eq!(num(&zero.lines[0], "threads_per_block"), 1024);
    let two = run(fake.app(Resolve::ProcAddr).args(["--device", "2", "info"]));
    assert_eq!(
        two.lines[0]["uuid"],
        "GPU-0000d11a-0000-0000-0000-000000000002"
    );

    // A missing device is a setup failure (exit 2, message on stderr).
    let err = run_app(fake.app(Resolve::Linked).args(["--device", "3", "info"]))
        .expect_err("no device 3");
    assert!(
        err.to_string().contains("cuDeviceGet(3) failed: 101"),
        "{err}"
    );
    // Bad configuration is reported by the driver.
    let bad = FakeCuda::new().expect("temp dir").env(ENV_DEVICES, "9");
    let err = run_app(&mut bad.app(Resolve::Dlsym)).expect_err("nine devices are too many");
    assert!(
        err.to_string()
            .contains("DILU_FAKE_CUDA_DEVICES=9 is out of range"),
        "{err}"
    );
}

#[test]
fn get_proc_address_resolves_versions_and_flags_through_the_driver() {
    let fake = FakeCuda::new().expect("temp dir");
    let queries = [
        ("cuMemAlloc", 12040, 0, Some("cuMemAlloc_v2")),
        ("cuMemAlloc", 3000, 0, None),
        ("cuMemAlloc_v2", 12040, 0, None),
        ("cuNoSuchFunction", 12040, 0, None),
        (
            "cuGraphInstantiate",
            12000,
            0,
            Some("cuGraphInstantiateWithFlags"),
        ),
        (
            "cuGraphInstantiate",
            11000,
            0,
            Some("cuGraphInstantiate_v2"),
        ),
        ("cuDeviceGetUuid", 11030, 0, Some("cuDeviceGetUuid")),
        ("cuDeviceGetUuid", 11040, 0, Some("cuDeviceGetUuid_v2")),
        (
            "cuDevicePrimaryCtxRelease",
            11000,
            0,
            Some("cuDevicePrimaryCtxRelease_v2"),
        ),
        ("cuGetProcAddress", 11030, 0, Some("cuGetProcAddress")),
        ("cuGetProcAddress", 12000, 0, Some("cuGetProcAddress_v2")),
        (
            "cuGraphKernelNodeGetParams",
            11000,
            0,
            Some("cuGraphKernelNodeGetParams"),
        ),
        (
            "cuGraphKernelNodeGetParams",
            12000,
            0,
            Some("cuGraphKernelNodeGetParams_v2"),
        ),
        ("cuLaunchKernel", 12040, 1, Some("cuLaunchKernel")),
        ("cuLaunchKernel", 12040, 2, Some("cuLaunchKernel_ptsz")),
        ("cuMemFreeAsync", 12040, 2, Some("cuMemFreeAsync_ptsz")),
        (
            "cuGraphInstantiateWithParams",
            12040,
            2,
            Some("cuGraphInstantiateWithParams_ptsz"),
        ),
        ("cuMemAlloc", 12040, 2, Some("cuMemAlloc_v2")),
        ("cuLaunchKernel", 12040, 4, None),
    ];
    let commands: Vec<String> = queries
        .iter()
        .map(|(symbol, version, flags, _)| format!("procaddr,{symbol},{version},{flags}"))
        .collect();
    let out = run(fake.app(Resolve::Linked).args(&commands));
    let log = read_log(&fake);
    let lookups: Vec<_> = log.calls_to("cuGetProcAddress_v2").collect();
    assert_eq!(lookups.len(), queries.len());
    for (((symbol, version, flags, want), line), call) in
        queries.iter().zip(&out.lines).zip(&lookups)
    {
        let context = format!("{symbol} {version} {flags}");
        assert_eq!(call.field("symbol"), Some(*symbol), "{context}");
        assert_eq!(
            call.field("resolved"),
            Some(want.unwrap_or("-")),
            "{context}"
        );
        match want {
            Some(_) => {
                assert_eq!(
                    (rc(line), num(line, "status"), num(line, "found")),
                    (0, 0, 1),
                    "{context}"
                );
            }
            None if *flags > 3 => assert_eq!(rc(line), 1, "{context}"),
            None => {
                assert_eq!(
                    (rc(line), num(line, "status"), num(line, "found")),
                    (500, 1, 0),
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn interposer_library_points_at_the_build() {
    match interposer_library() {
        Ok(path) => assert!(path.ends_with("libdilu_cuda.so"), "{}", path.display()),
        Err(message) => assert!(message.contains("cargo build -p dilu-cuda"), "{message}"),
    }
    let artifacts = artifacts();
    assert!(
        artifacts.driver_dir.join("libcuda.so").exists(),
        "the -lcuda link exists"
    );
}
