//! `dilu models`: the local model cache the worker's examples and tests use.
//!
//! - `dilu models fetch [--cache DIR]` runs the repository's `scripts/fetch-models.sh` (embedded in the
//!   binary, so it works from any directory; it needs `python3` and `pip`) and then writes the example
//!   inference requests ([`example_inputs`]) into `DIR/inputs/`.
//! - `dilu models inputs [--out DIR]` writes only the example requests (default `CACHE/inputs`).
//! - `dilu models list [--cache DIR]` prints every file in the cache with its size.
//! - `dilu models path NAME` prints where a known model lives in the cache.
//!
//! The cache is `--cache`, else `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`.

pub mod example_inputs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dilu_core::units::format_bytes;

/// The fetch script, embedded so that `dilu models fetch` does not depend on the working directory.
const FETCH_SCRIPT: &str = include_str!("../../../../scripts/fetch-models.sh");

/// The environment variable naming the model cache.
pub const CACHE_ENV: &str = "DILU_MODEL_CACHE";

/// A model the fetch script provides: its short name, its path in the cache and what it is.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name `dilu models path` takes.
    pub name: &'static str,
    /// Where it lives under the cache.
    pub relative: &'static str,
    /// One line about it.
    pub about: &'static str,
}

/// What `scripts/fetch-models.sh` fetches: the models, and ONNX Runtime's library.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "squeezenet",
        relative: "onnx-light/light_squeezenet.onnx",
        about: "SqueezeNet 1.0 (synthetic constant weights), input data_0 [1,3,224,224]",
    },
    KnownModel {
        name: "resnet50",
        relative: "onnx-light/light_resnet50.onnx",
        about: "ResNet-50 (synthetic constant weights), input [1,3,224,224]",
    },
    KnownModel {
        name: "ppocr-cls",
        relative: "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        about: "PaddleOCR text-direction classifier (real weights), input x [N,3,48,192], classes 0/180",
    },
    KnownModel {
        name: "relu",
        relative: "onnx-light/relu.onnx",
        about: "ONNX node test test_relu (one Relu), input x [3,4,5] FP32; the gateway benchmark's trivial model",
    },
    KnownModel {
        name: "onnxruntime",
        relative: "onnxruntime/libonnxruntime.so.1.31.1",
        about: "ONNX Runtime 1.31.1's library (CPU, from the onnxruntime wheel), for dilu worker --engine onnxruntime",
    },
];

/// `dilu models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch the example models into the cache (scripts/fetch-models.sh, needs python3 and pip) and write the
    /// example inference requests into CACHE/inputs.
    Fetch(CacheArgs),
    /// Write the example inference requests (text-upright.json, text-flipped.json, squeezenet.json).
    Inputs(InputsArgs),
    /// List the files in the cache with their sizes.
    List(CacheArgs),
    /// Print the path of a known model (squeezenet, resnet50, ppocr-cls, relu) or of ONNX Runtime's library
    /// (onnxruntime) in the cache.
    Path(PathArgs),
}

/// Where the cache is.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The model cache [default: $DILU_MODEL_CACHE, else ~/.cache/dilu/models].
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Arguments of `dilu models inputs`.
#[derive(Debug, Args)]
pub struct InputsArgs {
    /// Directory to write the requests into [default: CACHE/inputs].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The model cache [default: $DILU_MODEL_CACHE, else ~/.cache/dilu/models].
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Arguments of `dilu models path`.
#[derive(Debug, Args)]
pub struct PathArgs {
    /// squeezenet, resnet50, ppocr-cls or relu.
    name: String,
    /// The model cache [default: $DILU_MODEL_CACHE, else ~/.cache/dilu/models].
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// The cache directory: `flag`, else `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`.
pub fn cache_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/dilu/models")),
        None => {
            bail!("no model cache: pass --cache DIR or set {CACHE_ENV} (HOME is not set either)")
        }
    }
}

/// Runs a `dilu models` subcommand.
pub fn run(command: ModelsCommand) -> Result<()> {
    match command {
        ModelsCommand::Fetch(args) => fetch(&cache_dir(args.cache.as_deref())?),
        ModelsCommand::Inputs(args) => {
            let out = match args.out {
                Some(dir) => dir,
                None => cache_dir(args.cache.as_deref())?.join("inputs"),
            };
            write_inputs(&out)
        }
        ModelsCommand::List(args) => list(&cache_dir(args.cache.as_deref())?),
        ModelsCommand::Path(args) => path(&cache_dir(args.cache.as_deref())?, &args.name),
    }
}

fn fetch(cache: &Path) -> Result<()> {
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating the model cache {}", cache.display()))?;
    let mut child = Command::new("bash")
        .args(["-s", "--"])
        .arg(cache)
        .stdin(Stdio::piped())
        // The script's progress goes to stderr: stdout is left to the listing that follows.
        .stdout(Stdio::from(std::io::stderr()))
        .spawn()
        .context("running bash for the fetch script (is bash installed?)")?;
    {
        let mut stdin = child
            .stdin
            .take()
            .context("opening the fetch script's stdin")?;
        stdin
            .write_all(FETCH_SCRIPT.as_bytes())
            .context("passing the fetch script to bash")?;
    }
    let status = child.wait().context("waiting for the fetch script")?;
    if !status.success() {
        bail!(
            "fetching the models into {} failed ({status}); the script needs python3 and pip with access to PyPI",
            cache.display()
        );
    }
    write_inputs(&cache.join("inputs"))?;
    list(cache)
}

fn write_inputs(dir: &Path) -> Result<()> {
    for path in example_inputs::write_all(dir)? {
        eprintln!("dilu models: wrote {}", path.display());
    }
    Ok(())
}

/// Every file under `dir`, sorted.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", current.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                found.push((entry.path(), meta.len()));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn list(cache: &Path) -> Result<()> {
    if !cache.is_dir() {
        eprintln!(
            "dilu models: no model cache at {} (run `dilu models fetch`)",
            cache.display()
        );
        return Ok(());
    }
    let files = files_under(cache)?;
    let mut out = std::io::stdout().lock();
    for (path, size) in &files {
        let name = KNOWN_MODELS
            .iter()
            .find(|m| cache.join(m.relative) == *path)
            .map_or("-", |m| m.name);
        writeln!(
            out,
            "{name:<12} {:>10}  {}",
            format_bytes(*size),
            path.display()
        )
        .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    eprintln!("dilu models: {} files in {}", files.len(), cache.display());
    Ok(())
}

fn path(cache: &Path, name: &str) -> Result<()> {
    let Some(model) = KNOWN_MODELS.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        bail!(
            "unknown model {name:?}: known models are {}",
            names.join(", ")
        );
    };
    let path = cache.join(model.relative);
    if !path.is_file() {
        bail!(
            "{name} ({}) is not in {} (run `dilu models fetch`)",
            model.about,
            cache.display()
        );
    }
    println!("{}", path.display());
    Ok(())
}
