//! The worker's v2 JSON request path: a body without `Inference-Header-Content-Length`, parsed as an
//! `InferRequest` and checked against a model (`protocol::check_request`, which flattens `data` arrays).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dilu_fuzz::check_v2_body(data, None);
});
