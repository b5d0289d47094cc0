//! The engines a worker runs its model with, behind one seam: [`Backend`] runs one batch of concrete shape, and
//! [`Interface`] is what loading found (inputs, outputs, whether requests concatenate along the batch).
//!
//! - [`tract`](self::tract): the pure-Rust `tract` (the default).
//! - [`ort`](self::ort): ONNX Runtime through the `ort` crate, loaded at run time from a library the operator
//!   names (`--onnxruntime-lib`, else `ORT_DYLIB_PATH`).
//!
//! Both read the same declared interface with the same rules and the same errors, and decide batchability the
//! same way (a batch of 2 must give outputs with 2 first), so [`crate::Model`] serves either with the same v2
//! behaviour; `tests/engines.rs` compares them answer for answer.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::WorkerError;
use crate::model::{Datatype, TensorData, TensorSpec, model_err};

pub(crate) mod ort;
pub(crate) mod tract;

/// The environment variable `ort` itself reads for the ONNX Runtime library (the worker's fallback when
/// `onnxruntime_lib` is unset).
pub const ORT_DYLIB_PATH_ENV: &str = "ORT_DYLIB_PATH";

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// `tract` (pure Rust, CPU), `"tract"`.
    #[default]
    Tract,
    /// ONNX Runtime (CPU, or CUDA when the loaded library offers it), `"onnxruntime"`.
    #[serde(rename = "onnxruntime")]
    OnnxRuntime,
}

impl Engine {
    /// Every engine, in the order the CLI lists them.
    pub const ALL: [Engine; 2] = [Engine::Tract, Engine::OnnxRuntime];

    /// The engine's name (`"tract"`, `"onnxruntime"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Tract => "tract",
            Engine::OnnxRuntime => "onnxruntime",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no engine's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine {0:?}: must be one of tract, onnxruntime")]
pub struct UnknownEngine(pub String);

impl FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEngine(s.to_string()))
    }
}

/// What loading a model found, whatever the engine.
#[derive(Debug)]
pub(crate) struct Interface {
    /// The inputs as metadata describes them (-1 for the dynamic batch).
    pub inputs: Vec<TensorSpec>,
    /// The outputs as metadata describes them.
    pub outputs: Vec<TensorSpec>,
    /// Each input's shape without its first dimension.
    pub input_items: Vec<Vec<usize>>,
    /// For a model with a fixed first dimension, its size.
    pub fixed_batch: usize,
    /// Why the model has no symbolic batch dimension, when it has none.
    pub unbatched_reason: Option<String>,
}

/// Splits input `name`'s declared dimensions (`None`: open) into its first (batch) dimension and the rest, which
/// must all be known. The same rule and words for every engine.
pub(crate) fn split_batch(
    path: &Path,
    name: &str,
    dims: &[Option<usize>],
) -> Result<(Option<usize>, Vec<usize>), WorkerError> {
    let Some((&first, rest)) = dims.split_first() else {
        return Err(model_err(
            path,
            format!("input {name} is a scalar; the worker needs a batch dimension"),
        ));
    };
    let rest: Option<Vec<usize>> = rest.iter().copied().collect();
    let rest = rest.ok_or_else(|| {
        model_err(
            path,
            format!("input {name} leaves a dimension other than the batch open; give input_shape"),
        )
    })?;
    Ok((first, rest))
}

/// The interface from each input's (name, type, declared first dimension, rest) and the outputs.
pub(crate) fn interface(
    declared: Vec<(String, Datatype, Option<usize>, Vec<usize>)>,
    outputs: Vec<TensorSpec>,
    batchable: bool,
    fixed_batch: usize,
    unbatched_reason: Option<String>,
) -> Interface {
    let inputs = declared
        .iter()
        .map(|(name, dt, _, rest)| TensorSpec {
            name: name.clone(),
            datatype: *dt,
            shape: std::iter::once(if batchable { -1 } else { fixed_batch as i64 })
                .chain(rest.iter().map(|&d| d as i64))
                .collect(),
        })
        .collect();
    Interface {
        inputs,
        outputs,
        input_items: declared.into_iter().map(|d| d.3).collect(),
        fixed_batch,
        unbatched_reason,
    }
}

/// An engine's loaded model: runs one batch whose shapes are concrete.
#[derive(Debug)]
pub(crate) enum Backend {
    /// `tract`'s plans.
    Tract(tract::TractModel),
    /// An ONNX Runtime session.
    Ort(ort::OrtModel),
}

impl Backend {
    /// Whether requests may be concatenated along the first dimension (otherwise the batch is fixed).
    pub fn is_batchable(&self) -> bool {
        match self {
            Backend::Tract(t) => t.is_batchable(),
            Backend::Ort(o) => o.is_batchable(),
        }
    }

    /// Whether one prepared plan serves every batch size.
    pub fn has_symbolic_batch(&self) -> bool {
        match self {
            Backend::Tract(t) => t.has_symbolic_batch(),
            Backend::Ort(o) => o.is_batchable(),
        }
    }

    /// Prepares what a run with first dimension `batch` needs (tract's per-size plans; nothing for ORT).
    pub fn prepare(&self, batch: usize) -> Result<(), WorkerError> {
        match self {
            Backend::Tract(t) => t.prepare(batch),
            Backend::Ort(_) => Ok(()),
        }
    }

    /// Runs one batch: `inputs` are each model input's shape and elements (in interface order, all with the
    /// same first dimension); returns each output's shape and elements, converted to `outputs`' datatypes.
    pub fn run(
        &self,
        inputs: &[(Vec<usize>, &TensorData)],
        outputs: &[TensorSpec],
    ) -> Result<Vec<(Vec<usize>, TensorData)>, WorkerError> {
        match self {
            Backend::Tract(t) => t.run(inputs, outputs),
            Backend::Ort(o) => o.run(inputs, outputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_text_and_serde() {
        for engine in Engine::ALL {
            assert_eq!(engine.as_str().parse::<Engine>(), Ok(engine));
            let json = serde_json::to_string(&engine).unwrap();
            assert_eq!(json, format!("\"{}\"", engine.as_str()));
            assert_eq!(serde_json::from_str::<Engine>(&json).unwrap(), engine);
        }
        assert_eq!(Engine::default(), Engine::Tract);
        let e = "onnx-runtime".parse::<Engine>().unwrap_err().to_string();
        assert!(
            e.contains("\"onnx-runtime\"") && e.contains("tract, onnxruntime"),
            "{e}"
        );
        assert!(serde_json::from_str::<Engine>("\"onnx-runtime\"").is_err());
    }
}
