//! The `tract` engine: loads an ONNX model with `tract-onnx`, optimises it for the CPU and runs batches on the
//! calling thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::Interface;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::model::{Datatype, TensorData, TensorSpec, internal, model_err};

fn datatype_of(dt: DatumType) -> Option<Datatype> {
    match dt {
        DatumType::F32 => Some(Datatype::Fp32),
        DatumType::F64 => Some(Datatype::Fp64),
        DatumType::I32 => Some(Datatype::Int32),
        DatumType::I64 => Some(Datatype::Int64),
        _ => None,
    }
}

pub(crate) fn datum_of(dt: Datatype) -> DatumType {
    match dt {
        Datatype::Fp32 => DatumType::F32,
        Datatype::Fp64 => DatumType::F64,
        Datatype::Int32 => DatumType::I32,
        Datatype::Int64 => DatumType::I64,
    }
}

fn to_tensor(data: &TensorData, shape: &[usize]) -> TractResult<Tensor> {
    match data {
        TensorData::Fp32(v) => Tensor::from_shape(shape, v),
        TensorData::Fp64(v) => Tensor::from_shape(shape, v),
        TensorData::Int32(v) => Tensor::from_shape(shape, v),
        TensorData::Int64(v) => Tensor::from_shape(shape, v),
    }
}

fn from_tensor(t: &Tensor, dt: Datatype) -> TractResult<TensorData> {
    let t = t.cast_to_dt(datum_of(dt))?;
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
pub(crate) const MAX_CACHED_PLANS: usize = 64;

/// A model loaded by tract: its plans.
#[derive(Debug)]
pub(crate) struct TractModel {
    plans: Plans,
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

/// Loads the model named by `config` (its file, `input_shape` and `dynamic_batch`), and prepares a plan with a
/// symbolic batch dimension when the model allows one (else a plan per batch size, else its fixed shapes).
pub(crate) fn load(config: &WorkerConfig) -> Result<(Interface, TractModel), WorkerError> {
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
        let datatype = datatype_of(dt).ok_or_else(|| {
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
        let (first, rest) = super::split_batch(path, &name, &dims)?;
        declared.push((name, datatype, first, rest));
    }

    let shapes: Vec<(DatumType, Vec<usize>)> = declared
        .iter()
        .map(|(_, dt, _, rest)| (datum_of(*dt), rest.clone()))
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

    let mut outputs = Vec::new();
    for (ix, name) in output_names.into_iter().enumerate() {
        let fact = typed.output_fact(ix).map_err(|e| model_err(path, e))?;
        let datatype = datatype_of(fact.datum_type).ok_or_else(|| {
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
    let interface = super::interface(declared, outputs, batchable, fixed_batch, unbatched_reason);
    Ok((interface, TractModel { plans }))
}

impl TractModel {
    pub(crate) fn is_batchable(&self) -> bool {
        !matches!(self.plans, Plans::Fixed(_))
    }

    pub(crate) fn has_symbolic_batch(&self) -> bool {
        matches!(self.plans, Plans::Symbolic(_))
    }

    /// Prepares (and caches) the plan for a batch of `batch`.
    pub(crate) fn prepare(&self, batch: usize) -> Result<(), WorkerError> {
        self.plan_for(batch).map(|_| ())
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

    pub(crate) fn run(
        &self,
        inputs: &[(Vec<usize>, &TensorData)],
        outputs: &[TensorSpec],
    ) -> Result<Vec<(Vec<usize>, TensorData)>, WorkerError> {
        let batch = inputs.first().and_then(|(s, _)| s.first()).copied();
        let batch = batch.ok_or_else(|| internal("a run without inputs"))?;
        let mut values = TVec::new();
        for (shape, data) in inputs {
            values.push(to_tensor(data, shape).map_err(internal)?.into());
        }
        let results = self.plan_for(batch)?.run(values).map_err(internal)?;
        outputs
            .iter()
            .zip(results.iter())
            .map(|(spec, value)| {
                Ok((
                    value.shape().to_vec(),
                    from_tensor(value, spec.datatype).map_err(internal)?,
                ))
            })
            .collect()
    }
}
