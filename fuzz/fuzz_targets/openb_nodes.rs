//! The openb node-list reader (`dilu_sim::openb::parse_openb_nodes`, the CSV parser under it included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(nodes) = dilu_sim::openb::parse_openb_nodes(text, "fuzz.csv") {
        for node in &nodes {
            assert!(!node.name.is_empty());
            assert_eq!(node.gpu_count > 0, !node.gpu_model.is_empty());
        }
    }
});
