//! The Open Inference Protocol v2 JSON bodies (KServe v2 / Triton REST) and how a request's tensors are checked
//! against the model. Tensors may travel as JSON arrays or, with the binary tensor data extension
//! ([`crate::binary`]), as raw bytes after the JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::binary;
use crate::model::{Datatype, Model, OutputTensor, Sample, TensorData, TensorSpec};

/// `POST /v2/models/{name}/infer` request body.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    /// An identifier echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters; `binary_data_output: true` asks for every output as binary data. Others are
    /// accepted and ignored.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestInput {
    /// The model input it feeds.
    pub name: String,
    /// Its shape, batch dimension first.
    pub shape: Vec<i64>,
    /// Its element type (`"FP32"`, …).
    pub datatype: String,
    /// Tensor parameters; `binary_data_size` says the elements are that many bytes of the body's binary part.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Its elements, row-major: a flat array or nested arrays (absent when sent as binary data).
    #[serde(default)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestOutput {
    /// The output's name.
    pub name: String,
    /// Output parameters; `binary_data` (a boolean) says whether to return it as binary data.
    /// `classification` is refused: the worker does not implement that extension.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `POST /v2/models/{name}/infer` response body.
#[derive(Debug, Clone, Serialize)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The request's identifier, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The output tensors.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of a response.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseOutput {
    /// The output's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub datatype: Datatype,
    /// `{"binary_data_size": n}` when its elements are in the body's binary part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Its elements, flat and row-major (absent when returned as binary data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

/// `GET /v2/models/{name}` response body.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its versions.
    pub versions: Vec<String>,
    /// Always `"onnx"`.
    pub platform: &'static str,
    /// Its inputs.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<TensorSpec>,
}

/// `GET /v2` response body.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMetadata {
    /// The server's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The protocol extensions it supports.
    pub extensions: Vec<&'static str>,
}

/// One output a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedOutput {
    /// Its index in [`Model::outputs`].
    pub index: usize,
    /// Whether to return it as binary data rather than a JSON array.
    pub binary: bool,
}

/// A checked request: the sample to run and the outputs to return.
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    /// The request's tensors in model input order.
    pub sample: Sample,
    /// The outputs to return, in the order asked.
    pub outputs: Vec<WantedOutput>,
}

/// Reads an optional boolean parameter `key` of `params`; anything but a boolean is an error naming `owner`.
fn bool_param(params: Option<&Value>, key: &str, owner: &str) -> Result<Option<bool>, String> {
    match params.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{owner} has parameter {key} = {other}: it must be true or false"
        )),
    }
}

/// Splits `binary` into each request input's bytes, in request order: `Some` for an input that gives
/// `parameters.binary_data_size`, `None` for one that gives JSON `data`. Every byte must be claimed.
fn binary_slices<'a>(
    inputs: &[RequestInput],
    binary: &'a [u8],
) -> Result<Vec<Option<&'a [u8]>>, String> {
    let mut offset = 0usize;
    let mut slices = Vec::with_capacity(inputs.len());
    for input in inputs {
        let name = &input.name;
        let size = match input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                format!("input '{name}' has binary_data_size = {v}: it must be a non-negative integer")
            })?),
        };
        match (size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "input '{name}' gives both data and binary_data_size: it must give one"
                ));
            }
            (None, None) => return Err(format!("input '{name}' has no data")),
            (None, Some(_)) => slices.push(None),
            (Some(n), None) => {
                let end = offset.checked_add(n).filter(|&e| e <= binary.len()).ok_or_else(|| {
                    format!(
                        "input '{name}' has binary_data_size = {n} but only {} bytes of binary data remain",
                        binary.len() - offset
                    )
                })?;
                slices.push(Some(&binary[offset..end]));
                offset = end;
            }
        }
    }
    if offset != binary.len() {
        return Err(format!(
            "the body has {} bytes of binary data but the inputs' binary_data_size add up to {offset}",
            binary.len()
        ));
    }
    Ok(slices)
}

/// Checks a request against the model: every model input present once and nothing else, each with the
/// model's datatype, a shape matching the model's (except a dynamic batch dimension, which must be in
/// 1..=`max_batch` and agree across inputs), and as many elements as its shape holds, given as JSON or as
/// `binary` bytes (the body's part after the JSON header; empty without the binary extension). Errors name the
/// tensor, the value and the rule.
pub fn check_request(
    model: &Model,
    request: InferRequest,
    binary: &[u8],
    max_batch: usize,
) -> Result<CheckedRequest, String> {
    let slices = binary_slices(&request.inputs, binary)?;
    for input in &request.inputs {
        if !model.inputs().iter().any(|s| s.name == input.name) {
            let names: Vec<&str> = model.inputs().iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "unexpected input '{}': the model's inputs are {names:?}",
                input.name
            ));
        }
        if request
            .inputs
            .iter()
            .filter(|i| i.name == input.name)
            .count()
            > 1
        {
            return Err(format!("input '{}' is given more than once", input.name));
        }
    }
    let mut batch: Option<usize> = None;
    let mut tensors = Vec::with_capacity(model.inputs().len());
    for (ix, spec) in model.inputs().iter().enumerate() {
        let position = request
            .inputs
            .iter()
            .position(|i| i.name == spec.name)
            .ok_or_else(|| format!("input '{}' is missing", spec.name))?;
        let input = &request.inputs[position];
        let name = &spec.name;
        if input.datatype != spec.datatype.as_str() {
            return Err(format!(
                "input '{name}' has datatype '{}' but the model expects '{}'",
                input.datatype,
                spec.datatype.as_str()
            ));
        }
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()
            .ok_or_else(|| {
                format!(
                    "input '{name}' has shape {:?}: dimensions must be ≥ 0",
                    input.shape
                )
            })?;
        let matches = shape.len() == spec.shape.len()
            && shape
                .iter()
                .zip(&spec.shape)
                .all(|(&d, &m)| m < 0 || d as i64 == m);
        if !matches {
            return Err(format!(
                "input '{name}' has shape {:?} but the model expects {:?} (-1: any batch size)",
                input.shape, spec.shape
            ));
        }
        let n = shape[0];
        if n == 0 {
            return Err(format!(
                "input '{name}' has batch size 0 (shape[0]): it must be at least 1"
            ));
        }
        // A model with a fixed batch takes exactly that (the shape check above); a dynamic one at most max_batch.
        if spec.shape[0] < 0 && n > max_batch {
            return Err(format!(
                "input '{name}' has batch size {n} (shape[0]): it must be in 1..={max_batch}, the worker's max_batch"
            ));
        }
        if let Some(b) = batch
            && b != n
        {
            return Err(format!(
                "input '{name}' has batch size {n} but an earlier input has {b}: inputs must agree"
            ));
        }
        batch = Some(n);
        let expected = n * model.item_len(ix);
        let (data, found) = match (slices[position], &input.data) {
            (Some(bytes), _) => {
                let data = binary::decode(bytes, spec.datatype)
                    .map_err(|e| format!("input '{name}': {e}"))?;
                let found = data.len();
                (data, found)
            }
            (None, Some(json)) => flatten(json, spec.datatype, expected)
                .map_err(|e| format!("input '{name}': {e}"))?,
            (None, None) => return Err(format!("input '{name}' has no data")),
        };
        if found != expected {
            return Err(format!(
                "input '{name}' has {found} elements but its shape {:?} holds {expected}",
                input.shape
            ));
        }
        tensors.push(data);
    }
    let all_binary = bool_param(
        request.parameters.as_ref(),
        "binary_data_output",
        "the request",
    )?
    .unwrap_or(false);
    let outputs = match &request.outputs {
        None => (0..model.outputs().len())
            .map(|index| WantedOutput {
                index,
                binary: all_binary,
            })
            .collect(),
        Some(wanted) => wanted
            .iter()
            .map(|w| {
                let index = model
                    .outputs()
                    .iter()
                    .position(|s| s.name == w.name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            model.outputs().iter().map(|s| s.name.as_str()).collect();
                        format!(
                            "unknown output '{}': the model's outputs are {names:?}",
                            w.name
                        )
                    })?;
                let owner = format!("output '{}'", w.name);
                let params = w.parameters.as_ref();
                if params.and_then(|p| p.get("classification")).is_some() {
                    return Err(format!(
                        "{owner} asks for classification: the worker does not implement the classification extension"
                    ));
                }
                let binary = bool_param(params, "binary_data", &owner)?.unwrap_or(all_binary);
                Ok(WantedOutput { index, binary })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(CheckedRequest {
        sample: Sample {
            batch: batch.unwrap_or(1),
            inputs: tensors,
        },
        outputs,
    })
}

/// Flattens `data` (a number, a flat array or nested arrays) into a payload of type `dt`, and returns it with
/// the number of elements found. Elements past the first `limit` are counted, not kept (the caller reports the
/// count mismatch).
pub fn flatten(data: &Value, dt: Datatype, limit: usize) -> Result<(TensorData, usize), String> {
    let mut out = TensorData::with_capacity(dt, limit.min(1 << 24));
    let mut stack = vec![data];
    let mut seen = 0usize;
    // Depth-first, left to right: push children in reverse.
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            leaf => {
                seen += 1;
                if seen <= limit {
                    push_leaf(&mut out, leaf)?;
                }
            }
        }
    }
    Ok((out, seen))
}

fn push_leaf(out: &mut TensorData, v: &Value) -> Result<(), String> {
    let bad = |what: &str| Err(format!("element {v} is not {what}"));
    match out {
        TensorData::Fp32(d) => match v.as_f64() {
            Some(x) => d.push(x as f32),
            None => return bad("a number"),
        },
        TensorData::Fp64(d) => match v.as_f64() {
            Some(x) => d.push(x),
            None => return bad("a number"),
        },
        TensorData::Int32(d) => match v.as_i64().and_then(|x| i32::try_from(x).ok()) {
            Some(x) => d.push(x),
            None => return bad("a 32-bit integer"),
        },
        TensorData::Int64(d) => match v.as_i64() {
            Some(x) => d.push(x),
            None => return bad("a 64-bit integer"),
        },
    }
    Ok(())
}

/// A response ready to send: its JSON header and, when any output is binary, the bytes that follow it.
#[derive(Debug, Clone)]
pub struct BuiltResponse {
    /// The JSON part.
    pub json: InferResponse,
    /// The binary part, outputs in response order (`None` when no output was asked for as binary).
    pub binary: Option<Vec<u8>>,
}

/// Builds the response for a request from its outputs: JSON arrays, or binary data for the outputs asked for
/// that way.
pub fn response(
    model: &Model,
    model_name: &str,
    model_version: &str,
    id: Option<String>,
    wanted: &[WantedOutput],
    outputs: Vec<OutputTensor>,
) -> BuiltResponse {
    let mut outputs: Vec<Option<OutputTensor>> = outputs.into_iter().map(Some).collect();
    let mut binary: Option<Vec<u8>> = None;
    let outputs = wanted
        .iter()
        .filter_map(|w| {
            let t = outputs.get_mut(w.index)?.take()?;
            let spec = model.outputs().get(w.index)?;
            let (parameters, data) = if w.binary {
                let size = binary::encode(&t.data, binary.get_or_insert_with(Vec::new));
                (Some(serde_json::json!({ "binary_data_size": size })), None)
            } else {
                (None, Some(t.data))
            };
            Some(ResponseOutput {
                name: spec.name.clone(),
                shape: t.shape,
                datatype: spec.datatype,
                parameters,
                data,
            })
        })
        .collect();
    BuiltResponse {
        json: InferResponse {
            model_name: model_name.to_string(),
            model_version: Some(model_version.to_string()),
            id,
            outputs,
        },
        binary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flatten_accepts_flat_and_nested_arrays_in_row_major_order() {
        let flat = flatten(&json!([1, 2, 3, 4]), Datatype::Fp32, 4).unwrap();
        let nested = flatten(&json!([[1, 2], [3, 4]]), Datatype::Fp32, 4).unwrap();
        assert_eq!(flat, (TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]), 4));
        assert_eq!(flat, nested);
        let ints = flatten(&json!([[1], [-2]]), Datatype::Int64, 2).unwrap();
        assert_eq!(ints, (TensorData::Int64(vec![1, -2]), 2));
        // Past the limit elements are counted, not kept.
        assert_eq!(flatten(&json!([1, 2, 3]), Datatype::Int64, 2).unwrap().1, 3);
    }

    #[test]
    fn flatten_refuses_non_numbers() {
        let err = flatten(&json!([1, "x"]), Datatype::Fp32, 2).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let err = flatten(&json!([1.5]), Datatype::Int64, 1).unwrap_err();
        assert!(err.contains("integer"), "{err}");
    }
}
