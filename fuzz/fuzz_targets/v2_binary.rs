//! The worker's v2 binary-tensor path. Input: the `Inference-Header-Content-Length` value, a newline, then
//! the body (JSON header and raw tensor bytes), which goes through `binary::split`, the JSON parse and
//! `protocol::check_request` (which cuts the binary part by `binary_data_size` and `binary::decode`s it).
//! Also checks that `binary::decode` and `binary::encode` are inverses on the raw body.
#![no_main]
use dilu_worker::Datatype;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (header, body) = (&data[..newline], &data[newline + 1..]);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    dilu_fuzz::check_v2_body(body, Some(header));

    for dt in [
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Int32,
        Datatype::Int64,
    ] {
        let size = dilu_worker::binary::element_size(dt);
        match dilu_worker::binary::decode(body, dt) {
            Ok(decoded) => {
                assert_eq!(body.len() % size, 0);
                assert_eq!(decoded.len(), body.len() / size);
                let mut again = Vec::new();
                let n = dilu_worker::binary::encode(&decoded, &mut again);
                assert_eq!(n, body.len());
                assert_eq!(again, body, "decode then encode changed the bytes");
            }
            Err(_) => assert_ne!(body.len() % size, 0),
        }
    }
});
