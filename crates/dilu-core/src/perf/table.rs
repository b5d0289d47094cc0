//! Profile tables: measured latency and throughput of one model on a (batch size × SM%) grid, and readers for
//! the two public formats we calibrate against (`docs/algorithms.md` §3).
//!
//! - Dilu (`bs_sm_<model>.csv`): no header; `batch, sm_pct, latency_s, throughput`, numbers written as
//!   decimals (`1.000000`). Latency is per batch, except for LLMs (model name containing `llama`), where it
//!   is per generated token (32 tokens per request) and throughput is requests/s. Dilu's llama2 bs=32 rows ran
//!   only 16 prompts but counted 32, overstating throughput 2x; [`parse_dilu_csv`] halves their throughput and
//!   doubles their per-token latency so that the row means "a batch of 32 takes twice as long as a batch of 16",
//!   the same reading the embedded tables use.
//! - gpulet (`inference.csv`): `model,batch,partition_pct,"throughput",thr_per_s,"latency",latency_s,ok`;
//!   latency is per batch; rows with `ok = 0` are failed runs and are skipped.

use super::PerfError;
use serde::{Deserialize, Serialize};

/// One measurement: a batch at an SM share, with its latency and throughput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProfilePoint {
    /// Batch size (samples or requests per batch), at least 1.
    pub batch: u32,
    /// SM share in percent of the GPU's SMs, 1..=100.
    pub sm_pct: u32,
    /// Latency in seconds, in the table's [`LatencyUnit`]: per batch, or per generated token.
    pub latency_s: f64,
    /// Throughput: samples per second, or requests per second for per-token tables.
    pub throughput: f64,
}

/// What a table's latency column measures; decides what a latency SLO is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyUnit {
    /// Seconds to execute one whole batch (vision and encoder models).
    PerBatch,
    /// Seconds per generated token; each request generates `tokens` tokens (LLM decoding).
    PerToken {
        /// Tokens generated per request.
        tokens: u32,
    },
}

impl LatencyUnit {
    /// How many latency units one batch execution spans: 1 per batch, `tokens` for per-token tables.
    pub fn units_per_batch(self) -> u32 {
        match self {
            LatencyUnit::PerBatch => 1,
            LatencyUnit::PerToken { tokens } => tokens,
        }
    }
}

/// A model's profile: points sorted by (batch, SM%), each at most once, never empty.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileTable {
    model: String,
    unit: LatencyUnit,
    points: Vec<ProfilePoint>,
}

/// How [`parse_dilu_csv_with`] reads a Dilu profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiluCsvOptions {
    /// What the latency column measures.
    pub unit: LatencyUnit,
    /// Rows of this batch size overstate throughput 2x (Dilu's llama2 bs=32): halve their throughput and double
    /// their latency.
    pub halve_throughput_at_batch: Option<u32>,
}

/// Tokens generated per request in Dilu's LLM profiles (`elapsed / 32 / iters`).
pub const DILU_LLM_TOKENS: u32 = 32;

impl DiluCsvOptions {
    /// The options Dilu's published profiles need: LLM tables (name contains `llama`) are per-token with 32
    /// tokens per request and their bs=32 rows corrected; everything else is per batch, as written.
    pub fn for_model(model: &str) -> Self {
        if model.to_ascii_lowercase().contains("llama") {
            DiluCsvOptions {
                unit: LatencyUnit::PerToken {
                    tokens: DILU_LLM_TOKENS,
                },
                halve_throughput_at_batch: Some(32),
            }
        } else {
            DiluCsvOptions {
                unit: LatencyUnit::PerBatch,
                halve_throughput_at_batch: None,
            }
        }
    }
}

impl ProfileTable {
    /// A table from points in any order; refuses an empty list, duplicates and out-of-range values (the
    /// error's `line` is the point's 1-based position).
    pub fn new(
        model: impl Into<String>,
        unit: LatencyUnit,
        points: Vec<ProfilePoint>,
    ) -> Result<Self, PerfError> {
        let lines: Vec<usize> = (1..=points.len()).collect();
        Self::from_lined(model.into(), unit, points, &lines)
    }

    /// Builds the table, validating each point; `lines[i]` is where point `i` came from.
    fn from_lined(
        model: String,
        unit: LatencyUnit,
        points: Vec<ProfilePoint>,
        lines: &[usize],
    ) -> Result<Self, PerfError> {
        if let LatencyUnit::PerToken { tokens: 0 } = unit {
            return Err(PerfError::Invalid {
                field: "tokens",
                value: "0".into(),
                rule: "a per-token table needs at least 1 token per request".into(),
            });
        }
        if points.is_empty() {
            return Err(PerfError::Empty { model });
        }
        let mut order: Vec<(ProfilePoint, usize)> = points
            .into_iter()
            .zip(lines.iter().copied())
            .map(|(p, line)| validate_point(&p, line).map(|()| (p, line)))
            .collect::<Result<_, _>>()?;
        order.sort_by_key(|(p, line)| (p.batch, p.sm_pct, *line));
        for w in order.windows(2) {
            let (a, b) = (&w[0].0, &w[1]);
            if a.batch == b.0.batch && a.sm_pct == b.0.sm_pct {
                return Err(PerfError::Duplicate {
                    line: b.1,
                    model,
                    batch: a.batch,
                    sm_pct: a.sm_pct,
                });
            }
        }
        Ok(ProfileTable {
            model,
            unit,
            points: order.into_iter().map(|(p, _)| p).collect(),
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// What the latency column measures.
    pub fn unit(&self) -> LatencyUnit {
        self.unit
    }

    /// All points, sorted by (batch, SM%).
    pub fn points(&self) -> &[ProfilePoint] {
        &self.points
    }

    /// The point measured at exactly this batch and SM%, if any.
    pub fn get(&self, batch: u32, sm_pct: u32) -> Option<&ProfilePoint> {
        self.points
            .binary_search_by_key(&(batch, sm_pct), |p| (p.batch, p.sm_pct))
            .ok()
            .map(|i| &self.points[i])
    }

    /// The distinct batch sizes, ascending.
    pub fn batches(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.points.iter().map(|p| p.batch).collect();
        v.dedup(); // points are sorted by batch first
        v
    }

    /// The distinct SM shares in percent, ascending.
    pub fn sm_pcts(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.points.iter().map(|p| p.sm_pct).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The largest batch in the table.
    pub fn max_batch(&self) -> u32 {
        self.points.iter().map(|p| p.batch).max().unwrap_or(0)
    }
}

/// Checks the ranges of one point.
fn validate_point(p: &ProfilePoint, line: usize) -> Result<(), PerfError> {
    let field = |field: &'static str, value: String, rule: &str| PerfError::Field {
        line,
        field,
        value,
        rule: rule.to_owned(),
    };
    if p.batch == 0 {
        return Err(field("batch", "0".into(), "must be at least 1"));
    }
    if !(1..=100).contains(&p.sm_pct) {
        return Err(field("sm_pct", p.sm_pct.to_string(), "must be in 1..=100"));
    }
    if !(p.latency_s.is_finite() && p.latency_s > 0.0) {
        return Err(field(
            "latency_s",
            p.latency_s.to_string(),
            "must be a finite number > 0",
        ));
    }
    if !(p.throughput.is_finite() && p.throughput > 0.0) {
        return Err(field(
            "throughput",
            p.throughput.to_string(),
            "must be a finite number > 0",
        ));
    }
    Ok(())
}

/// Parses a field as a finite number.
fn number(line: usize, field: &'static str, text: &str) -> Result<f64, PerfError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| PerfError::Field {
            line,
            field,
            value: text.trim().to_owned(),
            rule: "must be a finite number".into(),
        })
}

/// Parses a field as a whole number in `range` (written `4`, `4.0` or `4.000000`).
fn whole(
    line: usize,
    field: &'static str,
    text: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, PerfError> {
    let v = number(line, field, text)?;
    let err = |rule: String| PerfError::Field {
        line,
        field,
        value: text.trim().to_owned(),
        rule,
    };
    if v.fract() != 0.0 {
        return Err(err("must be a whole number".into()));
    }
    if v < f64::from(*range.start()) || v > f64::from(*range.end()) {
        return Err(err(format!(
            "must be in {}..={}",
            range.start(),
            range.end()
        )));
    }
    // In range and whole, so the cast is exact.
    Ok(v as u32)
}

/// The non-empty lines of a text with their 1-based numbers, split on commas.
fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.trim().split(',').collect()))
}

/// Parses a Dilu profile (`bs_sm_<model>.csv`) with the options Dilu's published profiles need
/// ([`DiluCsvOptions::for_model`]).
pub fn parse_dilu_csv(model: &str, text: &str) -> Result<ProfileTable, PerfError> {
    parse_dilu_csv_with(model, text, DiluCsvOptions::for_model(model))
}

/// Parses a Dilu profile with explicit options (unit, bs=32 correction).
pub fn parse_dilu_csv_with(
    model: &str,
    text: &str,
    options: DiluCsvOptions,
) -> Result<ProfileTable, PerfError> {
    let mut points = Vec::new();
    let mut lines = Vec::new();
    for (line, f) in rows(text) {
        if f.len() != 4 {
            return Err(PerfError::FieldCount {
                line,
                found: f.len(),
                expected: 4,
            });
        }
        let batch = whole(line, "batch", f[0], 1..=u32::MAX)?;
        let sm_pct = whole(line, "sm_pct", f[1], 1..=100)?;
        let mut latency_s = number(line, "latency_s", f[2])?;
        let mut throughput = number(line, "throughput", f[3])?;
        if options.halve_throughput_at_batch == Some(batch) {
            throughput /= 2.0;
            latency_s *= 2.0;
        }
        let p = ProfilePoint {
            batch,
            sm_pct,
            latency_s,
            throughput,
        };
        validate_point(&p, line)?;
        points.push(p);
        lines.push(line);
    }
    ProfileTable::from_lined(model.to_owned(), options.unit, points, &lines)
}

/// Parses gpulet's `inference.csv` into one per-batch table per model (in order of first appearance),
/// skipping failed runs (`ok = 0`). A header line starting with `model,` is ignored.
pub fn parse_gpulet_csv(text: &str) -> Result<Vec<ProfileTable>, PerfError> {
    let mut models: Vec<(String, Vec<ProfilePoint>, Vec<usize>)> = Vec::new();
    for (line, f) in rows(text) {
        if line == 1 && f.first().is_some_and(|m| m.trim() == "model") {
            continue;
        }
        if f.len() != 8 {
            return Err(PerfError::FieldCount {
                line,
                found: f.len(),
                expected: 8,
            });
        }
        let model = f[0].trim();
        if model.is_empty() {
            return Err(PerfError::Field {
                line,
                field: "model",
                value: String::new(),
                rule: "must not be empty".into(),
            });
        }
        let ok = whole(line, "ok", f[7], 0..=1)?;
        if ok == 0 {
            continue;
        }
        let p = ProfilePoint {
            batch: whole(line, "batch", f[1], 1..=u32::MAX)?,
            sm_pct: whole(line, "partition_pct", f[2], 1..=100)?,
            throughput: number(line, "throughput", f[4])?,
            latency_s: number(line, "latency_s", f[6])?,
        };
        validate_point(&p, line)?;
        match models.iter_mut().find(|(m, _, _)| m == model) {
            Some((_, points, lines)) => {
                points.push(p);
                lines.push(line);
            }
            None => models.push((model.to_owned(), vec![p], vec![line])),
        }
    }
    models
        .into_iter()
        .map(|(model, points, lines)| {
            ProfileTable::from_lined(model, LatencyUnit::PerBatch, points, &lines)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "2.000000,20.000000,0.02,100.0\n1.000000,10.000000,0.03,33.3\n\n1,20,0.02,50\n2,10,0.04,50\n";

    #[test]
    fn parses_and_sorts() {
        let t = parse_dilu_csv("resnet152", SMALL).unwrap();
        assert_eq!(t.unit(), LatencyUnit::PerBatch);
        assert_eq!(t.batches(), vec![1, 2]);
        assert_eq!(t.sm_pcts(), vec![10, 20]);
        assert_eq!(t.points()[0].batch, 1);
        assert_eq!(t.points()[0].sm_pct, 10);
        assert_eq!(t.get(2, 20).unwrap().throughput, 100.0);
        assert!(t.get(2, 30).is_none());
        assert_eq!(t.max_batch(), 2);
    }

    #[test]
    fn errors_name_line_field_value_rule() {
        let e = parse_dilu_csv("m", "1,10,0.1,10\n1,20,0.1,10\n1,120,0.1,10\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: field 'sm_pct' = \"120\": must be in 1..=100"
        );
        let e = parse_dilu_csv("m", "1,10,abc,10\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: field 'latency_s' = \"abc\"")
        );
        let e = parse_dilu_csv("m", "1.5,10,0.1,10\n").unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = parse_dilu_csv("m", "1,10,0.1\n").unwrap_err();
        assert_eq!(e.to_string(), "line 1: 3 fields, expected 4");
        let e = parse_dilu_csv("m", "1,10,-0.1,10\n").unwrap_err();
        assert!(e.to_string().contains("> 0"), "{e}");
    }

    #[test]
    fn rejects_duplicates_and_empty() {
        let e = parse_dilu_csv("m", "1,10,0.1,10\n2,10,0.1,20\n1,10,0.1,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                PerfError::Duplicate {
                    line: 3,
                    batch: 1,
                    sm_pct: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(matches!(
            parse_dilu_csv("m", "\n\n").unwrap_err(),
            PerfError::Empty { .. }
        ));
    }

    #[test]
    fn llama_bs32_rows_are_corrected() {
        let text = "16,10,0.2,2.5\n32,10,0.2,5.0\n";
        let t = parse_dilu_csv("llama2", text).unwrap();
        assert_eq!(t.unit(), LatencyUnit::PerToken { tokens: 32 });
        assert_eq!(t.get(32, 10).unwrap().throughput, 2.5);
        assert_eq!(t.get(32, 10).unwrap().latency_s, 0.4);
        assert_eq!(t.get(16, 10).unwrap().throughput, 2.5);
    }

    #[test]
    fn gpulet_skips_failed_runs_and_splits_models() {
        let text = "vgg16,1,20,throughput,220.5,latency,0.0045,1\n\
                    vgg16,2,20,throughput,300,latency,0.0066,0\n\
                    resnet50,1,20,throughput,210,latency,0.0047,1\n";
        let tables = parse_gpulet_csv(text).unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].model(), "vgg16");
        assert_eq!(tables[0].points().len(), 1);
        let e = parse_gpulet_csv("vgg16,1,20,throughput,220.5,latency,0.0045,2\n").unwrap_err();
        assert!(e.to_string().contains("field 'ok'"), "{e}");
    }
}
