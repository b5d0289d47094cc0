//! The spec parser on JSON (`dilu_api::parse_spec(text, SpecFormat::Json)`, which also runs `validate()`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        dilu_fuzz::check_spec(text, dilu_api::SpecFormat::Json);
    }
});
