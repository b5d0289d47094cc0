//! `dilu worker`: serves one ONNX model over the Open Inference Protocol v2 (the built-in worker,
//! [`dilu_worker::serve`]) until SIGTERM or SIGINT.
//!
//! It binds `--listen` first and prints `dilu worker listening on http://ADDR` (the bound address, so port 0
//! works) on stdout; the model then loads while the server already answers `GET /v2/health/live` (ready
//! once loaded). CPU time is charged to `--quota-file` or `DILU_QUOTA_FILE`, unthrottled without either.
//! `--engine` picks what runs the model: `tract` (the default) or `onnxruntime`, whose library comes from
//! `--onnxruntime-lib`, else `ORT_DYLIB_PATH` (checked before the worker binds).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_core::units::parse_bytes;
use dilu_quota::{CpuQuota, QUOTA_FILE_ENV};
use dilu_worker::{Engine, WorkerConfig, WorkerError};

/// A tensor shape on the command line: `1,3,224,224`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

/// Parses `1,3,224,224` (dimensions ≥ 1, separated by commas, `x` also accepted).
pub fn parse_shape(text: &str) -> Result<Shape, String> {
    let dims: Result<Vec<usize>, String> = text
        .split([',', 'x'])
        .map(|d| match d.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "{text:?}: expected dimensions ≥ 1 separated by commas, e.g. 1,3,224,224"
            )),
            Ok(n) => Ok(n),
        })
        .collect();
    dims.map(Shape)
}

/// Parses an engine name (`tract`, `onnxruntime`).
fn parse_engine(text: &str) -> Result<Engine, String> {
    text.parse()
        .map_err(|e: dilu_worker::engine::UnknownEngine| e.to_string())
}

/// Parses a byte size such as `64MiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    parse_bytes(text).map_err(|e| e.to_string())
}

/// Arguments of `dilu worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The model's name: clients call `/v2/models/NAME/infer`.
    #[arg(long)]
    name: String,
    /// The ONNX model file.
    #[arg(long)]
    model: PathBuf,
    /// The model version reported in metadata and responses.
    #[arg(long, default_value = "1")]
    version: String,
    /// Address to serve on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The first input's shape, batch dimension first (for models that leave dimensions open), e.g.
    /// 1,3,224,224.
    #[arg(long, value_parser = parse_shape)]
    input_shape: Option<Shape>,
    /// A batch closes at this many requests.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Wait this long (µs) for every batch to fill instead of the adaptive rule.
    #[arg(long)]
    fixed_wait_us: Option<u64>,
    /// Serve the model with its declared (fixed) batch size: requests of a batch run one by one.
    #[arg(long)]
    no_dynamic_batch: bool,
    /// Refuse request bodies larger than this (413).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    max_body: u64,
    /// The requests' latency SLO in milliseconds, published on the quota channel beside the queue for the
    /// token manager's queue-aware controller (policy dilu-slo); default: $DILU_SLO_MS, else none.
    #[arg(long)]
    slo_ms: Option<f64>,
    /// CPU quota channel to charge (a channel of the CPU device); default: $DILU_QUOTA_FILE, and without
    /// either the worker runs unthrottled.
    #[arg(long)]
    quota_file: Option<PathBuf>,
    /// What runs the model: tract (pure Rust, CPU) or onnxruntime (ONNX Runtime, loaded from --onnxruntime-lib
    /// or $ORT_DYLIB_PATH; its CUDA execution provider when the library offers one, else the CPU).
    #[arg(long, default_value = "tract", value_parser = parse_engine, value_name = "tract|onnxruntime")]
    engine: Engine,
    /// The ONNX Runtime library (libonnxruntime.so.*) for --engine onnxruntime; default: $ORT_DYLIB_PATH.
    /// `dilu models path onnxruntime` prints the one `dilu models fetch` puts in the cache.
    #[arg(long, value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

/// The command-line flag behind a [`WorkerConfig`] field.
fn flag_of(field: &str) -> &'static str {
    match field {
        "model_name" => "--name",
        "model_version" => "--version",
        "model_path" => "--model",
        "input_shape" => "--input-shape",
        "max_batch" => "--max-batch",
        "fixed_wait_us" => "--fixed-wait-us",
        "dynamic_batch" => "--no-dynamic-batch",
        "max_body_bytes" => "--max-body",
        "quota_file" => "--quota-file",
        "slo_ms" => "--slo-ms",
        "engine" => "--engine",
        "onnxruntime_lib" => "--onnxruntime-lib",
        _ => "a setting",
    }
}

/// The worker's configuration from the flags, checked; errors name the flag.
fn config(args: &WorkerArgs) -> Result<WorkerConfig> {
    let mut config = WorkerConfig::new(args.name.clone(), args.model.clone());
    config.model_version = args.version.clone();
    config.input_shape = args.input_shape.as_ref().map(|s| s.0.clone());
    config.max_batch = args.max_batch;
    config.fixed_wait_us = args.fixed_wait_us;
    config.dynamic_batch = !args.no_dynamic_batch;
    config.max_body_bytes = usize::try_from(args.max_body).unwrap_or(usize::MAX);
    config.quota_file = args.quota_file.clone();
    config.slo_ms = args.slo_ms;
    config.engine = args.engine;
    config.onnxruntime_lib = args.onnxruntime_lib.clone();
    if let Err(e) = config.validate() {
        match e {
            WorkerError::InvalidConfig { field, value, rule } => {
                bail!("{} = {value}: {rule}", flag_of(field))
            }
            other => return Err(other).context("checking the worker's settings"),
        }
    }
    if !args.model.is_file() {
        bail!(
            "--model {}: no such file (fetch the example models with `dilu models fetch`)",
            args.model.display()
        );
    }
    if config.engine == Engine::OnnxRuntime {
        // The library is loaded with the model, after the worker announced itself: a missing one is said now.
        // The error names --onnxruntime-lib and ORT_DYLIB_PATH.
        config.onnxruntime_library().map_err(anyhow::Error::new)?;
    }
    check_quota_channel(args.quota_file.as_deref(), "dilu worker")?;
    Ok(config)
}

/// Opens the CPU quota channel once (from `--quota-file`, else `$DILU_QUOTA_FILE`) so that a bad channel is
/// reported before serving, naming where it came from; says so on stderr when there is none. `program` names
/// the command in that message.
pub(crate) fn check_quota_channel(quota_file: Option<&Path>, program: &str) -> Result<()> {
    match quota_file {
        Some(path) => {
            CpuQuota::open(path).with_context(|| format!("--quota-file {}", path.display()))?;
        }
        None => {
            if CpuQuota::from_env()
                .with_context(|| {
                    format!(
                        "{QUOTA_FILE_ENV}={}",
                        std::env::var(QUOTA_FILE_ENV).unwrap_or_default()
                    )
                })?
                .is_none()
            {
                eprintln!(
                    "{program}: no CPU quota (neither --quota-file nor {QUOTA_FILE_ENV}): running unthrottled"
                );
            }
        }
    }
    Ok(())
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed when this is called (inside the
/// runtime), before anything is announced, so a signal sent right after the listening line is not lost.
pub fn termination() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A small multi-threaded runtime for a serving subcommand.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Binds `listen` and prints `dilu WHAT listening on http://ADDR` on stdout.
pub async fn bind_and_announce(what: &str, listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: binding"))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "dilu {what} listening on http://{address}")
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    Ok(listener)
}

/// Runs `dilu worker` until SIGTERM or SIGINT.
pub fn run(args: WorkerArgs) -> Result<()> {
    let config = config(&args)?;
    let model = args.model.display().to_string();
    runtime()?.block_on(async move {
        let stop = termination()?;
        let listener = bind_and_announce("worker", args.listen).await?;
        dilu_worker::serve(config, listener, stop)
            .await
            .with_context(|| format!("serving {model}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_refuse_zero_or_junk() {
        assert_eq!(parse_shape("1,3,224,224"), Ok(Shape(vec![1, 3, 224, 224])));
        assert_eq!(parse_shape("1x3x48x192"), Ok(Shape(vec![1, 3, 48, 192])));
        assert!(parse_shape("1,0").is_err());
        assert!(parse_shape("1,,2").is_err());
        assert!(parse_shape("a").is_err());
    }
}
