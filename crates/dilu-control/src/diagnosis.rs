//! Why an instance ended, in one readable line, from the end of its log.
//!
//! The end of a crashed worker's log is often its backtrace: frames and source locations that bury the cause
//! ("memory allocation of 400000000000 bytes failed") several kilobytes up. [`cause`] reads the last
//! recognisable failure report of the log and keeps what a person needs:
//!
//! | the log holds (last of them wins)                  | the cause reads                                 |
//! |----------------------------------------------------|-------------------------------------------------|
//! | a Rust panic (`thread 'main' panicked at f.rs:1:2:` and its message lines) | `panicked at f.rs:1:2: <message>` |
//! | a Rust allocation failure (`memory allocation of N bytes failed`) | that line                       |
//! | an error returned from `main` through anyhow (`Error: …` and `Caused by:` entries) | `<error>: <cause>: <cause>` |
//! | a Python traceback                                 | its exception line (`ValueError: …`)            |
//! | none of these                                      | the last line that is not backtrace noise       |
//!
//! Backtrace noise: empty lines, `stack backtrace:`, numbered frames (`  3: crate::f`), their locations
//! (`at src/f.rs:1:2`), Python's `File "…", line N` frames and Rust's `note: …` hints.

/// The most characters a cause keeps (longer ones end with `…`).
pub const MAX_CAUSE_CHARS: usize = 400;

/// What the end of a log says about why its instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A failure report: a panic, an allocation failure, an error from `main`, a Python exception.
    Report(String),
    /// No failure report: the last line that is not noise (a process killed from outside says nothing).
    LastLine(String),
}

impl Cause {
    /// The text, whichever kind.
    pub fn text(&self) -> &str {
        match self {
            Cause::Report(t) | Cause::LastLine(t) => t,
        }
    }
}

/// The readable cause of an instance's end, from the end of its log; `None` when the log has nothing but
/// noise.
pub fn cause(log: &str) -> Option<Cause> {
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end()).collect();
    if let Some(report) = (0..lines.len()).rev().find_map(|i| report_at(&lines, i)) {
        return Some(Cause::Report(clip(&report)));
    }
    lines
        .iter()
        .rev()
        .find(|l| !is_noise(l))
        .map(|l| Cause::LastLine(clip(l.trim())))
}

/// The cause a failure report starting at line `i` gives, if a report starts there.
fn report_at(lines: &[&str], i: usize) -> Option<String> {
    let line = lines[i].trim();
    let after = &lines[i + 1..];
    if line.starts_with("thread '")
        && let Some(at) = line.split_once(" panicked at ").map(|(_, at)| at)
    {
        // Since Rust 1.73 the location ends the line with `:` and the message follows on its own lines;
        // before, the line held `'message', location`.
        return Some(match at.strip_suffix(':') {
            Some(location) => {
                let message: Vec<&str> = after
                    .iter()
                    .take_while(|l| !is_noise(l))
                    .map(|l| l.trim())
                    .collect();
                if message.is_empty() {
                    format!("panicked at {location}")
                } else {
                    format!("panicked at {location}: {}", message.join(" "))
                }
            }
            None => format!("panicked at {at}"),
        });
    }
    if line.starts_with("memory allocation of ") && line.ends_with(" failed") {
        return Some(line.to_string());
    }
    if let Some(error) = line.strip_prefix("Error: ") {
        let mut chain = vec![error.trim().to_string()];
        let mut rest = after.iter().skip_while(|l| l.trim().is_empty());
        if rest.next().is_some_and(|l| l.trim() == "Caused by:") {
            for l in rest {
                if l.trim().is_empty() || !l.starts_with(char::is_whitespace) {
                    break;
                }
                chain.push(strip_index(l.trim()).to_string());
            }
        }
        return Some(chain.join(": "));
    }
    if line == "Traceback (most recent call last):" {
        // The exception line is the first after the frames that is not indented.
        return after
            .iter()
            .find(|l| !l.trim().is_empty() && !l.starts_with(char::is_whitespace))
            .map(|l| l.trim().to_string())
            .or_else(|| Some("a Python exception (its traceback is cut off)".to_string()));
    }
    None
}

/// Whether a line is backtrace noise rather than a message.
fn is_noise(line: &str) -> bool {
    let t = line.trim();
    t.is_empty()
        || t.eq_ignore_ascii_case("stack backtrace:")
        || t.starts_with("note: ")
        || t.starts_with("File \"")
        || t.starts_with("Traceback (most recent call last)")
        || is_frame(t)
        || (t.starts_with("at ") && t.contains(':'))
}

/// `12: crate::module::function` (a numbered backtrace frame).
fn is_frame(t: &str) -> bool {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && t[digits..].starts_with(": ")
}

/// `0: message` → `message` (anyhow numbers the causes when there are several).
fn strip_index(t: &str) -> &str {
    if is_frame(t) {
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        &t[digits + 2..]
    } else {
        t
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_CAUSE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of a failure report found in `log`.
    fn report(log: &str) -> String {
        match cause(log) {
            Some(Cause::Report(text)) => text,
            other => panic!("no report in {log:?}: {other:?}"),
        }
    }

    /// The last line `log` falls back to.
    fn last_line(log: &str) -> String {
        match cause(log) {
            Some(Cause::LastLine(text)) => text,
            other => panic!("expected the last line of {log:?}: {other:?}"),
        }
    }

    /// `RUST_BACKTRACE=1`, Rust 1.90: the message on its own line after the location.
    const PANIC_WITH_BACKTRACE: &str = "\
dilu worker: serving ocr on 127.0.0.1:40001
thread 'main' (12560) panicked at crates/dilu-worker/src/model.rs:42:9:
model file /m/x.onnx is corrupt: invalid protobuf wire type 7
stack backtrace:
   0: std::panicking::begin_panic::<&str>
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/panicking.rs:761:5
   1: dilu_worker::model::load
             at ./crates/dilu-worker/src/model.rs:42:9
   2: dilu::main
             at ./crates/dilu/src/main.rs:62:5
   3: core::ops::function::FnOnce::call_once
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/ops/function.rs:250:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
";

    const ALLOC_FAILURE: &str = "\
memory allocation of 400000000000 bytes failed
stack backtrace:
   0: std::alloc::rust_oom
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:424:5
   1: __rustc::__rust_alloc_error_handler
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:423:1
   9: p::main
             at ./p.rs:2:96
  10: core::ops::function::FnOnce::call_once
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/ops/function.rs:250:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
";

    const PYTHON_TRACEBACK: &str = "\
INFO:     Started server process [311]
Traceback (most recent call last):
  File \"/srv/serve.py\", line 41, in <module>
    main()
  File \"/srv/serve.py\", line 37, in main
    session = ort.InferenceSession(args.model)
  File \"/usr/lib/python3/site-packages/onnxruntime/capi/session.py\", line 419, in __init__
    raise fail
onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile: [ONNXRuntimeError] : 3 : NO_SUCHFILE : Load model from /m/x.onnx failed. File doesn't exist
";

    #[test]
    fn a_rust_panic_with_a_backtrace_gives_its_message_and_location() {
        assert_eq!(
            report(PANIC_WITH_BACKTRACE),
            "panicked at crates/dilu-worker/src/model.rs:42:9: \
             model file /m/x.onnx is corrupt: invalid protobuf wire type 7"
        );
        // Without a backtrace, and in the format before Rust 1.73.
        assert_eq!(
            report(
                "thread 'tokio-runtime-worker' panicked at src/a.rs:1:2:\nboom\nnote: run with `RUST_BACKTRACE=1` \
                 environment variable to display a backtrace\n"
            ),
            "panicked at src/a.rs:1:2: boom"
        );
        assert_eq!(
            report("thread 'main' panicked at 'boom', src/a.rs:1:2\n"),
            "panicked at 'boom', src/a.rs:1:2"
        );
    }

    #[test]
    fn an_allocation_failure_beats_the_frames_after_it() {
        assert_eq!(
            report(ALLOC_FAILURE),
            "memory allocation of 400000000000 bytes failed"
        );
        // The frames alone (the report cut off) still give no frame as the cause.
        let frames = &ALLOC_FAILURE[ALLOC_FAILURE.find("stack").unwrap()..];
        assert_eq!(cause(frames), None);
    }

    #[test]
    fn a_python_traceback_gives_its_exception_line() {
        assert_eq!(
            report(PYTHON_TRACEBACK),
            "onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile: [ONNXRuntimeError] : 3 : NO_SUCHFILE : \
             Load model from /m/x.onnx failed. File doesn't exist"
        );
        // Chained exceptions: the last traceback's exception.
        let chained = "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n    f()\n\
                       KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n\
                       Traceback (most recent call last):\n  File \"a.py\", line 3, in <module>\n    g()\n\
                       RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n";
        assert_eq!(
            report(chained),
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        );
    }

    #[test]
    fn an_error_from_main_gives_its_chain() {
        let log = "Error: loading the model /m/x.onnx\n\nCaused by:\n    0: parsing the graph\n    \
                   1: unsupported operator NonMaxSuppression\n\nStack backtrace:\n   0: anyhow::error::<impl \
                   anyhow::Error>::msg\n             at /cargo/anyhow-1.0/src/error.rs:83:36\n";
        assert_eq!(
            report(log),
            "loading the model /m/x.onnx: parsing the graph: unsupported operator NonMaxSuppression"
        );
        assert_eq!(
            report("Error: listening on 127.0.0.1:9: Address already in use (os error 98)\n"),
            "listening on 127.0.0.1:9: Address already in use (os error 98)"
        );
        assert_eq!(report("Error: a\n\nCaused by:\n    b\n"), "a: b");
    }

    #[test]
    fn the_last_report_wins_and_other_logs_give_their_last_line() {
        // A crash loop appends: the latest crash is the one that matters.
        let log = format!("{ALLOC_FAILURE}restarting\n{PANIC_WITH_BACKTRACE}");
        assert!(report(&log).starts_with("panicked at crates/dilu-worker"));
        let log = format!("{PANIC_WITH_BACKTRACE}{ALLOC_FAILURE}");
        assert_eq!(
            report(&log),
            "memory allocation of 400000000000 bytes failed"
        );
        assert_eq!(
            last_line(
                "starting\nterminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n\n"
            ),
            "what():  std::bad_alloc"
        );
        assert_eq!(cause(""), None);
        assert_eq!(cause("\n  \n"), None);
        let long = "x".repeat(1000);
        let clipped = last_line(&long);
        assert_eq!(clipped.chars().count(), MAX_CAUSE_CHARS + 1);
        assert!(clipped.ends_with('…'));
        // A multi-byte character at the cut.
        assert!(last_line(&"é".repeat(500)).ends_with('…'));
        // A process killed from outside leaves no report: its last line is only that.
        assert_eq!(
            cause("dilu train listening on http://127.0.0.1:4000\n"),
            Some(Cause::LastLine(
                "dilu train listening on http://127.0.0.1:4000".into()
            ))
        );
    }
}
