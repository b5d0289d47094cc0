//! Reader and writer for Dilu's instance traces (`instances-N.txt`).
//!
//! Dilu's cluster simulator replays a list of serving/training instance
//! arrivals and departures. Each non-blank line is a Python `dict` literal:
//!
//! ```text
//! {'Time': '2024-06-19 15:46:09', 'Action': 'start', 'Instance': {'service_name': 'training-8bfjn3', 'type': 'training', 'gpu_num': 2, 'sm_requests': 0.55, 'sm_limits': 0.81, 'memory': [30, 30]}}
//! ```
//!
//! `memory` is GB per GPU (one entry per GPU), `sm_requests`/`sm_limits` are
//! the guaranteed and maximal fraction of a GPU's SMs. Delete lines repeat the
//! instance dict. The reader validates everything a replay relies on and
//! reports problems as `file:line: field 'name' = value: rule`; the writer
//! produces the same format byte-for-byte as Python's `repr` would, so
//! `parse(write(x)) == x`.
//!
//! Times are `YYYY-mm-dd HH:MM:SS`, interpreted as UTC and converted with a
//! small proleptic-Gregorian calendar implementation (no external date crate).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pyliteral::{PyLiteralError, PyValue, parse_py_literal};

/// How far above 1.0 an SM share may be (float round-off such as
/// `0.8 + 0.2`) before it is rejected; accepted values are clamped to 1.0.
pub const SHARE_TOLERANCE: f64 = 1e-9;

/// The workload class of an instance; decides its resource profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InstanceType {
    /// A DNN inference service (1 GPU, small memory).
    #[serde(rename = "inference")]
    Inference,
    /// A large-language-model inference service (1 GPU, large memory).
    #[serde(rename = "llm-inference")]
    LlmInference,
    /// A (multi-GPU) training job.
    #[serde(rename = "training")]
    Training,
}

impl InstanceType {
    /// All types, in the order used for reports.
    pub const ALL: [InstanceType; 3] = [
        InstanceType::Inference,
        InstanceType::LlmInference,
        InstanceType::Training,
    ];

    /// The name used in trace files (`"inference"`, `"llm-inference"`, `"training"`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceType::Inference => "inference",
            InstanceType::LlmInference => "llm-inference",
            InstanceType::Training => "training",
        }
    }

    /// Parses a trace-file type name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for InstanceType {
    /// Writes the trace-file name of the type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a trace event does to its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TraceAction {
    /// The instance arrives and must be placed.
    #[serde(rename = "start")]
    Start,
    /// The instance leaves and its resources are freed.
    #[serde(rename = "delete")]
    Delete,
}

impl TraceAction {
    /// All actions, in the order they are listed in error messages.
    pub const ALL: [TraceAction; 2] = [TraceAction::Start, TraceAction::Delete];

    /// The name used in trace files (`"start"`, `"delete"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TraceAction::Start => "start",
            TraceAction::Delete => "delete",
        }
    }

    /// Parses a trace-file action name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for TraceAction {
    /// Writes the trace-file name of the action.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance as described in a trace line (the `'Instance'` dict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceInstance {
    /// Unique name of the service/job, e.g. `training-8bfjn3`.
    pub service_name: String,
    /// Workload class (`'type'`).
    pub kind: InstanceType,
    /// Number of GPUs the instance spans (≥ 1).
    pub gpu_num: u32,
    /// Guaranteed SM fraction per GPU (`'sm_requests'`), in `[0, sm_limit]`.
    pub sm_request: f64,
    /// Maximal SM fraction per GPU (`'sm_limits'`), in `[sm_request, 1]`.
    pub sm_limit: f64,
    /// GPU memory in GB on each of its GPUs (`'memory'`, length `gpu_num`).
    pub memory_gb: Vec<f64>,
}

/// One line of an instance trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// 1-based line number in the source file (kept for error messages and reports).
    pub line: usize,
    /// Event time in seconds since the Unix epoch (UTC).
    pub time_s: i64,
    /// Whether the instance starts or is deleted.
    pub action: TraceAction,
    /// The instance the event refers to.
    pub instance: TraceInstance,
}

/// Why an instance trace could not be read. Every variant names the file and
/// (except I/O) the 1-based line, so a bad trace can be fixed directly.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{file}: cannot read trace: {source}")]
    Io {
        /// The file that failed.
        file: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The line is not a valid Python literal.
    #[error("{file}:{line}: not a Python literal: {source}")]
    Syntax {
        /// The file containing the line.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The parser's error (with column).
        #[source]
        source: PyLiteralError,
    },
    /// A required key is absent.
    #[error("{file}:{line}: field '{field}' is missing: {rule}")]
    MissingField {
        /// The file containing the line.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The missing key.
        field: String,
        /// Where the key is required.
        rule: String,
    },
    /// A field is present but its value breaks a rule.
    #[error("{file}:{line}: field '{field}' = {value}: {rule}")]
    InvalidField {
        /// The file containing the line.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The offending key.
        field: String,
        /// The value as written (Python repr).
        value: String,
        /// The rule it breaks.
        rule: String,
    },
}

/// Days since 1970-01-01 of a proleptic-Gregorian civil date
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of a day count since 1970-01-01 (the inverse of `days_from_civil`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a trace time `YYYY-mm-dd HH:MM:SS` (UTC) into seconds since the Unix epoch.
///
/// # Errors
///
/// Returns the rule that was broken, as text for a [`TraceError`] message:
/// wrong shape, or a month/day/time of day that does not exist.
pub fn parse_trace_time(text: &str) -> Result<i64, String> {
    const FORMAT: &str = "must be a UTC date-time 'YYYY-mm-dd HH:MM:SS'";
    let b = text.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(FORMAT.to_owned());
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter()
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
    };
    let (year, month, day) = (i64::from(num(0..4)), num(5..7), num(8..10));
    let (hour, minute, second) = (num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&month) {
        return Err(format!("{FORMAT}; month {month} is not in 1..=12"));
    }
    let dim = days_in_month(year, month);
    if !(1..=dim).contains(&day) {
        return Err(format!(
            "{FORMAT}; day {day} does not exist in {year:04}-{month:02} (1..={dim})"
        ));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "{FORMAT}; time of day {hour:02}:{minute:02}:{second:02} is out of range"
        ));
    }
    Ok(days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second))
}

/// Formats seconds since the Unix epoch as a trace time `YYYY-mm-dd HH:MM:SS` (UTC).
///
/// Inverse of [`parse_trace_time`] for years 0..=9999 (the only years the
/// four-digit format can hold).
pub fn format_trace_time(time_s: i64) -> String {
    let days = time_s.div_euclid(86_400);
    let secs = time_s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Per-line context for building errors.
struct LineCtx<'a> {
    file: &'a str,
    line: usize,
}

impl LineCtx<'_> {
    fn invalid(&self, field: &str, value: &PyValue, rule: impl Into<String>) -> TraceError {
        self.invalid_text(field, value.to_string(), rule)
    }

    fn invalid_text(&self, field: &str, value: String, rule: impl Into<String>) -> TraceError {
        TraceError::InvalidField {
            file: self.file.to_owned(),
            line: self.line,
            field: field.to_owned(),
            value,
            rule: rule.into(),
        }
    }

    /// Looks up a required key in `dict` (described as `within` in messages).
    fn require<'v>(
        &self,
        dict: &'v PyValue,
        field: &str,
        within: &str,
    ) -> Result<&'v PyValue, TraceError> {
        dict.get(field).ok_or_else(|| TraceError::MissingField {
            file: self.file.to_owned(),
            line: self.line,
            field: field.to_owned(),
            rule: format!("required in {within}"),
        })
    }

    fn string<'v>(
        &self,
        dict: &'v PyValue,
        field: &str,
        within: &str,
    ) -> Result<&'v str, TraceError> {
        let v = self.require(dict, field, within)?;
        v.as_str().ok_or_else(|| {
            self.invalid(field, v, format!("must be a string, not {}", v.type_name()))
        })
    }

    fn number(&self, dict: &PyValue, field: &str, within: &str) -> Result<f64, TraceError> {
        let v = self.require(dict, field, within)?;
        v.as_f64().ok_or_else(|| {
            self.invalid(field, v, format!("must be a number, not {}", v.type_name()))
        })
    }

    /// A share in `[0, 1]`; values up to `1 + SHARE_TOLERANCE` are clamped to 1.
    fn share(&self, dict: &PyValue, field: &str, within: &str) -> Result<f64, TraceError> {
        let x = self.number(dict, field, within)?;
        if !(0.0..=1.0 + SHARE_TOLERANCE).contains(&x) {
            let v = self.require(dict, field, within)?;
            return Err(self.invalid(field, v, "must be within [0, 1]"));
        }
        Ok(x.min(1.0))
    }
}

/// Parses one trace line (already known to be non-blank).
fn parse_line(ctx: &LineCtx<'_>, text: &str) -> Result<TraceEvent, TraceError> {
    let root = parse_py_literal(text).map_err(|source| TraceError::Syntax {
        file: ctx.file.to_owned(),
        line: ctx.line,
        source,
    })?;
    if !matches!(root, PyValue::Dict(_)) {
        return Err(ctx.invalid_text(
            "<line>",
            format!("a {}", root.type_name()),
            "each line must be a dict with keys 'Time', 'Action', 'Instance'",
        ));
    }
    const EVENT: &str = "each event dict";
    const INST: &str = "the 'Instance' dict";

    let time_text = ctx.string(&root, "Time", EVENT)?;
    let time_s = parse_trace_time(time_text).map_err(|rule| {
        ctx.invalid_text("Time", PyValue::Str(time_text.to_owned()).to_string(), rule)
    })?;

    let action_text = ctx.string(&root, "Action", EVENT)?;
    let action = TraceAction::from_name(action_text).ok_or_else(|| {
        let allowed: Vec<String> = TraceAction::ALL.iter().map(|a| format!("'{a}'")).collect();
        ctx.invalid_text(
            "Action",
            PyValue::Str(action_text.to_owned()).to_string(),
            format!("unknown action; allowed: {}", allowed.join(", ")),
        )
    })?;

    let inst = ctx.require(&root, "Instance", EVENT)?;
    if !matches!(inst, PyValue::Dict(_)) {
        return Err(ctx.invalid(
            "Instance",
            inst,
            format!("must be a dict, not {}", inst.type_name()),
        ));
    }

    let service_name = ctx.string(inst, "service_name", INST)?;
    if service_name.is_empty() {
        return Err(ctx.invalid_text("service_name", "''".into(), "must not be empty"));
    }

    let type_text = ctx.string(inst, "type", INST)?;
    let kind = InstanceType::from_name(type_text).ok_or_else(|| {
        let allowed: Vec<String> = InstanceType::ALL.iter().map(|t| format!("'{t}'")).collect();
        ctx.invalid_text(
            "type",
            PyValue::Str(type_text.to_owned()).to_string(),
            format!("unknown instance type; allowed: {}", allowed.join(", ")),
        )
    })?;

    let gpu_value = ctx.require(inst, "gpu_num", INST)?;
    let gpu_num = match gpu_value {
        PyValue::Int(n) if *n >= 1 => u32::try_from(*n).map_err(|_| {
            ctx.invalid(
                "gpu_num",
                gpu_value,
                format!("must be at most {}", u32::MAX),
            )
        })?,
        PyValue::Int(_) => return Err(ctx.invalid("gpu_num", gpu_value, "must be at least 1")),
        other => {
            return Err(ctx.invalid(
                "gpu_num",
                other,
                format!("must be an integer, not {}", other.type_name()),
            ));
        }
    };

    let sm_request = ctx.share(inst, "sm_requests", INST)?;
    let sm_limit = ctx.share(inst, "sm_limits", INST)?;
    if sm_request > sm_limit {
        let v = ctx.require(inst, "sm_requests", INST)?;
        return Err(ctx.invalid(
            "sm_requests",
            v,
            format!(
                "must not exceed sm_limits ({})",
                crate::pyliteral::python_float_repr(sm_limit)
            ),
        ));
    }

    let mem_value = ctx.require(inst, "memory", INST)?;
    let Some(mem_items) = mem_value.as_seq() else {
        return Err(ctx.invalid(
            "memory",
            mem_value,
            format!(
                "must be a list of GB per GPU, not {}",
                mem_value.type_name()
            ),
        ));
    };
    if mem_items.len() != gpu_num as usize {
        return Err(ctx.invalid(
            "memory",
            mem_value,
            format!(
                "must have one entry per GPU: gpu_num is {gpu_num} but the list has {}",
                mem_items.len()
            ),
        ));
    }
    let mut memory_gb = Vec::with_capacity(mem_items.len());
    for (i, item) in mem_items.iter().enumerate() {
        let field = format!("memory[{i}]");
        let gb = item.as_f64().ok_or_else(|| {
            ctx.invalid(
                &field,
                item,
                format!("must be a number of GB, not {}", item.type_name()),
            )
        })?;
        if !(gb > 0.0 && gb.is_finite()) {
            return Err(ctx.invalid(&field, item, "must be a positive, finite number of GB"));
        }
        memory_gb.push(gb);
    }

    Ok(TraceEvent {
        line: ctx.line,
        time_s,
        action,
        instance: TraceInstance {
            service_name: service_name.to_owned(),
            kind,
            gpu_num,
            sm_request,
            sm_limit,
            memory_gb,
        },
    })
}

/// Parses the text of an instance trace; `file` is only used in error messages.
///
/// Blank lines are skipped (but counted for line numbers); unknown extra keys
/// are ignored. Beyond per-line validation this checks the event stream:
/// times never decrease, a service is not started twice while running, and
/// only running services are deleted. The first problem found is returned.
///
/// # Errors
///
/// The first problem found, as a [`TraceError`] naming `file`, the line, the
/// field, its value and the rule it breaks.
pub fn parse_instance_trace(text: &str, file: &str) -> Result<Vec<TraceEvent>, TraceError> {
    let mut events = Vec::new();
    // service name -> line of its start (while running)
    let mut running: HashMap<String, usize> = HashMap::new();
    // service name -> line of its delete (after it stopped)
    let mut deleted: HashMap<String, usize> = HashMap::new();
    let mut prev: Option<(i64, usize)> = None;

    for (idx, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let ctx = LineCtx {
            file,
            line: idx + 1,
        };
        let ev = parse_line(&ctx, raw)?;

        if let Some((prev_time, prev_line)) = prev
            && ev.time_s < prev_time
        {
            return Err(ctx.invalid_text(
                "Time",
                format!("'{}'", format_trace_time(ev.time_s)),
                format!(
                    "events must be in non-decreasing time order, but line {prev_line} is at '{}'",
                    format_trace_time(prev_time)
                ),
            ));
        }
        prev = Some((ev.time_s, ev.line));

        let name = &ev.instance.service_name;
        let name_repr = || PyValue::Str(name.clone()).to_string();
        match ev.action {
            TraceAction::Start => {
                if let Some(&start_line) = running.get(name) {
                    return Err(ctx.invalid_text(
                        "service_name",
                        name_repr(),
                        format!("started again while still running (started at line {start_line})"),
                    ));
                }
                deleted.remove(name);
                running.insert(name.clone(), ev.line);
            }
            TraceAction::Delete => {
                if running.remove(name).is_none() {
                    let rule = match deleted.get(name) {
                        Some(del_line) => {
                            format!(
                                "delete of a service that is not running (already deleted at line {del_line})"
                            )
                        }
                        None => "delete of a service that was never started".to_owned(),
                    };
                    return Err(ctx.invalid_text("service_name", name_repr(), rule));
                }
                deleted.insert(name.clone(), ev.line);
            }
        }
        events.push(ev);
    }
    Ok(events)
}

/// Reads and parses an instance trace file (see [`parse_instance_trace`]).
///
/// # Errors
///
/// [`TraceError::Io`] if the file cannot be read, otherwise the errors of
/// [`parse_instance_trace`].
pub fn read_instance_trace(path: &Path) -> Result<Vec<TraceEvent>, TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        file: file.clone(),
        source,
    })?;
    parse_instance_trace(&text, &file)
}

/// A memory amount as Python would have it in the trace: whole numbers as `int`.
fn memory_value(gb: f64) -> PyValue {
    if gb.fract() == 0.0 && gb.abs() < 9.0e15 {
        PyValue::Int(gb as i64)
    } else {
        PyValue::Float(gb)
    }
}

/// The Python dict for one event, with keys in the reference order.
fn event_value(ev: &TraceEvent) -> PyValue {
    let s = |x: &str| PyValue::Str(x.to_owned());
    let inst = &ev.instance;
    PyValue::Dict(vec![
        (s("Time"), s(&format_trace_time(ev.time_s))),
        (s("Action"), s(ev.action.as_str())),
        (
            s("Instance"),
            PyValue::Dict(vec![
                (s("service_name"), s(&inst.service_name)),
                (s("type"), s(inst.kind.as_str())),
                (s("gpu_num"), PyValue::Int(i64::from(inst.gpu_num))),
                (s("sm_requests"), PyValue::Float(inst.sm_request)),
                (s("sm_limits"), PyValue::Float(inst.sm_limit)),
                (
                    s("memory"),
                    PyValue::List(inst.memory_gb.iter().map(|&gb| memory_value(gb)).collect()),
                ),
            ]),
        ),
    ])
}

/// Writes events in the trace format, one Python-dict line each, in the given order.
///
/// The output matches what Dilu's Python generator writes (`repr` of the
/// dict): single quotes, floats in Python's shortest round-trip form (`1.0`,
/// `0.42000000000000004`), whole memory sizes as integers. Each line ends with
/// `\n`. Event `line` fields are not written; parsing the output yields events
/// numbered 1, 2, ... in order, so `parse(write(x)) == x` when `x` is numbered so.
pub fn write_instance_trace(events: &[TraceEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 200);
    for ev in events {
        out.push_str(&event_value(ev).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "{'Time': '2024-06-19 15:46:09', 'Action': 'start', 'Instance': {'service_name': 'training-8bfjn3', 'type': 'training', 'gpu_num': 2, 'sm_requests': 0.55, 'sm_limits': 0.81, 'memory': [30, 30]}}";

    /// A one-line trace with `from` replaced by `to` in [`GOOD`].
    fn variant(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    }

    /// Parses `text` expecting an error; returns its message.
    fn err_msg(text: &str) -> String {
        match parse_instance_trace(text, "instances.txt") {
            Ok(evs) => panic!("expected an error, got {evs:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_mentions(msg: &str, parts: &[&str]) {
        for p in parts {
            assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
        }
    }

    #[test]
    fn time_math() {
        assert_eq!(parse_trace_time("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(parse_trace_time("2024-06-19 15:46:09"), Ok(1_718_811_969));
        assert_eq!(parse_trace_time("2000-02-29 23:59:59"), Ok(951_868_799));
        assert_eq!(parse_trace_time("1969-12-31 23:59:59"), Ok(-1));
        assert!(parse_trace_time("2023-02-29 00:00:00").is_err());
        assert!(parse_trace_time("1900-02-29 00:00:00").is_err());
        assert!(parse_trace_time("2024-13-01 00:00:00").is_err());
        assert!(parse_trace_time("2024-06-19 24:00:00").is_err());
        assert!(parse_trace_time("2024-06-19T15:46:09").is_err());
        assert!(parse_trace_time("2024-6-19 15:46:09").is_err());
        for t in [-86_401, -1, 0, 951_868_799, 1_718_811_969, 253_402_300_799] {
            assert_eq!(parse_trace_time(&format_trace_time(t)), Ok(t), "{t}");
        }
        // Every day over several centuries round-trips.
        let mut day = days_from_civil(1600, 1, 1);
        while day < days_from_civil(2401, 1, 1) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            day += 1;
        }
    }

    #[test]
    fn parses_good_line_and_round_trips() {
        let text = format!(
            "{GOOD}\n\n{}\n",
            variant("'start'", "'delete'").replace("15:46:09", "15:56:09")
        );
        let evs = parse_instance_trace(&text, "t.txt").unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].line, 1);
        assert_eq!(evs[1].line, 3);
        assert_eq!(evs[0].time_s, 1_718_811_969);
        assert_eq!(evs[1].action, TraceAction::Delete);
        let inst = &evs[0].instance;
        assert_eq!(inst.kind, InstanceType::Training);
        assert_eq!(inst.gpu_num, 2);
        assert_eq!(inst.sm_request, 0.55);
        assert_eq!(inst.sm_limit, 0.81);
        assert_eq!(inst.memory_gb, vec![30.0, 30.0]);
        let written = write_instance_trace(&evs[..1]);
        assert_eq!(written, format!("{GOOD}\n"));
    }

    #[test]
    fn limit_slightly_above_one_is_clamped() {
        let evs = parse_instance_trace(&variant("0.81", "1.0000000000000002"), "t").unwrap();
        assert_eq!(evs[0].instance.sm_limit, 1.0);
        let msg = err_msg(&variant("0.81", "1.01"));
        assert_mentions(&msg, &["instances.txt:1:", "'sm_limits'", "1.01", "[0, 1]"]);
    }

    #[test]
    fn float_memory_and_integer_shares_are_accepted() {
        let evs = parse_instance_trace(&variant("[30, 30]", "[2.5, 30]").replace("0.81", "1"), "t")
            .unwrap();
        assert_eq!(evs[0].instance.memory_gb, vec![2.5, 30.0]);
        assert_eq!(evs[0].instance.sm_limit, 1.0);
        assert!(write_instance_trace(&evs).contains("'sm_limits': 1.0, 'memory': [2.5, 30]"));
    }

    #[test]
    fn error_missing_key() {
        let msg = err_msg(&format!("{GOOD}\n{}", variant("'gpu_num': 2, ", "")));
        assert_mentions(&msg, &["instances.txt:2:", "'gpu_num'", "missing"]);
        let msg = err_msg(&variant("'Time': '2024-06-19 15:46:09', ", ""));
        assert_mentions(&msg, &["instances.txt:1:", "'Time'", "missing"]);
    }

    #[test]
    fn error_non_numeric_value() {
        let msg = err_msg(&variant("0.55", "'abc'"));
        assert_eq!(
            msg,
            "instances.txt:1: field 'sm_requests' = 'abc': must be a number, not str"
        );
        let msg = err_msg(&variant("'gpu_num': 2", "'gpu_num': 2.0"));
        assert_mentions(&msg, &["instances.txt:1:", "'gpu_num'", "2.0", "integer"]);
        let msg = err_msg(&variant("[30, 30]", "[30, 'x']"));
        assert_mentions(&msg, &["instances.txt:1:", "'memory[1]'", "'x'", "number"]);
    }

    #[test]
    fn error_negative_share() {
        let text = format!(
            "\n{GOOD}\n\n{}",
            variant("0.55", "-0.2").replace("8bfjn3", "other1")
        );
        let msg = err_msg(&text);
        assert_eq!(
            msg,
            "instances.txt:4: field 'sm_requests' = -0.2: must be within [0, 1]"
        );
    }

    #[test]
    fn error_request_above_limit() {
        let msg = err_msg(&variant("0.55", "0.9"));
        assert_eq!(
            msg,
            "instances.txt:1: field 'sm_requests' = 0.9: must not exceed sm_limits (0.81)"
        );
    }

    #[test]
    fn error_unknown_action() {
        let msg = err_msg(&variant("'start'", "'restart'"));
        assert_mentions(
            &msg,
            &[
                "instances.txt:1:",
                "'Action'",
                "'restart'",
                "'start', 'delete'",
            ],
        );
    }

    #[test]
    fn error_unknown_type() {
        let msg = err_msg(&variant("'type': 'training'", "'type': 'batch'"));
        assert_mentions(
            &msg,
            &[
                "instances.txt:1:",
                "'type'",
                "'batch'",
                "'inference', 'llm-inference', 'training'",
            ],
        );
    }

    #[test]
    fn error_gpu_num_zero() {
        let msg = err_msg(&variant("'gpu_num': 2", "'gpu_num': 0"));
        assert_mentions(
            &msg,
            &["instances.txt:1:", "'gpu_num'", "= 0", "at least 1"],
        );
    }

    #[test]
    fn error_memory_length_mismatch() {
        let msg = err_msg(&variant("[30, 30]", "[30]"));
        assert_eq!(
            msg,
            "instances.txt:1: field 'memory' = [30]: must have one entry per GPU: gpu_num is 2 but the list has 1"
        );
        let msg = err_msg(&variant("[30, 30]", "[30, 0]"));
        assert_mentions(
            &msg,
            &["instances.txt:1:", "'memory[1]'", "= 0", "positive"],
        );
    }

    #[test]
    fn error_delete_of_unknown_service() {
        let del = variant("'start'", "'delete'");
        let msg = err_msg(&del);
        assert_eq!(
            msg,
            "instances.txt:1: field 'service_name' = 'training-8bfjn3': delete of a service that was never started"
        );
        let msg = err_msg(&format!("{GOOD}\n{del}\n{del}"));
        assert_mentions(
            &msg,
            &[
                "instances.txt:3:",
                "'training-8bfjn3'",
                "already deleted at line 2",
            ],
        );
        // Restart after delete is fine.
        assert!(parse_instance_trace(&format!("{GOOD}\n{del}\n{GOOD}"), "t").is_ok());
    }

    #[test]
    fn error_second_start() {
        let msg = err_msg(&format!("{GOOD}\n{GOOD}"));
        assert_mentions(
            &msg,
            &[
                "instances.txt:2:",
                "'service_name'",
                "'training-8bfjn3'",
                "line 1",
            ],
        );
    }

    #[test]
    fn error_out_of_order_time() {
        let early = variant("15:46:09", "15:46:08").replace("8bfjn3", "zzzzzz");
        let msg = err_msg(&format!("{GOOD}\n{early}"));
        assert_eq!(
            msg,
            "instances.txt:2: field 'Time' = '2024-06-19 15:46:08': events must be in non-decreasing time order, but line 1 is at '2024-06-19 15:46:09'"
        );
    }

    #[test]
    fn error_bad_time_and_syntax() {
        let msg = err_msg(&variant("2024-06-19", "2024-02-30"));
        assert_mentions(
            &msg,
            &[
                "instances.txt:1:",
                "'Time'",
                "'2024-02-30 15:46:09'",
                "day 30",
            ],
        );
        let msg = err_msg(&format!("{GOOD}\n{{'Time': 1"));
        assert_mentions(
            &msg,
            &["instances.txt:2:", "not a Python literal", "column"],
        );
        let msg = err_msg("[1, 2]");
        assert_mentions(&msg, &["instances.txt:1:", "a list", "must be a dict"]);
    }

    #[test]
    fn read_missing_file_names_it() {
        let path = std::env::temp_dir().join("dilu-sim-definitely-missing-trace.txt");
        let err = read_instance_trace(&path).unwrap_err();
        assert!(matches!(err, TraceError::Io { .. }));
        assert!(
            err.to_string()
                .contains("dilu-sim-definitely-missing-trace.txt")
        );
    }
}
