//! The ONNX Runtime engine, through the `ort` crate with its `load-dynamic` feature: the library
//! (`libonnxruntime.so.*`, e.g. from the `onnxruntime` or `onnxruntime-gpu` PyPI wheel) is opened at run time from
//! `onnxruntime_lib` (`--onnxruntime-lib`) or `ORT_DYLIB_PATH`; nothing is downloaded or linked at build time.
//!
//! **The interface** is read from the ONNX file with the same rules and words as the tract engine: the graph's
//! inputs that are not initializers, their declared types and shapes (`input_shape` overrides the first one),
//! the graph's outputs. **Batching** follows the same rule: the model is given a symbolic first dimension `N` on
//! every input (by rewriting the file's input shapes, dropping `value_info` and the outputs' declared shapes, so
//! that nothing pins the batch), and it is batchable when a batch of 1 and a batch of 2 both run and give every
//! output that first dimension; otherwise it is served with its fixed batch. Output shapes in metadata are those
//! of a run of one batch (the batch dimension -1 when batchable), which are what tract infers.
//!
//! **CPU time**: a session computes with one intra-op and one inter-op thread, sequentially, without spinning, so
//! ONNX Runtime computes on the thread that calls `run` (the batcher's), and its thread CPU time
//! ([`dilu_quota::ThreadMeter`]) is what the model cost, as with tract. With the CUDA execution provider (an
//! `onnxruntime-gpu` library on a machine with a GPU) the kernels run on the GPU and the CPU time charged is the
//! host side only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::ExecutionProvider;
use ort::logging::LogLevel;
use ort::session::builder::SessionBuilder;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorRef};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::DatumType;

use super::Interface;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::model::{Datatype, TensorData, TensorSpec, internal, model_err};

/// The symbolic batch dimension given to every input.
const BATCH_SYMBOL: &str = "N";

/// The loaded library and its environment: one per process (ONNX Runtime allows one environment, and `ort`
/// loads one library).
struct Runtime {
    library: PathBuf,
    environment: Environment,
    cuda: bool,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

fn ort_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::OnnxRuntime(e.to_string())
}

/// Loads the library at `library` (once per process) and makes the environment; returns it and whether the
/// library offers the CUDA execution provider.
fn runtime(library: &Path) -> Result<(Environment, bool), WorkerError> {
    let library = std::fs::canonicalize(library)
        .map_err(|e| ort_err(format!("{}: {e}", library.display())))?;
    let mut slot = RUNTIME
        .lock()
        .map_err(|_| ort_err("the runtime lock is poisoned"))?;
    if let Some(rt) = slot.as_ref() {
        if rt.library != library {
            return Err(ort_err(format!(
                "this process already loaded ONNX Runtime from {}; it cannot load {} too",
                rt.library.display(),
                library.display()
            )));
        }
        return Ok((rt.environment.clone(), rt.cuda));
    }
    let builder = ort::init_from(&library)
        .map_err(|e| ort_err(format!("loading {}: {e}", library.display())))?;
    let environment = builder
        .with_name("dilu-worker")
        .build()
        .map_err(|e| ort_err(format!("creating the environment: {e}")))?;
    let cuda = ort::ep::CUDA::is_available().unwrap_or(false);
    *slot = Some(Runtime {
        library,
        environment: environment.clone(),
        cuda,
    });
    Ok((environment, cuda))
}

/// A model loaded by ONNX Runtime: one session (batchable or with the fixed batch), run under a lock (a
/// session's `run` takes it mutably; only the batcher thread runs it while serving).
pub(crate) struct OrtModel {
    session: Mutex<Session>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    batchable: bool,
    /// Whether the session runs on the CUDA execution provider.
    cuda: bool,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .field("batchable", &self.batchable)
            .field("cuda", &self.cuda)
            .finish_non_exhaustive()
    }
}

/// An input or output of the graph as the file declares it.
struct Declared {
    name: String,
    /// `TensorProto.DataType`, 0 when absent.
    elem_type: i32,
    /// `None`: no shape (rank unknown); a dimension `None`: open (a parameter or absent).
    dims: Option<Vec<Option<usize>>>,
}

fn declared(v: &pb::ValueInfoProto) -> Declared {
    let tensor = v
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .map(|pb::type_proto::Value::TensorType(t)| t);
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    usize::try_from(v).ok()
                }
                _ => None,
            })
            .collect()
    });
    Declared {
        name: v.name.clone(),
        elem_type: tensor.map_or(0, |t| t.elem_type),
        dims,
    }
}

/// The type tract's engine names in its errors (`F32`, `U8`, …), so both engines word them alike.
fn type_name(elem_type: i32) -> String {
    pb::tensor_proto::DataType::try_from(elem_type)
        .ok()
        .and_then(|t| DatumType::try_from(t).ok())
        .map_or_else(
            || format!("ONNX TensorProto.DataType {elem_type}"),
            |dt| format!("{dt:?}"),
        )
}

fn datatype_of(elem_type: i32) -> Option<Datatype> {
    use pb::tensor_proto::DataType;
    match DataType::try_from(elem_type).ok()? {
        DataType::Float => Some(Datatype::Fp32),
        DataType::Double => Some(Datatype::Fp64),
        DataType::Int32 => Some(Datatype::Int32),
        DataType::Int64 => Some(Datatype::Int64),
        _ => None,
    }
}

/// Loads `config`'s model with ONNX Runtime from the library [`WorkerConfig::onnxruntime_library`] names.
pub(crate) fn load(config: &WorkerConfig) -> Result<(Interface, OrtModel), WorkerError> {
    let library = config.onnxruntime_library()?;
    let path = config.model_path.as_path();
    let (environment, cuda) = runtime(&library)?;
    let bytes = std::fs::read(path).map_err(|e| model_err(path, e))?;
    let proto = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| model_err(path, format!("not an ONNX model: {e}")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| model_err(path, "the model has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let graph_inputs: Vec<Declared> = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .map(declared)
        .collect();
    if graph_inputs.is_empty() {
        return Err(model_err(path, "the model has no inputs"));
    }
    // Every input's declared type and shape, with the first dimension possibly unknown: the tract engine's
    // rules and words.
    let mut inputs: Vec<(String, Datatype, Option<usize>, Vec<usize>)> = Vec::new();
    for (ix, input) in graph_inputs.iter().enumerate() {
        let name = &input.name;
        if input.elem_type == 0 {
            return Err(model_err(
                path,
                format!("input {name} has no declared type"),
            ));
        }
        let datatype = datatype_of(input.elem_type).ok_or_else(|| {
            model_err(
                path,
                format!(
                    "input {name} has type {}, which the worker does not serve",
                    type_name(input.elem_type)
                ),
            )
        })?;
        let dims: Vec<Option<usize>> = match (&config.input_shape, ix) {
            (Some(shape), 0) => shape.iter().map(|&d| Some(d)).collect(),
            _ => input.dims.clone().ok_or_else(|| {
                model_err(
                    path,
                    format!("input {name} has no declared rank; give input_shape"),
                )
            })?,
        };
        let (first, rest) = super::split_batch(path, name, &dims)?;
        inputs.push((name.clone(), datatype, first, rest));
    }
    let graph_outputs: Vec<Declared> = graph.output.iter().map(declared).collect();
    let mut output_types = Vec::with_capacity(graph_outputs.len());
    for output in &graph_outputs {
        let datatype = datatype_of(output.elem_type).ok_or_else(|| {
            model_err(
                path,
                format!(
                    "output {} has type {}, which the worker does not serve",
                    output.name,
                    type_name(output.elem_type)
                ),
            )
        })?;
        output_types.push(datatype);
    }
    let input_names: Vec<String> = inputs.iter().map(|i| i.0.clone()).collect();
    let probe_specs: Vec<TensorSpec> = graph_outputs
        .iter()
        .zip(&output_types)
        .map(|(output, &datatype)| TensorSpec {
            name: output.name.clone(),
            datatype,
            shape: Vec::new(),
        })
        .collect();
    let make = |bytes: &[u8], batchable: bool| -> Result<OrtModel, WorkerError> {
        let (session, on_cuda) = session(&environment, cuda, bytes)?;
        Ok(OrtModel {
            session: Mutex::new(session),
            input_names: input_names.clone(),
            output_names: probe_specs.iter().map(|o| o.name.clone()).collect(),
            batchable,
            cuda: on_cuda,
        })
    };

    // First choice: a symbolic batch N, kept when batches of 1 and 2 give every output that first dimension;
    // else the fixed batch, one by one (tract's rule; tract's per-size plans are batchable here too).
    let mut unbatched_reason = Some("dynamic_batch is off".to_string());
    let mut chosen: Option<(OrtModel, Vec<Vec<usize>>)> = None;
    if config.dynamic_batch {
        let rewritten = rewrite(&bytes, &inputs, None).map_err(|e| model_err(path, e))?;
        match make(&rewritten, true) {
            Ok(model) => match (
                model.probe(&inputs, 1, &probe_specs),
                model.probe(&inputs, 2, &probe_specs),
            ) {
                (Ok(one), Ok(two))
                    if one.iter().all(|s| s.first() == Some(&1))
                        && two.iter().all(|s| s.first() == Some(&2)) =>
                {
                    unbatched_reason = None;
                    chosen = Some((model, one));
                }
                (Ok(_), Ok(two)) => {
                    unbatched_reason = Some(format!(
                        "with a batch of 2 the outputs' first dimensions are {:?}",
                        two.iter().map(|s| s.first()).collect::<Vec<_>>()
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    unbatched_reason = Some(format!("a symbolic batch N fails: {e}"));
                }
            },
            Err(e) => unbatched_reason = Some(format!("a symbolic batch N fails: {e}")),
        }
    }
    let fixed_batch = inputs.iter().find_map(|d| d.2).unwrap_or(1);
    let (model, probed) = match chosen {
        Some(chosen) => chosen,
        None => {
            let rewritten =
                rewrite(&bytes, &inputs, Some(fixed_batch)).map_err(|e| model_err(path, e))?;
            let model = make(&rewritten, false).map_err(|e| model_err(path, e))?;
            let probed = model
                .probe(&inputs, fixed_batch, &probe_specs)
                .map_err(|e| model_err(path, format!("a run of batch {fixed_batch}: {e}")))?;
            (model, probed)
        }
    };
    let batchable = model.batchable;
    let outputs = probe_specs
        .into_iter()
        .zip(probed)
        .map(|(spec, shape)| TensorSpec {
            shape: shape
                .iter()
                .enumerate()
                .map(|(d, &n)| if batchable && d == 0 { -1 } else { n as i64 })
                .collect(),
            ..spec
        })
        .collect();
    let provider = match (model.cuda, cuda) {
        (true, _) => "CUDA execution provider",
        (false, true) => "CPU execution provider (CUDA is offered but did not start: see above)",
        (false, false) => "CPU execution provider (the library offers no CUDA execution provider)",
    };
    eprintln!(
        "dilu worker: engine onnxruntime ({}), {provider}, 1 intra-op thread",
        library.display()
    );
    let interface = super::interface(inputs, outputs, batchable, fixed_batch, unbatched_reason);
    Ok((interface, model))
}

/// A session over the model `bytes`: one intra-op and one inter-op thread, sequential, no spinning (so it
/// computes on the caller's thread); CUDA first when the library offers it (and the CPU alone when CUDA does not
/// register or its session cannot be made, said on stderr). Returns whether CUDA runs it. ONNX Runtime's own log
/// keeps only fatal messages: a failed run comes back as its error (a 500 that names it), and the batch of 2
/// that a fixed-batch model refuses while loading is expected, not worth a red line on stderr.
fn session(
    environment: &Environment,
    cuda: bool,
    bytes: &[u8],
) -> Result<(Session, bool), WorkerError> {
    let builder = || -> Result<SessionBuilder, WorkerError> {
        Session::builder(environment)
            .map_err(ort_err)?
            .with_intra_threads(1)
            .map_err(ort_err)?
            .with_inter_threads(1)
            .map_err(ort_err)?
            .with_parallel_execution(false)
            .map_err(ort_err)?
            .with_intra_op_spinning(false)
            .map_err(ort_err)?
            .with_inter_op_spinning(false)
            .map_err(ort_err)?
            .with_log_level(LogLevel::Fatal)
            .map_err(ort_err)
    };
    if cuda {
        let mut with_cuda = builder()?;
        match ort::ep::CUDA::default().register(&mut with_cuda) {
            Ok(()) => match with_cuda.commit_from_memory(bytes) {
                Ok(session) => return Ok((session, true)),
                Err(e) => eprintln!(
                    "dilu worker: onnxruntime could not make a CUDA session ({e}); using the CPU"
                ),
            },
            Err(e) => eprintln!(
                "dilu worker: onnxruntime's CUDA execution provider did not register ({e}); using the CPU"
            ),
        }
    }
    let session = builder()?.commit_from_memory(bytes).map_err(ort_err)?;
    Ok((session, false))
}

/// A zero of each input's type, for a run of `batch`.
fn zeros(datatype: Datatype, n: usize) -> TensorData {
    match datatype {
        Datatype::Fp32 => TensorData::Fp32(vec![0.0; n]),
        Datatype::Fp64 => TensorData::Fp64(vec![0.0; n]),
        Datatype::Int32 => TensorData::Int32(vec![0; n]),
        Datatype::Int64 => TensorData::Int64(vec![0; n]),
    }
}

impl OrtModel {
    pub(crate) fn is_batchable(&self) -> bool {
        self.batchable
    }

    /// Runs zeros with first dimension `batch`; returns each output's shape.
    fn probe(
        &self,
        inputs: &[(String, Datatype, Option<usize>, Vec<usize>)],
        batch: usize,
        outputs: &[TensorSpec],
    ) -> Result<Vec<Vec<usize>>, WorkerError> {
        let data: Vec<(Vec<usize>, TensorData)> = inputs
            .iter()
            .map(|(_, dt, _, rest)| {
                let shape: Vec<usize> =
                    std::iter::once(batch).chain(rest.iter().copied()).collect();
                let n = shape.iter().product();
                (shape, zeros(*dt, n))
            })
            .collect();
        let refs: Vec<(Vec<usize>, &TensorData)> =
            data.iter().map(|(s, d)| (s.clone(), d)).collect();
        Ok(self
            .run(&refs, outputs)?
            .into_iter()
            .map(|(shape, _)| shape)
            .collect())
    }

    pub(crate) fn run(
        &self,
        inputs: &[(Vec<usize>, &TensorData)],
        outputs: &[TensorSpec],
    ) -> Result<Vec<(Vec<usize>, TensorData)>, WorkerError> {
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for ((shape, data), name) in inputs.iter().zip(&self.input_names) {
            let shape = shape.clone();
            let value: SessionInputValue<'_> = match data {
                TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                    .map_err(internal)?
                    .into(),
                TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                    .map_err(internal)?
                    .into(),
                TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                    .map_err(internal)?
                    .into(),
                TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                    .map_err(internal)?
                    .into(),
            };
            values.push((name.as_str(), value));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| internal("the session lock is poisoned"))?;
        let results = session.run(values).map_err(internal)?;
        self.output_names
            .iter()
            .zip(outputs)
            .map(|(name, spec)| {
                let value = results
                    .get(name)
                    .ok_or_else(|| internal(format!("output {name} is missing from the run")))?;
                extract(value, spec.datatype).map_err(|e| internal(format!("output {name}: {e}")))
            })
            .collect()
    }
}

/// An output's shape and elements, as `datatype` (the type the model declares for it).
fn extract(value: &DynValue, datatype: Datatype) -> Result<(Vec<usize>, TensorData), ort::Error> {
    fn parts<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
        value: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), ort::Error> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let shape = shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        Ok((shape, data.to_vec()))
    }
    Ok(match datatype {
        Datatype::Fp32 => parts::<f32>(value).map(|(s, d)| (s, TensorData::Fp32(d)))?,
        Datatype::Fp64 => parts::<f64>(value).map(|(s, d)| (s, TensorData::Fp64(d)))?,
        Datatype::Int32 => parts::<i32>(value).map(|(s, d)| (s, TensorData::Int32(d)))?,
        Datatype::Int64 => parts::<i64>(value).map(|(s, d)| (s, TensorData::Int64(d)))?,
    })
}

// ---- Rewriting the model's shapes, at the protobuf wire level ----------------------------------------------
//
// Only the graph's input and output entries and its `value_info` are touched; every other byte of the file is
// copied as it is, so fields that tract's protobuf types do not know (they drop unknown fields) survive.

/// `ModelProto.graph`, `GraphProto.input`, `.output`, `.value_info`.
const MODEL_GRAPH: u32 = 7;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const GRAPH_VALUE_INFO: u32 = 13;

/// The model with every input in `inputs` shaped `[first, rest…]` (`first`: the fixed batch, or `None` for the
/// symbolic [`BATCH_SYMBOL`]), the outputs' declared shapes and the graph's `value_info` removed (ONNX Runtime
/// infers them again; left in place they could pin the batch the file was exported with).
fn rewrite(
    bytes: &[u8],
    inputs: &[(String, Datatype, Option<usize>, Vec<usize>)],
    first: Option<usize>,
) -> Result<Vec<u8>, String> {
    let shape_of = |rest: &[usize]| pb::TensorShapeProto {
        dim: std::iter::once(match first {
            Some(n) => dim_value(n),
            None => pb::tensor_shape_proto::dimension::Value::DimParam(BATCH_SYMBOL.into()),
        })
        .chain(rest.iter().map(|&d| dim_value(d)))
        .map(|value| pb::tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(value),
        })
        .collect(),
    };
    map_fields(bytes, &mut |field, payload| {
        if field != MODEL_GRAPH {
            return Ok(Edit::Keep);
        }
        let graph = map_fields(payload, &mut |field, payload| match field {
            GRAPH_VALUE_INFO => Ok(Edit::Drop),
            GRAPH_INPUT | GRAPH_OUTPUT => {
                let mut info = pb::ValueInfoProto::decode(payload).map_err(|e| e.to_string())?;
                let Some(pb::type_proto::Value::TensorType(tensor)) =
                    info.r#type.as_mut().and_then(|t| t.value.as_mut())
                else {
                    return Ok(Edit::Keep);
                };
                if field == GRAPH_OUTPUT {
                    tensor.shape = None;
                } else if let Some((_, _, _, rest)) = inputs.iter().find(|i| i.0 == info.name) {
                    tensor.shape = Some(shape_of(rest));
                } else {
                    // An input with an initializer: a constant, as it was.
                    return Ok(Edit::Keep);
                }
                Ok(Edit::Replace(info.encode_to_vec()))
            }
            _ => Ok(Edit::Keep),
        })?;
        Ok(Edit::Replace(graph))
    })
}

fn dim_value(n: usize) -> pb::tensor_shape_proto::dimension::Value {
    pb::tensor_shape_proto::dimension::Value::DimValue(i64::try_from(n).unwrap_or(i64::MAX))
}

/// What to do with one length-delimited field.
enum Edit {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).ok_or("a truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decides what becomes of one length-delimited field, given its number and payload.
type Editor<'a> = dyn FnMut(u32, &[u8]) -> Result<Edit, String> + 'a;

/// Copies the protobuf message `bytes` field by field, letting `edit` keep, drop or replace each
/// length-delimited field (given its number and payload); other fields are copied unchanged.
fn map_fields(bytes: &[u8], edit: &mut Editor<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = read_varint(bytes, &mut pos)?;
        let field = u32::try_from(key >> 3).map_err(|_| "a field number over 2^32")?;
        match key & 7 {
            0 => {
                read_varint(bytes, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?)
                    .map_err(|_| "a field longer than memory")?;
                let end = pos.checked_add(len).filter(|&e| e <= bytes.len());
                let end = end.ok_or("a field runs past the end of the message")?;
                let payload = &bytes[pos..end];
                pos = end;
                match edit(field, payload)? {
                    Edit::Keep => out.extend_from_slice(&bytes[start..end]),
                    Edit::Drop => {}
                    Edit::Replace(new) => {
                        write_varint(&mut out, key);
                        write_varint(&mut out, new.len() as u64);
                        out.extend_from_slice(&new);
                    }
                }
                continue;
            }
            wire => {
                return Err(format!(
                    "field {field} has wire type {wire}, not used by ONNX"
                ));
            }
        }
        if pos > bytes.len() {
            return Err("a field runs past the end of the message".into());
        }
        out.extend_from_slice(&bytes[start..pos]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            })
                            .collect(),
                    }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    #[test]
    fn rewrite_sets_the_batch_and_keeps_everything_else() {
        let model = pb::ModelProto {
            ir_version: 7,
            producer_name: "test".into(),
            graph: Some(pb::GraphProto {
                name: "g".into(),
                input: vec![value_info("x", &[1, 3, 4])],
                output: vec![value_info("y", &[1, 12])],
                value_info: vec![value_info("mid", &[1, 12])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let inputs = vec![("x".to_string(), Datatype::Fp32, Some(1), vec![3, 5])];
        let out = rewrite(&bytes, &inputs, None).unwrap();
        let back = pb::ModelProto::decode(out.as_slice()).unwrap();
        let graph = back.graph.unwrap();
        assert_eq!(back.ir_version, 7);
        assert_eq!(back.producer_name, "test");
        assert_eq!(graph.name, "g");
        assert!(graph.value_info.is_empty());
        let dims = |v: &pb::ValueInfoProto| match v.r#type.as_ref().unwrap().value.as_ref().unwrap()
        {
            pb::type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.clone()),
        };
        let x = dims(&graph.input[0]).unwrap();
        assert_eq!(
            x[0].value,
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                "N".into()
            ))
        );
        assert_eq!(
            x[2].value,
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(5))
        );
        assert_eq!(dims(&graph.output[0]), None);
        let fixed = rewrite(&bytes, &inputs, Some(2)).unwrap();
        let graph = pb::ModelProto::decode(fixed.as_slice())
            .unwrap()
            .graph
            .unwrap();
        assert_eq!(
            dims(&graph.input[0]).unwrap()[0].value,
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(2))
        );
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        let bytes = pb::ModelProto {
            graph: Some(pb::GraphProto::default()),
            producer_name: "p".repeat(40),
            ..Default::default()
        }
        .encode_to_vec();
        for cut in 1..bytes.len() {
            let _ = rewrite(&bytes[..cut], &[], None);
        }
        assert!(rewrite(&bytes[..bytes.len() - 1], &[], None).is_err());
    }

    #[test]
    fn types_are_named_as_tract_names_them() {
        assert_eq!(type_name(1), "F32");
        assert_eq!(type_name(2), "U8");
        assert_eq!(type_name(9), "Bool");
        assert!(type_name(999).contains("999"));
    }
}
