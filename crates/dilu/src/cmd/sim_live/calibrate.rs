//! `dilu sim calibrate`: one function (a `dilu worker` serving an ONNX model, or the built-in `dilu train`)
//! measured on this machine's CPU device at a grid of (batch × share), written as a Dilu profile table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dilu_quota::layout::mode;
use dilu_quota::{AgentChannel, ChannelSpec, DeviceKind, UNLIMITED};

use super::CalibrateArgs;
use super::batches::settled_seconds;
use super::body::RequestBody;
use super::http::get_json;
use super::process::{spawn_until, tempdir, train_command};
use crate::cmd::output::ensure_parent_dir;

/// The CPU device's cores: `--cores`, or all of this machine's.
fn cores(flag: Option<u32>) -> Result<u32> {
    match flag {
        Some(0) => bail!("--cores 0: must be ≥ 1"),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism()
            .context("counting cores")?
            .get() as u32),
    }
}

/// What a calibration measured besides the table.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Calibrated {
    /// Inference: the median time a batch-1 request spent outside the worker's executor (the HTTP hops,
    /// decoding the request, encoding the answer), ms — the scenario key `request_overhead_ms`.
    pub request_overhead_ms: Option<f64>,
    /// Inference: the median over the points of the rounds' coefficient of variation of the executor's time —
    /// the scenario key `service_cv`.
    pub service_cv: Option<f64>,
}

/// Measures the (batch × share) table `a` asks for and writes it to `a.out`. An inference table holds the
/// executor's time per batch (the worker's `dilu_worker_batch_seconds`), the end-to-end time less what a
/// request spends outside it, which the result reports apart.
pub(super) fn calibrate(a: CalibrateArgs) -> Result<Calibrated> {
    ensure!(!a.batches.is_empty(), "--batches: give at least one batch");
    ensure!(!a.shares.is_empty(), "--shares: give at least one share");
    for &s in &a.shares {
        ensure!((1..=100).contains(&s), "--shares {s}: must be in 1..=100");
    }
    for &b in &a.batches {
        ensure!(
            (1..=4096).contains(&b),
            "--batches {b}: must be in 1..=4096"
        );
    }
    ensure!(a.rounds >= 1, "--rounds 0: must be ≥ 1");
    ensure!(
        a.train_window_s > 0.0 && a.train_window_s.is_finite(),
        "--train-window-s {}: must be > 0",
        a.train_window_s
    );
    let cores = cores(a.cores)?;
    let window_ns = a.window_ms * 1_000_000;
    let capacity_ns = u64::from(cores) * window_ns;
    let dir = tempdir("dilu-calibrate")?;
    let quota_path = dir.join("quota");
    let channel = cpu_channel(&quota_path, UNLIMITED, window_ns)?;
    let set_share = |pct: u32| {
        channel.set_budget(capacity_ns * u64::from(pct) / 100);
        std::thread::sleep(Duration::from_millis(50));
    };
    let exe = std::env::current_exe().context("locating the dilu binary")?;
    let _beside = match a.beside_trainer {
        Some(pct) => {
            let path = dir.join("beside");
            cpu_channel(&path, capacity_ns * u64::from(pct) / 100, window_ns)?;
            let cmd = train_command(&exe, a.hidden, a.layers, a.trainer_batch, &path);
            let (guard, _) = spawn_until(cmd, "dilu train listening on ", "dilu train")?;
            eprintln!("calibrate: next to a trainer held at {pct}% of the device");
            Some(guard)
        }
        None => None,
    };
    let mut rows: Vec<(u32, u32, f64, f64)> = Vec::new();
    let mut overheads_s: Vec<f64> = Vec::new();
    let mut cvs: Vec<f64> = Vec::new();
    let cold_start_s;
    if a.trainer {
        ensure!(
            a.batches.len() == 1,
            "--batches: --trainer takes exactly one batch (the trainer's)"
        );
        let batch = a.batches[0];
        let started = Instant::now();
        let cmd = train_command(&exe, a.hidden, a.layers, batch, &quota_path);
        let (_trainer, url) = spawn_until(cmd, "dilu train listening on ", "dilu train")?;
        let client = reqwest::blocking::Client::new();
        let iterations = || -> Result<u64> {
            let v = get_json(&client, &format!("{url}/status"))
                .with_context(|| format!("GET {url}/status"))?;
            v["iterations"]
                .as_u64()
                .with_context(|| format!("GET {url}/status: no 'iterations' in {v}"))
        };
        while iterations()? == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        cold_start_s = started.elapsed().as_secs_f64();
        for &pct in &a.shares {
            set_share(pct);
            std::thread::sleep(Duration::from_millis(300));
            let (i0, t0) = (iterations()?, Instant::now());
            std::thread::sleep(Duration::from_secs_f64(a.train_window_s));
            let (i1, dt) = (iterations()?, t0.elapsed().as_secs_f64());
            ensure!(
                i1 > i0,
                "the trainer made no progress at {pct}% of the device in {dt:.1} s"
            );
            let per_s = (i1 - i0) as f64 / dt;
            eprintln!("calibrate: training at {pct:3}%: {per_s:.1} iterations/s");
            rows.push((batch, pct, 1.0 / per_s, per_s * f64::from(batch)));
        }
    } else {
        let onnx = a.onnx.as_ref().context("--onnx or --trainer is required")?;
        let input = a
            .input
            .as_ref()
            .context("--input is required with --onnx")?;
        let json = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let body = RequestBody::new(&json, a.binary_input)
            .with_context(|| format!("--input {}", input.display()))?;
        let max_batch = a.batches.iter().copied().max().unwrap_or(1);
        let started = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--name", "m", "--listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(onnx)
            .args(["--max-batch", &max_batch.to_string()])
            .arg("--quota-file")
            .arg(&quota_path);
        let (_worker, url) = spawn_until(cmd, "dilu worker listening on ", "dilu worker")?;
        let metrics = format!("{url}/metrics");
        let (_gateway, url) = if a.through_gateway {
            let mut cmd = Command::new(&exe);
            cmd.args(["gateway", "--listen", "127.0.0.1:0", "--route"])
                .arg(format!("m={url}"));
            let (guard, gateway) = spawn_until(cmd, "dilu gateway listening on ", "dilu gateway")?;
            eprintln!("calibrate: requests go through a dilu gateway at {gateway}");
            (Some(guard), gateway)
        } else {
            (None, url)
        };
        let infer = format!("{url}/v2/models/m/infer");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let gap = Duration::from_millis(a.round_gap_ms);
        // One round of `batch` concurrent requests, after `pause` idle.
        let round = |batch: u32, pause: Duration| -> Result<f64> {
            std::thread::sleep(pause);
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..batch)
                    .map(|_| {
                        s.spawn(|| {
                            client
                                .post(&infer)
                                .headers(body.headers())
                                .body(body.bytes.clone())
                                .send()
                                .and_then(|r| r.error_for_status())
                                .map(|_| ())
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(r) => r.with_context(|| format!("POST {infer}"))?,
                        Err(_) => bail!("a request thread panicked"),
                    }
                }
                Ok(())
            })?;
            Ok(t0.elapsed().as_secs_f64())
        };
        // The worker listens before its model is loaded (it answers 503 until then).
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = round(1, Duration::ZERO) {
            ensure!(
                Instant::now() < deadline,
                "the worker did not answer within 120 s: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        cold_start_s = started.elapsed().as_secs_f64();
        // The executor's seconds so far, over every batch size (the worker's summary), once the worker has
        // recorded every batch it ran.
        let executor_s = || -> Result<f64> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = client
                    .get(&metrics)
                    .send()
                    .and_then(|r| r.error_for_status())
                    .and_then(|r| r.text())
                    .with_context(|| format!("GET {metrics}"))?;
                if let Some(seconds) = settled_seconds(&text) {
                    return Ok(seconds);
                }
                ensure!(
                    Instant::now() < deadline,
                    "the worker at {metrics} did not record the time of every batch it ran within 10 s"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        for &batch in &a.batches {
            for &pct in &a.shares {
                set_share(pct);
                round(batch, gap)?;
                // Per timed round: its end-to-end time and the executor's time within it (the worker may split
                // a round into more than one batch; the round's cost is all of them).
                let mut e2e = Vec::with_capacity(a.rounds as usize);
                let mut executor = Vec::with_capacity(a.rounds as usize);
                let mut before = executor_s()?;
                for _ in 0..a.rounds {
                    e2e.push(round(batch, gap)?);
                    let after = executor_s()?;
                    executor.push(after - before);
                    before = after;
                }
                if batch == 1 {
                    overheads_s.extend(e2e.iter().zip(&executor).map(|(e, x)| e - x));
                }
                let mean = executor.iter().sum::<f64>() / executor.len() as f64;
                ensure!(
                    mean > 0.0,
                    "batch {batch} at {pct}%: the worker recorded no executor time over {} rounds",
                    executor.len()
                );
                if executor.len() >= 2 && mean > 0.0 {
                    let var = executor
                        .iter()
                        .map(|x| (x - mean) * (x - mean))
                        .sum::<f64>()
                        / (executor.len() - 1) as f64;
                    cvs.push(var.sqrt() / mean);
                }
                let executor_median = median(&mut executor);
                eprintln!(
                    "calibrate: batch {batch} at {pct:3}%: {:.1} ms per batch in the executor, {:.1} ms end to end",
                    executor_median * 1e3,
                    median(&mut e2e) * 1e3
                );
                rows.push((batch, pct, executor_median, f64::from(batch) / mean));
            }
        }
        // One point is six rounds on a machine whose speed drifts while the grid is measured, so a batch's
        // times are not monotone in the share, and the simulator's model (a running minimum over the share)
        // would carry one lucky point to every larger share. A least-squares fit that never rises with the
        // share pools such points with their neighbours instead.
        for batch in &a.batches {
            let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].0 == *batch).collect();
            let raw: Vec<f64> = idx.iter().map(|&i| rows[i].2).collect();
            let fitted = non_increasing_fit(&raw);
            for (&i, &t) in idx.iter().zip(&fitted) {
                if (t - rows[i].2).abs() > 1e-9 {
                    eprintln!(
                        "calibrate: batch {batch} at {:3}%: {:.1} ms pooled with its neighbours to {:.1} ms",
                        rows[i].1,
                        rows[i].2 * 1e3,
                        t * 1e3
                    );
                }
                rows[i].2 = t;
                rows[i].3 = f64::from(*batch) / t;
            }
        }
    }
    let mut text = String::new();
    for (b, p, l, t) in &rows {
        text.push_str(&format!("{b},{p},{l:.6},{t:.6}\n"));
    }
    ensure_parent_dir(&a.out)?;
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "calibrate: wrote {} points to {}; cold start (spawn to first answer) {cold_start_s:.2} s on {cores} cores",
        rows.len(),
        a.out.display()
    );
    let request_overhead_ms =
        (!overheads_s.is_empty()).then(|| median(&mut overheads_s).max(0.0) * 1e3);
    if let Some(o) = request_overhead_ms {
        println!(
            "calibrate: a request spends {o:.1} ms outside the executor (batch 1, median over every share): \
             the scenario key request_overhead_ms"
        );
    }
    let service_cv = (!cvs.is_empty()).then(|| median(&mut cvs));
    if let Some(cv) = service_cv {
        println!(
            "calibrate: a batch's executor time varies by {cv:.3} from round to round (coefficient of \
             variation, median over the points): the scenario key service_cv"
        );
    }
    Ok(Calibrated {
        request_overhead_ms,
        service_cv,
    })
}

/// The least-squares fit of `v` (in order) that never increases: pool-adjacent-violators, each run of points
/// that rises replaced by its mean.
fn non_increasing_fit(v: &[f64]) -> Vec<f64> {
    // Blocks of (sum, count), each block's mean no larger than the previous one's.
    let mut blocks: Vec<(f64, usize)> = Vec::with_capacity(v.len());
    for &x in v {
        blocks.push((x, 1));
        while blocks.len() >= 2 {
            let (s1, n1) = blocks[blocks.len() - 1];
            let (s0, n0) = blocks[blocks.len() - 2];
            if s1 / n1 as f64 <= s0 / n0 as f64 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (s0 + s1, n0 + n1);
        }
    }
    blocks
        .into_iter()
        .flat_map(|(s, n)| std::iter::repeat_n(s / n as f64, n))
        .collect()
}

/// The median of `v` (sorted in place; NaN when empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Creates a quota channel for the CPU device at `path` granting `budget_per_window` ns of CPU per window.
fn cpu_channel(path: &Path, budget_per_window: u64, window_ns: u64) -> Result<AgentChannel> {
    AgentChannel::create(
        path,
        &ChannelSpec {
            device_uuid: String::new(),
            device_kind: DeviceKind::Cpu,
            budget_per_window,
            window_ns,
            mem_cap_bytes: UNLIMITED,
            mode: mode::ALL,
            resident_threads: 0,
        },
        0o600,
    )
    .with_context(|| format!("creating quota channel {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_pools_points_that_rise_with_the_share() {
        // A lucky point at 40 % (36.9 ms) among 50–56 ms: pooled, not carried to every larger share.
        let raw = [99.8, 51.0, 41.6, 36.9, 52.9, 53.6, 52.4, 55.7];
        let fit = non_increasing_fit(&raw);
        assert_eq!(fit.len(), raw.len());
        assert!(fit.windows(2).all(|w| w[1] <= w[0]), "{fit:?}");
        assert_eq!(&fit[..2], &[99.8, 51.0]);
        let pooled = raw[2..].iter().sum::<f64>() / 6.0;
        for t in &fit[2..] {
            assert!((t - pooled).abs() < 1e-9, "{fit:?}");
        }
        // Already monotone: unchanged; the pooled mean keeps the total.
        assert_eq!(
            non_increasing_fit(&[3.0, 2.0, 2.0, 1.0]),
            vec![3.0, 2.0, 2.0, 1.0]
        );
        let total: f64 = fit.iter().sum();
        assert!((total - raw.iter().sum::<f64>()).abs() < 1e-9);
        assert!(non_increasing_fit(&[]).is_empty());
    }
}
