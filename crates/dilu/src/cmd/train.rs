//! `dilu train`: a training function (the built-in MLP trained with SGD on synthetic data,
//! [`dilu_worker::serve_training`]) that charges its CPU time to a CPU quota channel and serves
//! `GET /health`, `GET /status` and `GET /metrics` until SIGTERM or SIGINT, or until `--max-iterations`.
//!
//! It prints `dilu train listening on http://ADDR` (the bound address) on stdout once bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_worker::{TrainingConfig, WorkerError};

use super::worker::{bind_and_announce, check_quota_channel, runtime, termination};

/// Arguments of `dilu train`; unset model flags keep [`TrainingConfig`]'s defaults.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Address to serve on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Features per synthetic sample [default: 32].
    #[arg(long)]
    input_dim: Option<usize>,
    /// Width of every hidden layer [default: 128].
    #[arg(long)]
    hidden: Option<usize>,
    /// Hidden layers [default: 2].
    #[arg(long)]
    layers: Option<usize>,
    /// Classes of the synthetic data [default: 8].
    #[arg(long)]
    classes: Option<usize>,
    /// Samples per mini-batch [default: 128].
    #[arg(long)]
    batch: Option<usize>,
    /// SGD step size [default: 0.05].
    #[arg(long)]
    learning_rate: Option<f64>,
    /// SGD momentum, 0 for plain SGD [default: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Seed of the data and the initial weights [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Stop (and exit) after this many iterations; default: train until SIGTERM or SIGINT.
    #[arg(long)]
    max_iterations: Option<u64>,
    /// CPU quota channel to charge (a channel of the CPU device); default: $DILU_QUOTA_FILE, and without
    /// either training runs unthrottled.
    #[arg(long)]
    quota_file: Option<PathBuf>,
}

/// The command-line flag behind a [`TrainingConfig`] field.
fn flag_of(field: &str) -> &'static str {
    match field {
        "training.input_dim" => "--input-dim",
        "training.hidden" => "--hidden",
        "training.layers" => "--layers",
        "training.classes" => "--classes",
        "training.batch_size" => "--batch",
        "training.learning_rate" => "--learning-rate",
        "training.momentum" => "--momentum",
        "training.max_iterations" => "--max-iterations",
        "training.quota_file" => "--quota-file",
        _ => "a setting",
    }
}

/// The training configuration from the flags, checked; errors name the flag.
fn config(args: &TrainArgs) -> Result<TrainingConfig> {
    let mut config = TrainingConfig::default();
    let set = |slot: &mut usize, value: Option<usize>| {
        if let Some(v) = value {
            *slot = v;
        }
    };
    set(&mut config.input_dim, args.input_dim);
    set(&mut config.hidden, args.hidden);
    set(&mut config.layers, args.layers);
    set(&mut config.classes, args.classes);
    set(&mut config.batch_size, args.batch);
    if let Some(v) = args.learning_rate {
        config.learning_rate = v;
    }
    if let Some(v) = args.momentum {
        config.momentum = v;
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    config.max_iterations = args.max_iterations;
    config.quota_file = args.quota_file.clone();
    if let Err(e) = config.validate() {
        match e {
            WorkerError::InvalidConfig { field, value, rule } => {
                bail!("{} = {value}: {rule}", flag_of(field))
            }
            other => return Err(other).context("checking the training settings"),
        }
    }
    check_quota_channel(args.quota_file.as_deref(), "dilu train")?;
    Ok(config)
}

/// Runs `dilu train` until SIGTERM or SIGINT, or until `--max-iterations` are done.
pub fn run(args: TrainArgs) -> Result<()> {
    let config = config(&args)?;
    eprintln!(
        "dilu train: MLP {:?} ({} parameters), batch {}, {} training and {} held-out samples",
        config.widths(),
        config.parameters(),
        config.batch_size,
        config.train_samples,
        config.eval_samples
    );
    runtime()?.block_on(async move {
        let stop = termination()?;
        let listener = bind_and_announce("train", args.listen).await?;
        dilu_worker::serve_training(config, listener, stop)
            .await
            .context("training")
    })
}
