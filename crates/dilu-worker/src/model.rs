//! Loading an ONNX model with `tract` and running batches of requests through it on the CPU.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::config::WorkerConfig;
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

    fn from_datum(dt: DatumType) -> Option<Self> {
        match dt {
            DatumType::F32 => Some(Datatype::Fp32),
            DatumType::F64 => Some(Datatype::Fp64),
            DatumType::I32 => Some(Datatype::Int32),
            DatumType::I64 => Some(Datatype::Int64),
            _ => None,
        }
    }

    fn datum(self) -> DatumType {
        match self {
            Datatype::Fp32 => DatumType::F32,
            Datatype::Fp64 => DatumType::F64,
            Datatype::Int32 => DatumType::I32,
            Datatype::Int64 => DatumType::I64,
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

    fn to_tensor(&self, shape: &[usize]) -> TractResult<Tensor> {
        match self {
            TensorData::Fp32(v) => Tensor::from_shape(shape, v),
            TensorData::Fp64(v) => Tensor::from_shape(shape, v),
            TensorData::Int32(v) => Tensor::from_shape(shape, v),
            TensorData::Int64(v) => Tensor::from_shape(shape, v),
        }
    }

    fn from_tensor(t: &Tensor, dt: Datatype) -> TractResult<TensorData> {
        let t = t.cast_to_dt(dt.datum())?;
        Ok(match dt {
            Datatype::Fp32 => {
                TensorData::Fp32(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            }
            Datatype::Fp64 => {
                TensorData::Fp64(t.to_plain_array_view::<f64>()?.iter().copied().collect())
            }
            Datatype::Int32 => {
                TensorData::Int32(t.to_plain_array_view::<i32>()?.iter().copied().collect())
            }
            Datatype::Int64 => {
                TensorData::Int64(t.to_plain_array_view::<i64>()?.iter().copied().collect())
            }
        })
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

/// How a model's plans cover batch sizes.
#[derive(Debug)]
enum Plans {
    /// One plan with a symbolic batch dimension.
    Symbolic(Arc<TypedSimplePlan>),
    /// A plan per batch size, for 1..=`max_batch` made at load and for larger sizes on first use: tract cannot
    /// carry a symbolic batch through this model (e.g. a Reshape whose shape is computed), but it runs with any
    /// concrete batch.
    PerSize {
        /// The model as loaded, before its input facts are fixed.
        source: Box<InferenceModel>,
        /// Each input's type and shape after the batch dimension.
        declared: Vec<(DatumType, Vec<usize>)>,
        /// Plans made so far, by batch size.
        cache: Mutex<HashMap<usize, Arc<TypedSimplePlan>>>,
    },
    /// One plan with the model's fixed batch; requests run one by one.
    Fixed(Arc<TypedSimplePlan>),
}

/// The most per-size plans kept; sizes beyond are built for each use.
const MAX_CACHED_PLANS: usize = 64;

/// A loaded model, optimised for the CPU and ready to run.
#[derive(Debug)]
pub struct Model {
    plans: Plans,
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

/// `model` with each input's type and shape fixed, its first dimension `batch`, optimised.
fn typed_with_batch(
    model: InferenceModel,
    declared: &[(DatumType, Vec<usize>)],
    batch: TDim,
) -> TractResult<TypedModel> {
    let mut model = model;
    for (ix, (dt, rest)) in declared.iter().enumerate() {
        let mut shape: TVec<TDim> = tvec![batch.clone()];
        shape.extend(rest.iter().map(|&d| TDim::from(d)));
        model.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape))?;
    }
    model.into_optimized()
}

/// Each output's first dimension, as text ("none" for a scalar).
fn first_dims(typed: &TypedModel) -> Vec<String> {
    (0..typed.outputs.len())
        .map(|ix| match typed.output_fact(ix) {
            Ok(f) if f.shape.rank() >= 1 => f.shape[0].to_string(),
            _ => "none".into(),
        })
        .collect()
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> WorkerError {
    WorkerError::Model {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl Model {
    /// Loads the model named by `config` (its file, `input_shape` and `dynamic_batch`), and prepares a plan
    /// with a symbolic batch dimension when the model allows one (otherwise with its fixed shapes).
    ///
    /// Errors ([`WorkerError::Model`]): an unreadable or invalid file, an input whose shape is left open
    /// beyond the batch dimension (give `input_shape`), or an input or output of a type the worker does not
    /// serve.
    pub fn load(config: &WorkerConfig) -> Result<Model, WorkerError> {
        let path = config.model_path.as_path();
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| model_err(path, format!("{e:#}")))?;
        let n_inputs = model.inputs.len();
        if n_inputs == 0 {
            return Err(model_err(path, "the model has no inputs"));
        }
        // Every input's declared type and shape, with the first dimension possibly unknown.
        let mut declared: Vec<(String, Datatype, Option<usize>, Vec<usize>)> = Vec::new();
        for ix in 0..n_inputs {
            let outlet = model.inputs[ix];
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(ix).map_err(|e| model_err(path, e))?;
            let dt = fact
                .datum_type
                .concretize()
                .ok_or_else(|| model_err(path, format!("input {name} has no declared type")))?;
            let datatype = Datatype::from_datum(dt).ok_or_else(|| {
                model_err(
                    path,
                    format!("input {name} has type {dt:?}, which the worker does not serve"),
                )
            })?;
            let dims: Vec<Option<usize>> = match (&config.input_shape, ix) {
                (Some(shape), 0) => shape.iter().map(|&d| Some(d)).collect(),
                _ => {
                    if fact.shape.is_open() {
                        return Err(model_err(
                            path,
                            format!("input {name} has no declared rank; give input_shape"),
                        ));
                    }
                    fact.shape
                        .dims()
                        .map(|d| {
                            d.concretize()
                                .and_then(|d| d.to_i64().ok())
                                .and_then(|d| usize::try_from(d).ok())
                        })
                        .collect()
                }
            };
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
            declared.push((name, datatype, first, rest));
        }

        let shapes: Vec<(DatumType, Vec<usize>)> = declared
            .iter()
            .map(|(_, dt, _, rest)| (dt.datum(), rest.clone()))
            .collect();
        let build = |batch: TDim, model: InferenceModel| typed_with_batch(model, &shapes, batch);

        let output_names: Vec<String> = model
            .outputs
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();

        // First choice: a symbolic batch dimension N that every output carries as its first dimension; second,
        // a plan per batch size when a batch of 2 gives outputs with 2 first; else the fixed batch, one by one.
        let mut found: Option<(TypedModel, Plans)> = None;
        let mut unbatched_reason = Some("dynamic_batch is off".to_string());
        if config.dynamic_batch {
            let n = model.sym("N");
            match build(TDim::from(n.clone()), model.clone()) {
                Ok(typed) if first_dims(&typed).iter().all(|d| *d == n.to_string()) => {
                    let plan = typed
                        .clone()
                        .into_runnable()
                        .map_err(|e| model_err(path, format!("{e:#}")))?;
                    found = Some((typed, Plans::Symbolic(plan)));
                    unbatched_reason = None;
                }
                Ok(typed) => {
                    unbatched_reason = Some(format!(
                        "with a symbolic batch N the outputs' first dimensions are {:?}",
                        first_dims(&typed)
                    ));
                }
                Err(e) => unbatched_reason = Some(format!("a symbolic batch N fails: {e:#}")),
            }
            if found.is_none()
                && let Ok(typed) = build(TDim::from(2), model.clone())
                && first_dims(&typed).iter().all(|d| d == "2")
            {
                let plan = typed
                    .clone()
                    .into_runnable()
                    .map_err(|e| model_err(path, format!("{e:#}")))?;
                // Plans for 1 and 2 now; the rest of 1..=max_batch once concatenation proves worth it.
                let one = build(TDim::from(1), model.clone())
                    .and_then(|t| t.into_runnable())
                    .map_err(|e| model_err(path, format!("batch of 1: {e:#}")))?;
                let plans = HashMap::from([(1, one), (2, plan)]);
                let cache = Mutex::new(plans);
                found = Some((
                    typed,
                    Plans::PerSize {
                        source: Box::new(model.clone()),
                        declared: shapes.clone(),
                        cache,
                    },
                ));
            }
        }
        let fixed_batch = declared.iter().find_map(|d| d.2).unwrap_or(1);
        let (typed, plans) = match found {
            Some(found) => found,
            None => {
                let typed = build(TDim::from(fixed_batch), model)
                    .map_err(|e| model_err(path, format!("{e:#}")))?;
                let plan = typed
                    .clone()
                    .into_runnable()
                    .map_err(|e| model_err(path, format!("{e:#}")))?;
                (typed, Plans::Fixed(plan))
            }
        };
        let batchable = !matches!(plans, Plans::Fixed(_));

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
        let mut outputs = Vec::new();
        for (ix, name) in output_names.into_iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(|e| model_err(path, e))?;
            let datatype = Datatype::from_datum(fact.datum_type).ok_or_else(|| {
                model_err(
                    path,
                    format!(
                        "output {name} has type {:?}, which the worker does not serve",
                        fact.datum_type
                    ),
                )
            })?;
            let shape = fact
                .shape
                .iter()
                .enumerate()
                .map(|(d, dim)| {
                    if batchable && d == 0 {
                        -1
                    } else {
                        dim.to_i64().unwrap_or(-1)
                    }
                })
                .collect();
            outputs.push(TensorSpec {
                name,
                datatype,
                shape,
            });
        }
        let input_items = declared.into_iter().map(|d| d.3).collect();
        let mut loaded = Model {
            plans,
            inputs,
            outputs,
            input_items,
            fixed_batch,
            unbatched_reason,
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
            for size in 3..=config.max_batch.min(MAX_CACHED_PLANS) {
                loaded.plan_for(size).map_err(|e| model_err(path, e))?;
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

    /// The plan for a run with first dimension `batch`.
    fn plan_for(&self, batch: usize) -> Result<Arc<TypedSimplePlan>, WorkerError> {
        match &self.plans {
            Plans::Symbolic(plan) | Plans::Fixed(plan) => Ok(Arc::clone(plan)),
            Plans::PerSize {
                source,
                declared,
                cache,
            } => {
                let mut cache = cache
                    .lock()
                    .map_err(|_| internal("the plan cache is poisoned"))?;
                if let Some(plan) = cache.get(&batch) {
                    return Ok(Arc::clone(plan));
                }
                let plan = typed_with_batch((**source).clone(), declared, TDim::from(batch))
                    .and_then(|t| t.into_runnable())
                    .map_err(|e| {
                        internal(format!("preparing a plan for a batch of {batch}: {e:#}"))
                    })?;
                if cache.len() < MAX_CACHED_PLANS {
                    cache.insert(batch, Arc::clone(&plan));
                }
                Ok(plan)
            }
        }
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
        !matches!(self.plans, Plans::Fixed(_))
    }

    /// Whether a batch's requests are concatenated along the first dimension into one run: the model is
    /// batchable and either `concat_batches` says so or (by default) a run of two items measured clearly faster
    /// than two runs of one at load.
    pub fn concatenates(&self) -> bool {
        self.concat
    }

    /// Whether one plan serves every batch size (a symbolic batch dimension); otherwise a batchable model
    /// prepares a plan per batch size on first use.
    pub fn has_symbolic_batch(&self) -> bool {
        matches!(self.plans, Plans::Symbolic(_))
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
        let mut inputs = TVec::new();
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
            let mut shape = vec![total];
            shape.extend_from_slice(&self.input_items[ix]);
            inputs.push(joined.to_tensor(&shape).map_err(internal)?.into());
        }
        let outputs = self.plan_for(total)?.run(inputs).map_err(internal)?;
        let mut per_sample: Vec<Vec<OutputTensor>> = samples.iter().map(|_| Vec::new()).collect();
        for (spec, value) in self.outputs.iter().zip(outputs.iter()) {
            let shape = value.shape();
            if shape.first() != Some(&total) {
                return Err(internal(format!(
                    "output {} has shape {shape:?}, not the batch of {total} first",
                    spec.name
                )));
            }
            let item: usize = shape[1..].iter().product();
            let data = TensorData::from_tensor(value, spec.datatype).map_err(internal)?;
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

    fn run_one(&self, sample: &Sample) -> Result<Vec<OutputTensor>, WorkerError> {
        let mut inputs = TVec::new();
        for (ix, data) in sample.inputs.iter().enumerate() {
            let mut shape = vec![sample.batch];
            shape.extend_from_slice(
                self.input_items
                    .get(ix)
                    .ok_or_else(|| internal("too many inputs"))?,
            );
            inputs.push(data.to_tensor(&shape).map_err(internal)?.into());
        }
        let outputs = self.plan_for(sample.batch)?.run(inputs).map_err(internal)?;
        self.outputs
            .iter()
            .zip(outputs.iter())
            .map(|(spec, value)| {
                Ok(OutputTensor {
                    shape: value.shape().to_vec(),
                    data: TensorData::from_tensor(value, spec.datatype).map_err(internal)?,
                })
            })
            .collect()
    }
}

fn internal(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Inference(e.to_string())
}
