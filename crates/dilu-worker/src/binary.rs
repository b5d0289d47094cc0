//! The binary tensor data extension of the v2 protocol (Triton's `binary_tensor_data`): a body that is a JSON
//! header followed by raw little-endian tensor bytes, the header's length given by the
//! `Inference-Header-Content-Length` HTTP header.
//!
//! Clients such as `tritonclient.http` use it by default: an input carries `parameters.binary_data_size` instead
//! of `data`, and its bytes follow the JSON in input order; an output asked for with `parameters.binary_data`
//! (or every output, with the request parameter `binary_data_output`) comes back the same way.

use crate::model::{Datatype, TensorData};

/// The HTTP header that gives the length of the JSON part of a binary body.
pub const HEADER: &str = "inference-header-content-length";

/// Splits a body into its JSON header and its binary part. `header_len` is the value of
/// [`HEADER`] when the request carried it; without it the whole body is JSON.
pub fn split<'a>(body: &'a [u8], header_len: Option<&str>) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some(raw) = header_len else {
        return Ok((body, &[]));
    };
    let len: usize = raw.trim().parse().map_err(|_| {
        format!(
            "header Inference-Header-Content-Length is '{raw}': it must be a non-negative integer"
        )
    })?;
    if len > body.len() {
        return Err(format!(
            "header Inference-Header-Content-Length is {len} but the body has only {} bytes",
            body.len()
        ));
    }
    Ok(body.split_at(len))
}

/// The size in bytes of one element of `dt`.
pub fn element_size(dt: Datatype) -> usize {
    match dt {
        Datatype::Fp32 | Datatype::Int32 => 4,
        Datatype::Fp64 | Datatype::Int64 => 8,
    }
}

/// Decodes little-endian `bytes` as elements of `dt`. The length must be a whole number of elements.
pub fn decode(bytes: &[u8], dt: Datatype) -> Result<TensorData, String> {
    let size = element_size(dt);
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "binary data of {} bytes is not a whole number of {}-byte {} elements",
            bytes.len(),
            size,
            dt.as_str()
        ));
    }
    Ok(match dt {
        Datatype::Fp32 => TensorData::Fp32(elements(bytes, f32::from_le_bytes)),
        Datatype::Int32 => TensorData::Int32(elements(bytes, i32::from_le_bytes)),
        Datatype::Fp64 => TensorData::Fp64(elements(bytes, f64::from_le_bytes)),
        Datatype::Int64 => TensorData::Int64(elements(bytes, i64::from_le_bytes)),
    })
}

/// `bytes` cut into `N`-byte elements, each read with `read` (a trailing partial element is ignored; the
/// caller checks the length).
fn elements<T, const N: usize>(bytes: &[u8], read: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            read(a)
        })
        .collect()
}

/// Appends `data`'s elements to `out` as little-endian bytes, and returns how many bytes it appended.
pub fn encode(data: &TensorData, out: &mut Vec<u8>) -> usize {
    let before = out.len();
    match data {
        TensorData::Fp32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_gives_the_same_elements() {
        let cases = [
            TensorData::Fp32(vec![1.5, -0.0, f32::MAX]),
            TensorData::Fp64(vec![std::f64::consts::PI, -2.0]),
            TensorData::Int32(vec![i32::MIN, 0, 7]),
            TensorData::Int64(vec![i64::MAX, -1]),
        ];
        for data in cases {
            let mut bytes = Vec::new();
            let n = encode(&data, &mut bytes);
            assert_eq!(n, data.len() * element_size(data.datatype()));
            assert_eq!(decode(&bytes, data.datatype()).unwrap(), data);
        }
        // Little-endian on the wire, whatever the host.
        let mut bytes = Vec::new();
        encode(&TensorData::Int32(vec![1]), &mut bytes);
        assert_eq!(bytes, [1, 0, 0, 0]);
    }

    #[test]
    fn decode_refuses_a_partial_element() {
        let err = decode(&[0, 0, 0, 0, 0], Datatype::Fp32).unwrap_err();
        assert!(
            err.contains("5 bytes") && err.contains("4-byte FP32"),
            "{err}"
        );
    }

    #[test]
    fn split_uses_the_header_length_and_checks_it() {
        let body = b"{\"a\":1}\x01\x02";
        assert_eq!(split(body, None).unwrap(), (&body[..], &b""[..]));
        assert_eq!(split(body, Some("7")).unwrap(), (&body[..7], &body[7..]));
        let err = split(body, Some("20")).unwrap_err();
        assert!(err.contains("20") && err.contains("only 9 bytes"), "{err}");
        let err = split(body, Some("-1")).unwrap_err();
        assert!(err.contains("non-negative integer"), "{err}");
    }
}
