//! The live side of `dilu sim validate`: the scenario run on `dilu up` (its functions and jobs deployed from
//! their specs), an open-loop load generator replaying the simulator's arrivals, and samplers of the instance
//! count and the training jobs' progress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dilu_sim::serve::metrics::percentile_ms;
use dilu_sim::serve::scenario::Scenario;
use dilu_sim::serve::setup::DEFAULT_REQUEST_TIMEOUT_S;
use dilu_sim::serve::workload::{ArrivalStream, arrival_seed};
use serde_json::Value;

use super::ValidateArgs;
use super::batches::{Ledger, parse};
use super::body::RequestBody;
use super::compare::Side;
use super::http::get_json;
use super::process::{spawn_until, tempdir};

/// The 1-minute load average of this machine (what else competes for the CPU device's cores), if known.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One request's outcome, client-side.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    func: usize,
    arrival_s: f64,
    /// `Some(latency)` when it succeeded, `None` when it failed or timed out.
    latency_s: Option<f64>,
}

/// Runs the scenario on a fresh `dilu up` (in `--live-dir` or a temporary folder) and measures it.
pub(super) fn live_side(
    a: &ValidateArgs,
    scenario: &Scenario,
    specs: &BTreeMap<String, PathBuf>,
    inputs: &BTreeMap<String, Vec<u8>>,
) -> Result<Side> {
    let exe = std::env::current_exe().context("locating the dilu binary")?;
    let (dir, remove) = match &a.live_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => (tempdir("dilu-validate")?, true),
    };
    let mut cmd = Command::new(&exe);
    cmd.arg("up")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--no-nvml"])
        .args(["--window-ms", &a.window_ms.to_string()])
        .args(["--policy", a.policy.as_str()]);
    let (up, url) = spawn_until(cmd, "dilu up: serving on ", "dilu up")?;
    let result = live_run(a, scenario, specs, inputs, &exe, &dir, &url);
    drop(up);
    if remove && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Deploys the scenario on the running platform at `url`, replays its arrivals open-loop and judges them.
fn live_run(
    a: &ValidateArgs,
    scenario: &Scenario,
    specs: &BTreeMap<String, PathBuf>,
    inputs: &BTreeMap<String, Vec<u8>>,
    exe: &Path,
    dir: &Path,
    url: &str,
) -> Result<Side> {
    // Deploy: training first (it is there when the inference load starts, as in the simulator).
    let order: Vec<&String> = scenario
        .training
        .iter()
        .map(|t| &t.name)
        .chain(scenario.functions.iter().map(|f| &f.name))
        .collect();
    for name in &order {
        let spec = &specs[*name];
        let status = Command::new(exe)
            .args(["deploy", "--wait", "-f"])
            .arg(spec)
            .env("DILU_SERVER", url)
            .env("DILU_DATA_DIR", dir)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("dilu deploy -f {}", spec.display()))?;
        ensure!(
            status.success(),
            "dilu deploy -f {} failed: {status}",
            spec.display()
        );
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let instances = |client: &reqwest::blocking::Client| -> Result<Vec<Value>> {
        let v = get_json(client, &format!("{url}/v1/instances"))
            .with_context(|| format!("GET {url}/v1/instances"))?;
        Ok(v["instances"].as_array().cloned().unwrap_or_default())
    };
    // Wait until each function has its initial instances ready (deploy --wait waits for one).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = instances(&client)?;
        let ready = |name: &str| {
            list.iter()
                .filter(|i| i["function"] == name && i["status"] == "ready")
                .count() as u32
        };
        if scenario
            .functions
            .iter()
            .all(|f| ready(&f.name) >= f.initial_instances)
            && scenario.training.iter().all(|t| ready(&t.name) >= 1)
        {
            break;
        }
        ensure!(Instant::now() < deadline, "instances not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let trainer_urls: Vec<String> = {
        let list = instances(&client)?;
        scenario
            .training
            .iter()
            .map(|t| {
                list.iter()
                    .find(|i| i["function"] == t.name.as_str())
                    .and_then(|i| i["labels"]["dilu.io/endpoint"].as_str())
                    .map(str::to_owned)
                    .with_context(|| format!("training job '{}': no instance endpoint", t.name))
            })
            .collect::<Result<_>>()?
    };
    let iterations = |client: &reqwest::blocking::Client, u: &str| -> Result<u64> {
        let v =
            get_json(client, &format!("{u}/status")).with_context(|| format!("GET {u}/status"))?;
        v["iterations"]
            .as_u64()
            .with_context(|| format!("GET {u}/status: no 'iterations'"))
    };

    // The arrivals the simulator draws, function by function, merged in time order.
    let mut arrivals: Vec<(f64, usize)> = Vec::new();
    for (i, f) in scenario.functions.iter().enumerate() {
        let mut s = ArrivalStream::new(
            &f.workload,
            arrival_seed(scenario.seed, i),
            scenario.duration_s,
        );
        while let Some(t) = s.next_s() {
            arrivals.push((t, i));
        }
    }
    arrivals.sort_by(|x, y| x.0.total_cmp(&y.0));
    let timeouts: Vec<Duration> = scenario
        .functions
        .iter()
        .map(|f| Duration::from_secs_f64(f.request_timeout_s.unwrap_or(DEFAULT_REQUEST_TIMEOUT_S)))
        .collect();
    let bodies: Vec<Arc<RequestBody>> = scenario
        .functions
        .iter()
        .map(|f| {
            RequestBody::new(&inputs[&f.name], a.binary_input)
                .map(Arc::new)
                .with_context(|| format!("--input {}", f.name))
        })
        .collect::<Result<_>>()?;
    let urls: Vec<String> = scenario
        .functions
        .iter()
        .map(|f| format!("{url}/v2/models/{}/infer", f.name))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .context("building the load generator's client")?;
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_sampler = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let training_at_start: Vec<u64> = trainer_urls
        .iter()
        .map(|u| iterations(&client, u))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();

    // The instance sampler: inference instances per sample (any status: placed until gone), and about once a
    // second each inference worker's batch times.
    let names: Vec<String> = scenario.functions.iter().map(|f| f.name.clone()).collect();
    let sampler = {
        let stop = stop_sampler.clone();
        let url = url.to_owned();
        let names = names.clone();
        let every = Duration::from_millis(a.sample_ms);
        let scrape_every = (1000 / a.sample_ms.max(1)).max(1);
        std::thread::spawn(move || -> (Vec<(f64, u32)>, Ledger) {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default();
            let mut samples = Vec::new();
            let mut ledger = Ledger::default();
            let mut next = Instant::now();
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = t0.elapsed().as_secs_f64();
                if let Ok(v) = client
                    .get(format!("{url}/v1/instances"))
                    .send()
                    .and_then(|r| r.json::<Value>())
                {
                    if round.is_multiple_of(scrape_every) {
                        scrape_batches(&client, &v, &names, &mut ledger, round == 0);
                    }
                    round += 1;
                    let n = v["instances"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .filter(|i| {
                                    i["function"]
                                        .as_str()
                                        .is_some_and(|f| names.iter().any(|n| n == f))
                                })
                                .count() as u32
                        })
                        .unwrap_or(0);
                    samples.push((at, n));
                }
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (samples, ledger)
        })
    };

    // The open-loop generator: each request is sent at its arrival time, whatever the others are doing.
    for &(t, f) in &arrivals {
        let due = t0 + Duration::from_secs_f64(t);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (http, url, body, timeout, outcomes) = (
            http.clone(),
            urls[f].clone(),
            bodies[f].clone(),
            timeouts[f],
            outcomes.clone(),
        );
        runtime.spawn(async move {
            let sent = Instant::now();
            let ok = http
                .post(&url)
                .headers(body.headers())
                .body(body.bytes.clone())
                .timeout(timeout)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ());
            let latency_s = ok.ok().map(|()| sent.elapsed().as_secs_f64());
            if let Ok(mut o) = outcomes.lock() {
                o.push(Outcome {
                    func: f,
                    arrival_s: t,
                    latency_s,
                });
            }
        });
    }
    let end = t0 + Duration::from_secs_f64(scenario.duration_s);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let elapsed = t0.elapsed().as_secs_f64();
    let training_iterations_per_s: Vec<f64> = trainer_urls
        .iter()
        .zip(&training_at_start)
        .map(|(u, &i0)| iterations(&client, u).map(|i1| (i1.saturating_sub(i0)) as f64 / elapsed))
        .collect::<Result<_>>()?;
    stop_sampler.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, mut ledger) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the instance sampler panicked"))?;
    // Requests still in flight at the end finish (or time out) before they are judged, as in the simulator's
    // drain; the longest timeout bounds the wait.
    let longest = timeouts.iter().max().copied().unwrap_or_default();
    let wait_until = Instant::now() + longest + Duration::from_secs(1);
    while Instant::now() < wait_until {
        let done = outcomes.lock().map(|o| o.len()).unwrap_or(0);
        if done >= arrivals.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The batches of the requests that finished during the drain count too, as the simulator's do, the last
    // one included.
    if let Ok(list) = get_json(&client, &format!("{url}/v1/instances")) {
        ledger.settle(10, Duration::from_millis(100), |ledger| {
            scrape_batches(&client, &list, &names, ledger, false)
        });
    }
    let outcomes = outcomes
        .lock()
        .map_err(|_| anyhow::anyhow!("outcomes lock poisoned"))?
        .clone();

    // The capacity the platform profiled for each function (its latest `profiled` event).
    let events = get_json(
        &client,
        &format!("{url}/v1/events?kind=profiled&limit=10000"),
    )
    .with_context(|| format!("GET {url}/v1/events?kind=profiled"))?;
    let capacity_rps: Vec<f64> = scenario
        .functions
        .iter()
        .map(|f| {
            events["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["kind"] == "profiled" && e["function"] == f.name.as_str())
                .filter_map(|e| e["data"]["capacity_rps"].as_f64())
                .next_back()
                .unwrap_or(f64::NAN)
        })
        .collect();
    // Judge the measured requests (arrived after warm-up) as the simulator does.
    let mut lat_us: Vec<u32> = Vec::new();
    let (mut judged, mut bad) = (0u64, 0u64);
    let measured = arrivals
        .iter()
        .filter(|(t, _)| *t >= scenario.warmup_s)
        .count() as u64;
    for o in outcomes.iter().filter(|o| o.arrival_s >= scenario.warmup_s) {
        let slo_s = scenario.functions[o.func].slo_ms / 1000.0;
        judged += 1;
        match o.latency_s {
            Some(l) => {
                lat_us.push((l * 1e6).round().min(f64::from(u32::MAX)) as u32);
                if l > slo_s {
                    bad += 1;
                }
            }
            None => bad += 1,
        }
    }
    // Requests that never came back within the wait count as violations too.
    bad += measured.saturating_sub(judged);
    lat_us.sort_unstable();
    let mut instance_seconds = 0.0;
    let mut scale_out_s = Vec::new();
    let mut last = scenario
        .functions
        .iter()
        .map(|f| f.initial_instances)
        .sum::<u32>();
    for w in samples.windows(2) {
        let ((ta, na), (tb, nb)) = (w[0], w[1]);
        instance_seconds += f64::from(na) * (tb - ta);
        for _ in last..nb {
            scale_out_s.push(ta);
        }
        last = nb;
    }
    if let (Some(&(tl, nl)), true) = (samples.last(), scenario.duration_s > 0.0) {
        instance_seconds += f64::from(nl) * (scenario.duration_s - tl).max(0.0);
    }
    if let Some(&(tf, nf)) = samples.first() {
        instance_seconds += f64::from(nf) * tf;
    }
    Ok(Side {
        requests: measured,
        // The simulator's percentile rule (nearest rank), so that both sides are summarised alike.
        p50_ms: percentile_ms(&lat_us, 0.50),
        p99_ms: percentile_ms(&lat_us, 0.99),
        slo_violation_rate: if measured > 0 {
            bad as f64 / measured as f64
        } else {
            0.0
        },
        instance_seconds,
        scale_out_s,
        training_iterations_per_s,
        capacity_rps,
        batch_times: ledger.totals(scenario.functions.len()),
        raw: {
            let mut raw: Vec<(f64, Option<f64>)> = outcomes
                .iter()
                .map(|o| (o.arrival_s, o.latency_s.map(|l| l * 1e3)))
                .collect();
            raw.sort_by(|x, y| x.0.total_cmp(&y.0));
            raw
        },
    })
}

/// Scrapes `/metrics` of every instance in `list` (a `/v1/instances` answer) that serves one of `names`, into
/// `ledger`. An instance that does not answer (starting, or gone) is skipped this round.
fn scrape_batches(
    client: &reqwest::blocking::Client,
    list: &Value,
    names: &[String],
    ledger: &mut Ledger,
    before_run: bool,
) {
    for i in list["instances"].as_array().into_iter().flatten() {
        let Some(func) = i["function"]
            .as_str()
            .and_then(|f| names.iter().position(|n| n == f))
        else {
            continue;
        };
        let (Some(id), Some(endpoint)) =
            (i["id"].as_str(), i["labels"]["dilu.io/endpoint"].as_str())
        else {
            continue;
        };
        let text = client
            .get(format!("{endpoint}/metrics"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text());
        if let Ok(text) = text {
            ledger.record(id, func, parse(&text), before_run);
        }
    }
}
