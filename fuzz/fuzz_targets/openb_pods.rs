//! The openb pod-list reader (`dilu_sim::openb::parse_openb_pods`, the CSV parser under it included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pods) = dilu_sim::openb::parse_openb_pods(text, "fuzz.csv") {
        for pod in &pods {
            assert!(!pod.name.is_empty());
            assert!(pod.line >= 2, "a pod comes after the header");
        }
    }
});
