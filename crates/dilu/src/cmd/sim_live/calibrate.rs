//! `dilu sim calibrate`: one function (a `dilu worker` serving an ONNX model, or the built-in `dilu train`)
//! measured on this machine's CPU device at a grid of (batch × share), written as a Dilu profile table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dilu_quota::layout::mode;
use dilu_quota::{AgentChannel, ChannelSpec, DeviceKind, UNLIMITED};

use super::CalibrateArgs;
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

/// Measures the (batch × share) table `a` asks for and writes it to `a.out`.
pub(super) fn calibrate(a: CalibrateArgs) -> Result<()> {
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
        let body = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
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
        let round = |batch: u32| -> Result<f64> {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..batch)
                    .map(|_| {
                        s.spawn(|| {
                            client
                                .post(&infer)
                                .header("content-type", "application/json")
                                .body(body.clone())
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
        while let Err(e) = round(1) {
            ensure!(
                Instant::now() < deadline,
                "the worker did not answer within 120 s: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        cold_start_s = started.elapsed().as_secs_f64();
        for &batch in &a.batches {
            for &pct in &a.shares {
                set_share(pct);
                round(batch)?;
                let mut times = (0..a.rounds)
                    .map(|_| round(batch))
                    .collect::<Result<Vec<f64>>>()?;
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let mean = times.iter().sum::<f64>() / times.len() as f64;
                eprintln!(
                    "calibrate: batch {batch} at {pct:3}%: {:.1} ms per batch",
                    median * 1e3
                );
                rows.push((batch, pct, median, f64::from(batch) / mean));
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
    Ok(())
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
