//! Dilu's instance-trace reader (`dilu_sim::instance_trace::parse_instance_trace`, the Python-literal
//! parser under it included). An accepted trace must be written back by `write_instance_trace` to text that
//! reads back to the same events.
#![no_main]
use dilu_sim::instance_trace::{parse_instance_trace, write_instance_trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(events) = parse_instance_trace(text, "fuzz.txt") else {
        return;
    };
    let written = write_instance_trace(&events);
    let again = match parse_instance_trace(&written, "written.txt") {
        Ok(again) => again,
        Err(e) => panic!("an accepted trace does not read back once written:\n{written}\n{e}"),
    };
    assert_eq!(again.len(), events.len());
    for (a, b) in again.iter().zip(&events) {
        assert_eq!(a.time_s, b.time_s);
        assert_eq!(a.action, b.action);
        assert_eq!(
            a.instance, b.instance,
            "instance changed on a write/read round trip"
        );
    }
});
