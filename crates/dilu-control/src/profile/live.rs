//! The live profiler: the `dilu-core` searches (Hybrid Growth Search for inference, bisection for training)
//! run over a [`Measure`] that drives a real instance. Each point sets the instance's share through its
//! backend (request = limit = the share, so the token manager gives it exactly that) and measures real
//! requests (inference) or real training iterations.
//!
//! Inference: a point `(batch, share)` sends `batch` identical requests at once, several rounds after a
//! warm-up; latency is the median round time (a batch completes when its last request does) and throughput is
//! `batch / mean round time`. The quota follows `dilu-core`'s mapping: request = the chosen share, limit =
//! the smallest measured share reaching 95% of the best throughput at the chosen batch (the 100% point is
//! measured for that), found with the registry's knee search, capacity = the throughput at the request.
//!
//! Shares here are shares of the device the instance runs on; on the CPU device one single-threaded worker
//! cannot use more than one core, which the measurements show as a flat throughput beyond `1/cores`.

use std::time::{Duration, Instant};

use dilu_api::Profile;
use dilu_api::profile::source;
use dilu_core::profiler::knee::{candidates, default_knee};
use dilu_core::profiler::{
    DEFAULT_TRAINING_TARGET, HgsConfig, Measure, Measurement, ProfileError, TrainingQuota,
    bisect_training_paired, hybrid_growth_search,
};
use serde_json::{Value, json};

/// Why profiling failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfilingError {
    /// The search itself refused (bad configuration or a measurement it cannot use).
    #[error("profiling: {0}")]
    Search(#[from] ProfileError),
    /// The instance could not be driven.
    #[error("profiling: {0}")]
    Instance(String),
    /// Not even batch 1 at the whole device meets the SLO.
    #[error(
        "profiling: infeasible: batch 1 on the whole device takes {latency_ms:.1} ms, above the SLO of {slo_ms} ms"
    )]
    Infeasible {
        /// Latency measured at batch 1, 100%.
        latency_ms: f64,
        /// The SLO.
        slo_ms: f64,
    },
}

/// Sets the profiled instance's share of its device (request = limit = `share`).
pub type SetShare<'a> = Box<dyn FnMut(f64) -> Result<(), String> + Send + 'a>;

/// Settings of a live profiling run.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Timed rounds per inference point (after one warm-up round).
    pub rounds: u32,
    /// How long to let a new share settle before measuring.
    pub settle: Duration,
    /// How long a training point is measured.
    pub training_window: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            rounds: 4,
            settle: Duration::from_millis(30),
            training_window: Duration::from_millis(1200),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`Measure`] over a live inference instance.
pub struct LiveInference<'a> {
    set_share: SetShare<'a>,
    client: reqwest::blocking::Client,
    infer_url: String,
    body: Vec<u8>,
    settings: LiveSettings,
    points: Vec<(u32, u32, Measurement)>,
    failure: Option<String>,
}

/// A v2 request body for the model at `base_url` (one sample, batch dimension 1) built from its metadata:
/// FP32 inputs get a deterministic ramp in [0, 1), integer inputs zeros. `shape` overrides the declared shape.
pub fn sample_request(
    client: &reqwest::blocking::Client,
    base_url: &str,
    model: &str,
    shape: Option<&[usize]>,
) -> Result<Vec<u8>, String> {
    let url = format!("{base_url}/v2/models/{model}");
    let meta: Value = client
        .get(&url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let input = meta["inputs"]
        .get(0)
        .ok_or_else(|| format!("GET {url}: the model declares no input"))?;
    let name = input["name"].as_str().unwrap_or("input").to_string();
    let datatype = input["datatype"].as_str().unwrap_or("FP32").to_string();
    let dims: Vec<usize> = match shape {
        Some(s) => {
            let mut s = s.to_vec();
            if let Some(first) = s.first_mut() {
                *first = 1;
            }
            s
        }
        None => input["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d.as_i64().unwrap_or(1).max(1) as usize)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let count: usize = dims.iter().product();
    let data: Value = if datatype == "FP32" || datatype == "FP64" || datatype == "FP16" {
        (0..count)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
            .collect()
    } else {
        (0..count).map(|_| 0).collect()
    };
    serde_json::to_vec(
        &json!({"inputs": [{"name": name, "shape": dims, "datatype": datatype, "data": data}]}),
    )
    .map_err(|e| e.to_string())
}

/// The request profiling sends: the spec's own body, or one built from the model's metadata (`shape`
/// overriding the declared shape).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample<'s> {
    /// The first input's shape, batch first, for models that leave dimensions open.
    pub shape: Option<&'s [usize]>,
    /// A v2 request body to send as it is.
    pub body: Option<&'s Value>,
}

impl<'a> LiveInference<'a> {
    /// Drives the instance serving `model` at `base_url` with `sample`; `set_share` changes its quota.
    pub fn new(
        base_url: &str,
        model: &str,
        sample: Sample<'_>,
        set_share: SetShare<'a>,
        settings: LiveSettings,
    ) -> Result<Self, ProfilingError> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| ProfilingError::Instance(e.to_string()))?;
        let body = match sample.body {
            Some(body) => {
                serde_json::to_vec(body).map_err(|e| ProfilingError::Instance(e.to_string()))?
            }
            None => sample_request(&client, base_url, model, sample.shape)
                .map_err(ProfilingError::Instance)?,
        };
        Ok(Self {
            set_share,
            client,
            infer_url: format!("{base_url}/v2/models/{model}/infer"),
            body,
            settings,
            points: Vec::new(),
            failure: None,
        })
    }

    /// Every point measured so far: (batch, share %, measurement).
    pub fn points(&self) -> &[(u32, u32, Measurement)] {
        &self.points
    }

    fn round(&self, batch: u32) -> Result<Duration, String> {
        let (client, url, body) = (&self.client, self.infer_url.as_str(), &self.body);
        let start = Instant::now();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..batch)
                .map(|_| {
                    scope.spawn(move || {
                        let resp = client
                            .post(url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .map_err(|e| format!("POST {url}: {e}"))?;
                        let status = resp.status();
                        if !status.is_success() {
                            let text = resp.text().unwrap_or_default();
                            return Err(format!("POST {url}: {status}: {text}"));
                        }
                        resp.bytes().map(|_| ()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| "a request thread panicked".to_string())??;
            }
            Ok(start.elapsed())
        })
    }
}

impl LiveInference<'_> {
    fn timed_rounds(
        &mut self,
        batch: u32,
        sm_pct: u32,
        times: &mut Vec<f64>,
    ) -> Result<(), String> {
        (self.set_share)(f64::from(sm_pct) / 100.0)?;
        std::thread::sleep(self.settings.settle);
        self.round(batch)?;
        for _ in 0..self.settings.rounds.max(1) {
            times.push(self.round(batch)?.as_secs_f64());
        }
        Ok(())
    }

    /// The instance failure behind the last failed measurement, turned into a [`ProfilingError`].
    fn explain(&mut self, error: ProfileError) -> ProfilingError {
        match self.failure.take() {
            Some(reason) => ProfilingError::Instance(reason),
            None => ProfilingError::Search(error),
        }
    }
}

impl Measure for LiveInference<'_> {
    fn measure(&mut self, batch: u32, sm_pct: u32) -> Result<Measurement, ProfileError> {
        if let Some(&(_, _, m)) = self.points.iter().find(|p| p.0 == batch && p.1 == sm_pct) {
            return Ok(m);
        }
        let mut times = Vec::new();
        if let Err(reason) = self.timed_rounds(batch, sm_pct, &mut times) {
            self.failure = Some(reason);
            return Err(ProfileError::Config(dilu_core::FieldError::new(
                "live measurement",
                format!("batch={batch} sm_pct={sm_pct}"),
                "the instance did not answer (see the profiling error)",
            )));
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        let m = Measurement {
            latency_s: times[times.len() / 2],
            throughput: if mean > 0.0 {
                f64::from(batch) / mean
            } else {
                0.0
            },
        };
        self.points.push((batch, sm_pct, m));
        Ok(m)
    }
}

/// Profiles an inference instance: Hybrid Growth Search for the SLO, then the limit knee and capacity.
/// `max_pct` is the most of the device one instance can use (100 on a GPU; on the CPU device a worker runs
/// its model on one thread, so one core's share): the limit knee is searched below it.
pub fn profile_inference(
    measure: &mut LiveInference<'_>,
    slo_ms: f64,
    max_batch: u32,
    max_pct: u32,
) -> Result<Profile, ProfilingError> {
    let started = Instant::now();
    let mut cfg = HgsConfig::new(slo_ms / 1000.0);
    cfg.max_batch = max_batch.max(1);
    let result = hybrid_growth_search(measure, &cfg).map_err(|e| measure.explain(e))?;
    if !result.feasible {
        return Err(ProfilingError::Infeasible {
            latency_ms: result.latency_s * 1000.0,
            slo_ms,
        });
    }
    // The limit knee: the smallest share (on the search's grid) whose throughput at the chosen batch reaches
    // 95% of the most the instance can use, found by bisection between the request and that share.
    let top = max_pct.clamp(result.sm_pct, 100);
    let full = measure
        .measure(result.batch, top)
        .map_err(|e| measure.explain(e))?;
    let best = measure
        .points()
        .iter()
        .filter(|p| p.0 == result.batch)
        .map(|p| p.2.throughput)
        .fold(full.throughput, f64::max);
    let shares = candidates(result.sm_pct, top, cfg.sm_step);
    let knee =
        default_knee(measure, result.batch, &shares, best).map_err(|e| measure.explain(e))?;
    let request = f64::from(result.sm_pct) / 100.0;
    Ok(Profile {
        request,
        limit: (f64::from(knee) / 100.0).max(request),
        batch: result.batch,
        capacity_rps: result.throughput,
        capacity_full_rps: Some(best),
        latency_s: Some(result.latency_s),
        source: source::HGS.into(),
        measurements: measure.points().len() as u32,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Measures one inference instance's capacity at a given quota (the spec gave the quota but not the
/// capacity): one point at `batch` and `request`, then the share is restored by the caller.
pub fn calibrate_inference(
    measure: &mut LiveInference<'_>,
    request: f64,
    limit: f64,
    batch: u32,
) -> Result<Profile, ProfilingError> {
    let started = Instant::now();
    let pct = ((request * 100.0).round() as u32).clamp(1, 100);
    let m = measure
        .measure(batch.max(1), pct)
        .map_err(|e| measure.explain(e))?;
    Ok(Profile {
        request,
        limit,
        batch,
        capacity_rps: m.throughput,
        capacity_full_rps: None,
        latency_s: Some(m.latency_s),
        source: source::CALIBRATED.into(),
        measurements: 1,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads a trainer's iteration counter from `GET {base_url}/status`.
fn iterations(
    client: &reqwest::blocking::Client,
    base_url: &str,
) -> Result<(u64, Instant), String> {
    let url = format!("{base_url}/status");
    let v: Value = client
        .get(&url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let n = v["iterations"]
        .as_u64()
        .ok_or_else(|| format!("GET {url}: no 'iterations' in {v}"))?;
    Ok((n, Instant::now()))
}

/// Profiles a training instance: bisection for the smallest share keeping 98% of its whole-device
/// iteration rate, each share judged against the whole device measured right before and after it
/// ([`bisect_training_paired`]: the machine's speed drifts more than 2 % over the search); limit = the whole
/// device. `measurements` counts every window measured, the whole-device ones between candidates included.
pub fn profile_training(
    base_url: &str,
    mut set_share: SetShare<'_>,
    settings: LiveSettings,
) -> Result<Profile, ProfilingError> {
    let started = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(settings.request_timeout)
        .build()
        .map_err(|e| ProfilingError::Instance(e.to_string()))?;
    let mut failure: Option<String> = None;
    let mut points = 0u32;
    let mut rate = |pct: u32| -> f64 {
        points += 1;
        let measured = (|| {
            set_share(f64::from(pct) / 100.0)?;
            std::thread::sleep(settings.settle.max(Duration::from_millis(200)));
            let (a, t0) = iterations(&client, base_url)?;
            std::thread::sleep(settings.training_window);
            let (b, t1) = iterations(&client, base_url)?;
            Ok::<f64, String>(b.saturating_sub(a) as f64 / (t1 - t0).as_secs_f64())
        })();
        measured.unwrap_or_else(|e| {
            failure.get_or_insert(e);
            f64::NAN
        })
    };
    let result = bisect_training_paired(&mut rate, DEFAULT_TRAINING_TARGET);
    if let Some(reason) = failure {
        return Err(ProfilingError::Instance(reason));
    }
    let profile = result?;
    let quota = TrainingQuota::from_profile(&profile);
    Ok(Profile {
        request: quota.sm_request,
        limit: quota.sm_limit,
        batch: 0,
        capacity_rps: profile.throughput,
        capacity_full_rps: Some(profile.full_throughput),
        latency_s: None,
        source: source::BISECTION.into(),
        measurements: points,
        seconds: started.elapsed().as_secs_f64(),
    })
}
