//! Profiling as the reconciler sees it: it starts a [`ProfileRun`] on a ready instance with a [`Profiler`]
//! and polls it on later passes; the run measures for seconds without holding the reconciler up.
//! [`LiveProfiler`] drives real instances over HTTP; tests use a scripted profiler.

pub mod live;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dilu_api::{FunctionSpec, Profile, Quota, Runtime};

use crate::backend::InstanceBackend;
use live::{LiveInference, LiveSettings, Sample, SetShare};

/// What to find out about a function on one of its instances.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileGoal {
    /// Search quota and batch (Hybrid Growth Search and the limit knee; bisection for training).
    Search,
    /// The quota is given: measure the capacity at it.
    Calibrate(Quota),
}

/// A profiling job.
#[derive(Debug, Clone)]
pub struct ProfileJob {
    /// The function.
    pub spec: FunctionSpec,
    /// What to find out.
    pub goal: ProfileGoal,
    /// The instance to measure.
    pub instance: String,
    /// Where it serves.
    pub endpoint: String,
    /// The most of its device one instance can use.
    pub usable_share: f64,
}

/// A profiling run in progress.
pub trait ProfileRun: Send {
    /// The result once the run has finished; `None` while it runs.
    fn poll(&mut self) -> Option<Result<Profile, String>>;
    /// Asks the run to stop early (its instance is going away); `poll` then returns an error.
    fn cancel(&mut self);
}

/// Starts profiling runs.
pub trait Profiler: Send + Sync {
    /// Starts measuring `job`.
    fn start(&self, job: ProfileJob) -> Box<dyn ProfileRun>;
}

/// Profiles live instances: each measurement point sets the instance's share through the backend and times
/// real requests (inference) or real iterations (training), on a thread of its own.
pub struct LiveProfiler {
    backend: Arc<dyn InstanceBackend>,
    runtime: tokio::runtime::Handle,
    settings: LiveSettings,
}

impl LiveProfiler {
    /// A profiler setting shares through `backend`; `runtime` runs the backend's calls.
    pub fn new(
        backend: Arc<dyn InstanceBackend>,
        runtime: tokio::runtime::Handle,
        settings: LiveSettings,
    ) -> LiveProfiler {
        LiveProfiler {
            backend,
            runtime,
            settings,
        }
    }
}

struct ThreadRun {
    result: Arc<Mutex<Option<Result<Profile, String>>>>,
    cancelled: Arc<AtomicBool>,
}

impl ProfileRun for ThreadRun {
    fn poll(&mut self) -> Option<Result<Profile, String>> {
        dilu_core::sync::lock(&self.result).take()
    }

    fn cancel(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

impl Profiler for LiveProfiler {
    fn start(&self, job: ProfileJob) -> Box<dyn ProfileRun> {
        let result = Arc::new(Mutex::new(None));
        let cancelled = Arc::new(AtomicBool::new(false));
        let run = ThreadRun {
            result: Arc::clone(&result),
            cancelled: Arc::clone(&cancelled),
        };
        let backend = Arc::clone(&self.backend);
        let handle = self.runtime.clone();
        let settings = self.settings;
        let name = format!("profile-{}", job.spec.name);
        let spawned = std::thread::Builder::new().name(name).spawn({
            let result = Arc::clone(&result);
            move || {
                let outcome = measure(job, backend, handle, settings, cancelled);
                *dilu_core::sync::lock(&result) = Some(outcome);
            }
        });
        if let Err(e) = spawned {
            *dilu_core::sync::lock(&result) =
                Some(Err(format!("starting the profiler thread: {e}")));
        }
        Box::new(run)
    }
}

/// Runs one job to its end (on the profiler's thread).
fn measure(
    job: ProfileJob,
    backend: Arc<dyn InstanceBackend>,
    handle: tokio::runtime::Handle,
    settings: LiveSettings,
    cancelled: Arc<AtomicBool>,
) -> Result<Profile, String> {
    let instance = job.instance.clone();
    let set_share: SetShare<'_> = Box::new(move |share: f64| {
        if cancelled.load(Ordering::SeqCst) {
            return Err("profiling was cancelled: the instance is going away".into());
        }
        handle
            .block_on(backend.set_quota(&instance, Quota::new(share, share)))
            .map_err(|e| e.to_string())
    });
    let max_pct = ((job.usable_share * 100.0 / 10.0).ceil() as u32 * 10).clamp(10, 100);
    let inference = job.spec.kind.is_inference();
    let outcome = match job.spec.runtime() {
        Runtime::Trainer { .. } => live::profile_training(&job.endpoint, set_share, settings),
        Runtime::Process { .. } if !inference => {
            live::profile_training(&job.endpoint, set_share, settings)
        }
        runtime => {
            let (shape, sample) = match &runtime {
                Runtime::Onnx { model } => (model.input_shape.as_deref(), None),
                Runtime::Process { process } => (None, process.sample.as_ref()),
                Runtime::Trainer { .. } => (None, None),
            };
            let max_batch = runtime.max_batch().max(1);
            let model = &job.spec.name;
            let sample = Sample {
                shape,
                body: sample,
            };
            LiveInference::new(&job.endpoint, model, sample, set_share, settings).and_then(
                |mut measure| match job.goal {
                    ProfileGoal::Calibrate(q) => {
                        live::calibrate_inference(&mut measure, q.request, q.limit, max_batch)
                    }
                    ProfileGoal::Search => live::profile_inference(
                        &mut measure,
                        job.spec.slo_ms.unwrap_or(1000.0),
                        max_batch,
                        max_pct,
                    ),
                },
            )
        }
    };
    outcome.map_err(|e| e.to_string())
}
