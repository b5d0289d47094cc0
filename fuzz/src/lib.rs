//! What the fuzz targets share: the checks each runs on a parser's output, and the model the v2 request
//! targets check requests against (a small ONNX graph written here, so no model file is needed).
//!
//! Every check panics (which libFuzzer reports as a crash) only when a parser breaks its own contract:
//! accepting an input it then cannot use, or giving back something that does not read back the same.

use std::path::PathBuf;
use std::sync::OnceLock;

use dilu_api::{FunctionSpec, SpecFormat, parse_spec};
use dilu_worker::protocol::{InferRequest, check_request};
use dilu_worker::{Model, WorkerConfig};

/// Parses a spec and, when it is accepted, checks that it validates again, that its derived values can be
/// computed, and that it reads back the same from the JSON it serializes to.
pub fn check_spec(text: &str, format: SpecFormat) {
    let Ok(spec) = parse_spec(text, format) else {
        return;
    };
    if let Err(e) = spec.validate() {
        panic!("parse_spec accepted a spec that validate() refuses: {e}");
    }
    let _ = spec.runtime();
    let _ = spec.template_key();
    let json = serde_json::to_string(&spec).expect("an accepted spec serializes to JSON");
    let again: FunctionSpec = match parse_spec(&json, SpecFormat::Json) {
        Ok(s) => s,
        Err(e) => panic!("an accepted spec does not read back from its JSON {json}: {e}"),
    };
    assert_eq!(again, spec, "spec changed on a JSON round trip: {json}");
}

/// The fuzz model's inputs: one per datatype the worker serves, each with a dynamic batch dimension.
/// (name, ONNX element type, dimensions after the batch)
const MODEL_INPUTS: [(&str, u64, &[u64]); 4] = [
    ("x_fp32", 1, &[2, 3]),
    ("x_fp64", 11, &[2]),
    ("x_int32", 6, &[3]),
    ("x_int64", 7, &[1]),
];

/// Protocol-buffer encoding, just what an ONNX `ModelProto` needs.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field.
    pub fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }

    /// A length-delimited field (bytes, string or message).
    pub fn bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// `ValueInfoProto` of a tensor with elements `elem_type` and shape `[N, dims...]`.
fn value_info(name: &str, elem_type: u64, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    let mut batch = Vec::new();
    pb::bytes(&mut batch, 2, b"N"); // Dimension.dim_param
    pb::bytes(&mut shape, 1, &batch); // TensorShapeProto.dim
    for &d in dims {
        let mut dim = Vec::new();
        pb::uint(&mut dim, 1, d); // Dimension.dim_value
        pb::bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    pb::uint(&mut tensor, 1, elem_type); // TypeProto.Tensor.elem_type
    pb::bytes(&mut tensor, 2, &shape); // TypeProto.Tensor.shape
    let mut ty = Vec::new();
    pb::bytes(&mut ty, 1, &tensor); // TypeProto.tensor_type
    let mut info = Vec::new();
    pb::bytes(&mut info, 1, name.as_bytes()); // ValueInfoProto.name
    pb::bytes(&mut info, 2, &ty); // ValueInfoProto.type
    info
}

/// An ONNX model (IR 7, opset 13) with the inputs of [`MODEL_INPUTS`] and, for each, an output `y_…` = `Identity(x_…)`.
pub fn onnx_model_bytes() -> Vec<u8> {
    let mut graph = Vec::new();
    for (name, _, _) in MODEL_INPUTS {
        let out = name.replacen("x_", "y_", 1);
        let mut node = Vec::new();
        pb::bytes(&mut node, 1, name.as_bytes()); // NodeProto.input
        pb::bytes(&mut node, 2, out.as_bytes()); // NodeProto.output
        pb::bytes(&mut node, 3, format!("id_{name}").as_bytes()); // NodeProto.name
        pb::bytes(&mut node, 4, b"Identity"); // NodeProto.op_type
        pb::bytes(&mut graph, 1, &node); // GraphProto.node
    }
    pb::bytes(&mut graph, 2, b"dilu_fuzz"); // GraphProto.name
    for (name, elem_type, dims) in MODEL_INPUTS {
        pb::bytes(&mut graph, 11, &value_info(name, elem_type, dims)); // GraphProto.input
    }
    for (name, elem_type, dims) in MODEL_INPUTS {
        let out = name.replacen("x_", "y_", 1);
        pb::bytes(&mut graph, 12, &value_info(&out, elem_type, dims)); // GraphProto.output
    }
    let mut opset = Vec::new();
    pb::bytes(&mut opset, 1, b""); // OperatorSetIdProto.domain
    pb::uint(&mut opset, 2, 13); // OperatorSetIdProto.version
    let mut model = Vec::new();
    pb::uint(&mut model, 1, 7); // ModelProto.ir_version
    pb::bytes(&mut model, 7, &graph); // ModelProto.graph
    pb::bytes(&mut model, 8, &opset); // ModelProto.opset_import
    model
}

/// The model every v2 target checks requests against, loaded once per process by the worker's own loader.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("dilu-fuzz-model-{}.onnx", std::process::id()));
        std::fs::write(&path, onnx_model_bytes()).expect("write the fuzz model");
        let mut config = WorkerConfig::new("fuzz", &path);
        // Skip timing a batch of two at load: it only decides how batches run.
        config.concat_batches = Some(false);
        let model = Model::load(&config).expect("the fuzz model loads");
        let _ = std::fs::remove_file(&path);
        assert!(
            model.has_symbolic_batch(),
            "the fuzz model has a dynamic batch"
        );
        model
    })
}

/// What the worker does with a request body before it queues it (`server.rs` `infer_inner`): split off the
/// binary part by the `Inference-Header-Content-Length` value, parse the JSON header, check it against the
/// model. An accepted request is then run, so a request the checks let through but the model cannot take
/// shows up as a panic.
pub fn check_v2_body(body: &[u8], header_len: Option<&str>) {
    let model = model();
    let Ok((json, binary)) = dilu_worker::binary::split(body, header_len) else {
        return;
    };
    if let Some(raw) = header_len {
        assert_eq!(json.len(), raw.trim().parse::<usize>().unwrap());
    }
    let Ok(request) = serde_json::from_slice::<InferRequest>(json) else {
        return;
    };
    // The worker checks a request's batch against its configured max_batch (`server.rs` `infer_inner`).
    let max_batch = WorkerConfig::default().max_batch;
    let Ok(checked) = check_request(model, request, binary, max_batch) else {
        return;
    };
    let sample = &checked.sample;
    assert!((1..=max_batch).contains(&sample.batch));
    assert_eq!(sample.inputs.len(), model.inputs().len());
    for (ix, (data, spec)) in sample.inputs.iter().zip(model.inputs()).enumerate() {
        assert_eq!(data.datatype(), spec.datatype, "input {ix} datatype");
        assert_eq!(
            data.len(),
            sample.batch * model.item_len(ix),
            "input {ix} element count"
        );
    }
    for w in &checked.outputs {
        assert!(w.index < model.outputs().len());
    }
    match model.run_batch(&[sample]) {
        Ok(out) => assert_eq!(out.len(), 1),
        Err(e) => panic!("a checked request does not run: {e}"),
    }
}
