//! The request body `sim calibrate` and `sim validate` send: the `--input` JSON as it is, or (with
//! `--binary-input`) the same tensors in the Open Inference Protocol's binary extension — a JSON header whose
//! inputs carry `parameters.binary_data_size`, then the elements as little-endian bytes, the header's length in
//! `Inference-Header-Content-Length` — as Triton's and KServe's clients send large tensors.

use anyhow::{Context, Result, bail};
use dilu_worker::Datatype;
use dilu_worker::binary::encode;
use dilu_worker::protocol::flatten;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// One inference request body and the headers it needs.
#[derive(Debug, Clone)]
pub(super) struct RequestBody {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// `Inference-Header-Content-Length` for a binary body.
    pub header_len: Option<usize>,
}

/// The header name of a binary body's JSON length.
pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

impl RequestBody {
    /// The headers this body is sent with: its content type, and a binary body's header length.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(n) = self.header_len {
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        h
    }

    /// `json` (a v2 request) sent as it is, or re-encoded with binary tensor data.
    pub fn new(json: &[u8], binary: bool) -> Result<Self> {
        if !binary {
            return Ok(RequestBody {
                bytes: json.to_vec(),
                content_type: "application/json",
                header_len: None,
            });
        }
        let request: Value = serde_json::from_slice(json).context("parsing the request body")?;
        let Some(inputs) = request["inputs"].as_array() else {
            bail!("the request body has no 'inputs' array");
        };
        let mut headers = Vec::with_capacity(inputs.len());
        let mut data = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let name = input["datatype"].as_str().unwrap_or_default();
            let Some(dt) = Datatype::parse(name) else {
                bail!("inputs[{i}].datatype = {name:?}: not a datatype the worker reads");
            };
            let (tensor, count) = flatten(&input["data"], dt, usize::MAX)
                .map_err(|e| anyhow::anyhow!("inputs[{i}].data: {e}"))?;
            let size = encode(&tensor, &mut data);
            debug_assert_eq!(size, count * dilu_worker::binary::element_size(dt));
            let mut header = input.clone();
            if let Some(h) = header.as_object_mut() {
                h.remove("data");
            }
            header["parameters"]["binary_data_size"] = json!(size);
            headers.push(header);
        }
        let mut head = request.clone();
        head["inputs"] = Value::Array(headers);
        let mut bytes =
            serde_json::to_vec(&head).context("encoding the binary request's header")?;
        let header_len = bytes.len();
        bytes.extend_from_slice(&data);
        Ok(RequestBody {
            bytes,
            content_type: "application/octet-stream",
            header_len: Some(header_len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_request_becomes_a_header_and_little_endian_bytes() {
        let json = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1.5,-2],[0,4]]}],"outputs":[{"name":"y"}]}"#;
        let b = RequestBody::new(json, true).expect("binary");
        let n = b.header_len.expect("header length");
        let head: Value = serde_json::from_slice(&b.bytes[..n]).expect("header is JSON");
        assert_eq!(head["inputs"][0]["parameters"]["binary_data_size"], 16);
        assert!(head["inputs"][0].get("data").is_none(), "{head}");
        assert_eq!(head["inputs"][0]["shape"], json!([2, 2]));
        assert_eq!(head["outputs"][0]["name"], "y");
        let floats: Vec<f32> = b.bytes[n..]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, vec![1.5, -2.0, 0.0, 4.0]);
        assert_eq!(b.content_type, "application/octet-stream");
        // As it is without the flag.
        let plain = RequestBody::new(json, false).expect("json");
        assert_eq!(
            (plain.bytes.as_slice(), plain.header_len),
            (&json[..], None)
        );
        // A datatype the worker does not read is refused by name.
        let bad = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BF16","data":[1]}]}"#;
        let e = RequestBody::new(bad, true).unwrap_err().to_string();
        assert!(e.contains("inputs[0].datatype"), "{e}");
    }
}
