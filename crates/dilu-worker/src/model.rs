//! A loaded model: its interface (inputs, outputs, batching) and batches of requests run through one of the
//! engines in [`crate::engine`] (`tract`, or ONNX Runtime).

use std::path::Path;

use serde::Serialize;

use crate::config::WorkerConfig;
use crate::engine::{self, Backend, Engine};
use crate::error::WorkerError;

/// A tensor element type the worker serves, named as the v2 protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    /// 32-bit float, `"FP32"`.
    Fp32,
    /// 64-bit float, `"FP64"`.
    Fp64,
    /// 32-bit signed integer, `"INT32"`.
    Int32,
    /// 64-bit signed integer, `"INT64"`.
    Int64,
}

impl Datatype {
    /// The protocol's name for the type (`"FP32"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
        }
    }

    /// The type named `name` in the protocol, if the worker serves it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "FP32" => Some(Datatype::Fp32),
            "FP64" => Some(Datatype::Fp64),
            "INT32" => Some(Datatype::Int32),
            "INT64" => Some(Datatype::Int64),
            _ => None,
        }
    }
}

impl Serialize for Datatype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A flat, row-major tensor payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TensorData {
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
}

impl TensorData {
    /// An empty payload of type `dt` with room for `n` elements.
    pub fn with_capacity(dt: Datatype, n: usize) -> Self {
        match dt {
            Datatype::Fp32 => TensorData::Fp32(Vec::with_capacity(n)),
            Datatype::Fp64 => TensorData::Fp64(Vec::with_capacity(n)),
            Datatype::Int32 => TensorData::Int32(Vec::with_capacity(n)),
            Datatype::Int64 => TensorData::Int64(Vec::with_capacity(n)),
        }
    }

    /// The element type.
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Fp32(_) => Datatype::Fp32,
            TensorData::Fp64(_) => Datatype::Fp64,
            TensorData::Int32(_) => Datatype::Int32,
            TensorData::Int64(_) => Datatype::Int64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s elements (of the same type; a different type appends nothing and returns false).
    fn extend_from(&mut self, other: &TensorData) -> bool {
        match (self, other) {
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Elements `range` as a new payload.
    fn slice(&self, range: std::ops::Range<usize>) -> TensorData {
        match self {
            TensorData::Fp32(v) => TensorData::Fp32(v[range].to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v[range].to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v[range].to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v[range].to_vec()),
        }
    }
}

/// One model input or output as the metadata endpoint describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSpec {
    /// The tensor's name in the ONNX graph.
    pub name: String,
    /// Its element type.
    pub datatype: Datatype,
    /// Its shape; -1 marks the dynamic batch dimension (and any other dimension the model leaves open).
    pub shape: Vec<i64>,
}

/// One request's share of a batch: a tensor per model input (in the model's input order), each with the
/// request's batch size as its first dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The request's batch size (first dimension of every input).
    pub batch: usize,
    /// One payload per model input, row-major, `batch × per-item elements` long.
    pub inputs: Vec<TensorData>,
}

/// One output tensor of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Its shape, the request's batch size first.
    pub shape: Vec<usize>,
    /// Its elements, row-major.
    pub data: TensorData,
}

/// A loaded model, optimised for its engine and ready to run.
#[derive(Debug)]
pub struct Model {
    backend: Backend,
    engine: Engine,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Each input's shape without its first dimension.
    input_items: Vec<Vec<usize>>,
    /// For a model with a fixed first dimension, its size.
    fixed_batch: usize,
    /// Why the model runs without a symbolic batch dimension, when it does.
    unbatched_reason: Option<String>,
    /// Whether a batch's requests are concatenated into one run (otherwise they run one by one).
    concat: bool,
}

pub(crate) fn model_err(path: &Path, message: impl std::fmt::Display) -> WorkerError {
    WorkerError::Model {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl Model {
    /// Loads the model named by `config` (its file, `input_shape` and `dynamic_batch`) with `config.engine`,
    /// and prepares it with a symbolic batch dimension when the model allows one (otherwise with its fixed
    /// shapes).
    ///
    /// Errors ([`WorkerError::Model`]): an unreadable or invalid file, an input whose shape is left open
    /// beyond the batch dimension (give `input_shape`), or an input or output of a type the worker does not
    /// serve; with ONNX Runtime also [`WorkerError::OnnxRuntime`] (no library named, or one that does not
    /// load).
    pub fn load(config: &WorkerConfig) -> Result<Model, WorkerError> {
        let path = config.model_path.as_path();
        let (interface, backend) = match config.engine {
            Engine::Tract => {
                let (interface, model) = engine::tract::load(config)?;
                (interface, Backend::Tract(model))
            }
            Engine::OnnxRuntime => {
                let (interface, model) = engine::ort::load(config)?;
                (interface, Backend::Ort(model))
            }
        };
        let mut loaded = Model {
            backend,
            engine: config.engine,
            inputs: interface.inputs,
            outputs: interface.outputs,
            input_items: interface.input_items,
            fixed_batch: interface.fixed_batch,
            unbatched_reason: interface.unbatched_reason,
            concat: false,
        };
        if loaded.is_batchable() {
            loaded.concat = match config.concat_batches {
                Some(concat) => concat,
                None => loaded
                    .concat_pays()
                    .map_err(|e| model_err(path, format!("timing a batch of 2: {e}")))?,
            };
        }
        if loaded.concat && !loaded.has_symbolic_batch() {
            // Batches of up to max_batch single-item requests are the common case: prepare their plans now
            // (preparing one takes a while) rather than on first use, in the middle of serving.
            for size in 3..=config.max_batch.min(engine::tract::MAX_CACHED_PLANS) {
                loaded
                    .backend
                    .prepare(size)
                    .map_err(|e| model_err(path, e))?;
            }
        }
        Ok(loaded)
    }

    /// Whether one run of two items takes clearly less time than two runs of one (best of three, after a
    /// warm-up); on the CPU it often does not, and then a batch's requests run one by one.
    fn concat_pays(&self) -> Result<bool, WorkerError> {
        let inputs = self
            .inputs
            .iter()
            .enumerate()
            .map(|(ix, spec)| {
                let n = self.item_len(ix);
                match spec.datatype {
                    Datatype::Fp32 => TensorData::Fp32(vec![0.0; n]),
                    Datatype::Fp64 => TensorData::Fp64(vec![0.0; n]),
                    Datatype::Int32 => TensorData::Int32(vec![0; n]),
                    Datatype::Int64 => TensorData::Int64(vec![0; n]),
                }
            })
            .collect();
        let sample = Sample { batch: 1, inputs };
        let pair = [&sample, &sample];
        let time = |f: &dyn Fn() -> Result<(), WorkerError>| -> Result<f64, WorkerError> {
            f()?;
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                f()?;
                best = best.min(start.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let apart = time(&|| {
            self.run_one(&sample)?;
            self.run_one(&sample).map(|_| ())
        })?;
        let together = time(&|| self.run_concatenated(&pair).map(|_| ()))?;
        Ok(together < 0.9 * apart)
    }

    /// The inputs, in the order [`Sample::inputs`] lists them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs, in the order [`Model::run_batch`] returns them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Whether requests are concatenated along the batch dimension into one run (otherwise a batch runs one
    /// request at a time).
    pub fn is_batchable(&self) -> bool {
        self.backend.is_batchable()
    }

    /// The engine that runs the model.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Whether a batch's requests are concatenated along the first dimension into one run: the model is
    /// batchable and either `concat_batches` says so or (by default) a run of two items measured clearly faster
    /// than two runs of one at load.
    pub fn concatenates(&self) -> bool {
        self.concat
    }

    /// Whether one plan serves every batch size (a symbolic batch dimension; always so for a batchable model
    /// under ONNX Runtime); otherwise a batchable model prepares a plan per batch size on first use.
    pub fn has_symbolic_batch(&self) -> bool {
        self.backend.has_symbolic_batch()
    }

    /// Why the model has no symbolic batch dimension (it then runs a plan per batch size, or requests one by
    /// one); `None` when it has one.
    pub fn unbatched_reason(&self) -> Option<&str> {
        self.unbatched_reason.as_deref()
    }

    /// The first dimension a request must have for a model with a fixed batch; `None` when it is dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        (!self.is_batchable()).then_some(self.fixed_batch)
    }

    /// The number of elements of one batch item of input `ix`.
    pub fn item_len(&self, ix: usize) -> usize {
        self.input_items.get(ix).map_or(0, |d| d.iter().product())
    }

    /// Runs a batch of samples (already checked against [`Model::inputs`]) and returns each sample's outputs,
    /// in [`Model::outputs`] order. When [`Model::concatenates`], the batch runs once, concatenated along the
    /// first dimension; otherwise each sample runs on its own.
    pub fn run_batch(&self, samples: &[&Sample]) -> Result<Vec<Vec<OutputTensor>>, WorkerError> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        if !self.concat || samples.len() == 1 {
            return samples.iter().map(|s| self.run_one(s)).collect();
        }
        self.run_concatenated(samples)
    }

    /// Runs `samples` as one run, concatenated along the first dimension, and splits the outputs back.
    fn run_concatenated(&self, samples: &[&Sample]) -> Result<Vec<Vec<OutputTensor>>, WorkerError> {
        let total: usize = samples.iter().map(|s| s.batch).sum();
        let mut joined_inputs = Vec::with_capacity(self.inputs.len());
        for (ix, spec) in self.inputs.iter().enumerate() {
            let mut joined = TensorData::with_capacity(spec.datatype, total * self.item_len(ix));
            for s in samples {
                let part = s
                    .inputs
                    .get(ix)
                    .ok_or_else(|| internal("a sample lacks an input"))?;
                if !joined.extend_from(part) {
                    return Err(internal("a sample's input has the wrong type"));
                }
            }
            joined_inputs.push(joined);
        }
        let inputs = joined_inputs
            .iter()
            .enumerate()
            .map(|(ix, data)| Ok((self.shape_of(ix, total)?, data)))
            .collect::<Result<Vec<_>, WorkerError>>()?;
        let outputs = self.backend.run(&inputs, &self.outputs)?;
        let mut per_sample: Vec<Vec<OutputTensor>> = samples.iter().map(|_| Vec::new()).collect();
        for (spec, (shape, data)) in self.outputs.iter().zip(outputs.iter()) {
            if shape.first() != Some(&total) {
                return Err(internal(format!(
                    "output {} has shape {shape:?}, not the batch of {total} first",
                    spec.name
                )));
            }
            let item: usize = shape[1..].iter().product();
            let mut start = 0;
            for (s, out) in samples.iter().zip(per_sample.iter_mut()) {
                let mut sample_shape = vec![s.batch];
                sample_shape.extend_from_slice(&shape[1..]);
                out.push(OutputTensor {
                    shape: sample_shape,
                    data: data.slice(start..start + s.batch * item),
                });
                start += s.batch * item;
            }
        }
        Ok(per_sample)
    }

    /// Input `ix`'s shape for a run with first dimension `batch`.
    fn shape_of(&self, ix: usize, batch: usize) -> Result<Vec<usize>, WorkerError> {
        let mut shape = vec![batch];
        shape.extend_from_slice(
            self.input_items
                .get(ix)
                .ok_or_else(|| internal("too many inputs"))?,
        );
        Ok(shape)
    }

    fn run_one(&self, sample: &Sample) -> Result<Vec<OutputTensor>, WorkerError> {
        let inputs = sample
            .inputs
            .iter()
            .enumerate()
            .map(|(ix, data)| Ok((self.shape_of(ix, sample.batch)?, data)))
            .collect::<Result<Vec<_>, WorkerError>>()?;
        let outputs = self.backend.run(&inputs, &self.outputs)?;
        Ok(outputs
            .into_iter()
            .map(|(shape, data)| OutputTensor { shape, data })
            .collect())
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Inference(e.to_string())
}
