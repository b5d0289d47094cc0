//! Request workloads of the serving simulator and the arrival streams generated from them.
//!
//! A [`Workload`] is the fully loaded description of one function's request arrivals (files already read,
//! builtin series already generated), so the engine never does I/O. An [`ArrivalStream`] turns it into
//! arrival times, lazily and deterministically for a seed: the engine pulls millions of arrivals, so the
//! renewal and rate-series streams keep O(1) state and never materialise the arrivals.
//!
//! The kinds follow `docs/algorithms.md` §8: Poisson, Gamma (bursty, CV > 1), per-step rate series
//! (non-homogeneous Poisson) and timestamped traces (the Azure LLM inference trace 2023).

use std::f64::consts::TAU;

use serde::{Deserialize, Serialize};

use crate::prng::Prng;

/// One function's request arrivals, with every file already loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Poisson arrivals: exponential inter-arrival gaps with mean `1 / rps`.
    Poisson {
        /// Mean arrival rate in requests per second (≥ 0).
        rps: f64,
    },
    /// A renewal process with Gamma inter-arrival gaps: mean `1 / rps`, coefficient of variation `cv`
    /// (`cv > 1` is burstier than Poisson, `cv = 1` is Poisson).
    Gamma {
        /// Mean arrival rate in requests per second (≥ 0).
        rps: f64,
        /// Coefficient of variation of the inter-arrival gaps (> 0).
        cv: f64,
    },
    /// A non-homogeneous Poisson process whose rate is piecewise constant per step:
    /// `rate(t) = scale × rates[⌊(offset_s + t) / step_s⌋]`, wrapping around when `repeat`, else 0 after the end.
    Series {
        /// Relative request rate of each step (finite, ≥ 0).
        rates: Vec<f64>,
        /// Length of one step in seconds (> 0).
        step_s: f64,
        /// Multiplier turning `rates` into requests per second (≥ 0).
        scale: f64,
        /// Series time at which the simulation starts, in seconds (≥ 0).
        offset_s: f64,
        /// Whether the series wraps around after its last step (otherwise the rate is 0 from then on).
        repeat: bool,
        /// Where the rates came from (the file as written in the scenario, or `builtin:<name>`), for reports.
        source: String,
    },
    /// Replayed arrivals at fixed offsets from the start of the simulation.
    Trace {
        /// Arrival offsets in seconds, sorted ascending (already time-scaled and shifted by the scenario).
        offsets_s: Vec<f64>,
        /// Where the arrivals came from (the file as written in the scenario), for reports.
        source: String,
    },
}

impl Workload {
    /// The scenario-file `kind` of this workload (`poisson`, `gamma`, `series` or `trace`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Workload::Poisson { .. } => "poisson",
            Workload::Gamma { .. } => "gamma",
            Workload::Series { .. } => "series",
            Workload::Trace { .. } => "trace",
        }
    }
}

/// Synthetic per-step rate shapes that stand in for the Azure-derived `bursty`, `periodic` and `sporadic`
/// series of Dilu's artifact (which we may not redistribute).
///
/// Each is generated deterministically from a seed and normalised so that its expected mean is 1.0 per
/// step: a scenario's `scale` is then (approximately) the mean request rate in requests per second when
/// `step_s` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinSeries {
    /// Two-state Markov-modulated rate: a base level with random bursts (see [`BuiltinSeries::generate`]).
    Bursty,
    /// Diurnal-like sine wave with mild noise.
    Periodic,
    /// Mostly zero with rare spikes.
    Sporadic,
}

/// Period of the `periodic` builtin series, in steps.
pub const PERIODIC_PERIOD_STEPS: u32 = 300;
/// Amplitude of the `periodic` builtin series' sine wave (its mean is 1).
pub const PERIODIC_AMPLITUDE: f64 = 0.8;
/// Half-width of the uniform noise added to each step of the `periodic` builtin series.
pub const PERIODIC_NOISE: f64 = 0.1;
/// Raw rate of the `bursty` builtin series outside bursts (before normalisation).
pub const BURSTY_BASE: f64 = 0.5;
/// Raw rate range of one burst of the `bursty` builtin series, drawn uniformly per burst (before normalisation).
pub const BURSTY_LEVEL: (f64, f64) = (3.0, 6.0);
/// Mean length of a burst of the `bursty` builtin series, in steps (geometric).
pub const BURSTY_MEAN_BURST_STEPS: f64 = 20.0;
/// Mean length of a gap between bursts of the `bursty` builtin series, in steps (geometric).
pub const BURSTY_MEAN_GAP_STEPS: f64 = 60.0;
/// Probability that a step of the `sporadic` builtin series holds a spike.
pub const SPORADIC_SPIKE_PROB: f64 = 0.05;
/// Raw height range of a `sporadic` spike, drawn uniformly (before normalisation).
pub const SPORADIC_SPIKE: (f64, f64) = (1.0, 4.0);
/// Most steps a builtin series is generated with; longer scenarios wrap around (or see 0 without `repeat`).
pub const MAX_BUILTIN_STEPS: usize = 1 << 20;

impl BuiltinSeries {
    /// All builtin shapes, in a stable order.
    pub const ALL: [BuiltinSeries; 3] = [
        BuiltinSeries::Bursty,
        BuiltinSeries::Periodic,
        BuiltinSeries::Sporadic,
    ];

    /// The name used in scenario files (`builtin: bursty`).
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinSeries::Bursty => "bursty",
            BuiltinSeries::Periodic => "periodic",
            BuiltinSeries::Sporadic => "sporadic",
        }
    }

    /// Mean of the raw shape before normalisation (the generated series is divided by it).
    ///
    /// `periodic`: 1; `bursty`: 0.75 × 0.5 + 0.25 × 4.5 = 1.5 (a quarter of the steps are in bursts);
    /// `sporadic`: 0.05 × 2.5 = 0.125.
    pub fn raw_mean(self) -> f64 {
        match self {
            BuiltinSeries::Periodic => 1.0,
            BuiltinSeries::Bursty => {
                let burst_share =
                    BURSTY_MEAN_BURST_STEPS / (BURSTY_MEAN_BURST_STEPS + BURSTY_MEAN_GAP_STEPS);
                (1.0 - burst_share) * BURSTY_BASE
                    + burst_share * (BURSTY_LEVEL.0 + BURSTY_LEVEL.1) / 2.0
            }
            BuiltinSeries::Sporadic => {
                SPORADIC_SPIKE_PROB * (SPORADIC_SPIKE.0 + SPORADIC_SPIKE.1) / 2.0
            }
        }
    }

    /// Generates `steps` per-step rates from `seed`, normalised to an expected mean of 1.0.
    ///
    /// The same seed gives the same series, and a longer series extends a shorter one (it is generated
    /// step by step). Shapes, before dividing by [`BuiltinSeries::raw_mean`]:
    /// - `periodic`: `1 + 0.8·sin(2π(i + φ)/300) + U(−0.1, 0.1)`, with a random phase `φ` in `[0, 300)`;
    /// - `bursty`: a two-state Markov chain, base 0.5 outside bursts, a level drawn from U(3, 6) per burst,
    ///   bursts and gaps of geometric length with means 20 and 60 steps (so after normalisation: base 1/3,
    ///   bursts 2–4);
    /// - `sporadic`: each step independently a spike of U(1, 4) with probability 0.05, else 0 (so after
    ///   normalisation: spikes of 8–32).
    pub fn generate(self, seed: u64, steps: usize) -> Vec<f64> {
        let mut rng = Prng::new(seed);
        let norm = 1.0 / self.raw_mean();
        let mut out = Vec::with_capacity(steps);
        match self {
            BuiltinSeries::Periodic => {
                let period = f64::from(PERIODIC_PERIOD_STEPS);
                let phase = rng.below(u64::from(PERIODIC_PERIOD_STEPS)) as f64;
                for i in 0..steps {
                    let wave = PERIODIC_AMPLITUDE * (TAU * (i as f64 + phase) / period).sin();
                    let noise = rng.uniform(-PERIODIC_NOISE, PERIODIC_NOISE);
                    out.push((1.0 + wave + noise).max(0.0) * norm);
                }
            }
            BuiltinSeries::Bursty => {
                let start_burst = 1.0 / BURSTY_MEAN_GAP_STEPS;
                let end_burst = 1.0 / BURSTY_MEAN_BURST_STEPS;
                let burst_share =
                    BURSTY_MEAN_BURST_STEPS / (BURSTY_MEAN_BURST_STEPS + BURSTY_MEAN_GAP_STEPS);
                // Start in the stationary distribution, so short series are not biased towards gaps.
                let mut burst = (rng.next_f64() < burst_share)
                    .then(|| rng.uniform(BURSTY_LEVEL.0, BURSTY_LEVEL.1));
                for _ in 0..steps {
                    out.push(burst.unwrap_or(BURSTY_BASE) * norm);
                    burst = match burst {
                        Some(level) if rng.next_f64() >= end_burst => Some(level),
                        Some(_) => None,
                        None if rng.next_f64() < start_burst => {
                            Some(rng.uniform(BURSTY_LEVEL.0, BURSTY_LEVEL.1))
                        }
                        None => None,
                    };
                }
            }
            BuiltinSeries::Sporadic => {
                for _ in 0..steps {
                    let value = if rng.next_f64() < SPORADIC_SPIKE_PROB {
                        rng.uniform(SPORADIC_SPIKE.0, SPORADIC_SPIKE.1)
                    } else {
                        0.0
                    };
                    out.push(value * norm);
                }
            }
        }
        out
    }
}

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives an independent seed for stream `index` of purpose `salt` from a scenario seed.
fn derive_seed(seed: u64, salt: u64, index: u64) -> u64 {
    mix64(mix64(seed ^ mix64(salt)) ^ index)
}

/// Salt of the seeds that drive arrival streams.
const ARRIVAL_SALT: u64 = 0x6172_7269_7661_6c73; // "arrivals"
/// Salt of the seeds that generate builtin rate series.
const BUILTIN_SALT: u64 = 0x6275_696c_7469_6e73; // "builtins"
/// Salt of the seeds that draw batch-time variation.
const SERVICE_SALT: u64 = 0x7365_7276_6963_6573; // "services"

/// The seed of function `function_index`'s batch-time variation (`service_cv`), independent of its arrivals.
pub fn service_seed(scenario_seed: u64, function_index: usize) -> u64 {
    derive_seed(scenario_seed, SERVICE_SALT, function_index as u64)
}

/// The seed to give [`ArrivalStream::new`] for function `function_index` of a scenario with `scenario_seed`.
///
/// Functions get unrelated streams, and every policy run of a scenario sees exactly the same arrivals
/// (common random numbers make the policy comparison fairer).
pub fn arrival_seed(scenario_seed: u64, function_index: usize) -> u64 {
    derive_seed(scenario_seed, ARRIVAL_SALT, function_index as u64)
}

/// The seed a builtin rate series of function `function_index` is generated from (independent of the
/// arrival seed, so the shape and the arrivals drawn on it are unrelated random streams).
pub fn builtin_series_seed(scenario_seed: u64, function_index: usize) -> u64 {
    derive_seed(scenario_seed, BUILTIN_SALT, function_index as u64)
}

/// A malformed line of a workload data file (rate series or trace): where, what, and which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: \"{value}\": {rule}", field.as_ref().map(|f| format!(", field {f}")).unwrap_or_default())]
pub struct DataLineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// The CSV column, for traces; `None` for whole-line problems.
    pub field: Option<String>,
    /// The offending text.
    pub value: String,
    /// The rule it broke.
    pub rule: String,
}

/// Parses a rate-series file: one rate per line (finite, ≥ 0), surrounding whitespace and blank lines ignored.
///
/// Returns the rates in file order; an empty file (no rates) is an error reported at line 1.
pub fn parse_rate_series(text: &str) -> Result<Vec<f64>, DataLineError> {
    let mut rates = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let value = line.trim();
        if value.is_empty() {
            continue;
        }
        let bad = |rule: &str| DataLineError {
            line: i + 1,
            field: None,
            value: value.to_owned(),
            rule: rule.to_owned(),
        };
        let rate: f64 = value
            .parse()
            .map_err(|_| bad("not a number (expected one rate per line)"))?;
        if !rate.is_finite() || rate < 0.0 {
            return Err(bad("a rate must be finite and ≥ 0"));
        }
        rates.push(rate);
    }
    if rates.is_empty() {
        return Err(DataLineError {
            line: 1,
            field: None,
            value: String::new(),
            rule: "the file holds no rates".to_owned(),
        });
    }
    Ok(rates)
}

/// One request of a timestamped trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRequest {
    /// Seconds since the earliest request of the trace (≥ 0).
    pub offset_s: f64,
    /// Prompt length in tokens.
    pub context_tokens: u64,
    /// Number of generated tokens.
    pub generated_tokens: u64,
}

/// The header every Azure LLM inference trace (2023) file starts with.
pub const AZURE_LLM_HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens";

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Number of days in `month` of `year` (Gregorian).
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a fixed-width run of ASCII digits.
fn digits(s: &str, width: usize) -> Option<i64> {
    (s.len() == width && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction]` (a `T` may replace the space) into nanoseconds since the Unix
/// epoch, or says which rule the text broke. Fractions longer than nanoseconds are truncated.
pub fn parse_timestamp_ns(text: &str) -> Result<i128, String> {
    const FORMAT: &str = "expected YYYY-MM-DD HH:MM:SS[.fraction]";
    let (date, time) = text
        .split_once([' ', 'T'])
        .ok_or_else(|| FORMAT.to_owned())?;
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(dd), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(FORMAT.to_owned());
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (Some(h), Some(mi), Some(s), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(FORMAT.to_owned());
    };
    let num = |s: &str, w: usize| digits(s, w).ok_or_else(|| FORMAT.to_owned());
    let (year, month, day) = (num(y, 4)?, num(mo, 2)?, num(dd, 2)?);
    let (hour, minute, second) = (num(h, 2)?, num(mi, 2)?, num(s, 2)?);
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not in 1..=12"));
    }
    if !(1..=days_in_month(year, month)).contains(&day) {
        return Err(format!("day {day} does not exist in {year}-{month:02}"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "time {hour:02}:{minute:02}:{second:02} is not in 00:00:00..=23:59:59"
        ));
    }
    if (time.contains('.') && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FORMAT.to_owned());
    }
    let mut nanos: i128 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i128::from(b - b'0') * 10i128.pow(8 - i as u32);
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Ok(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Parses an Azure LLM inference trace (2023) CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`.
///
/// Offsets are relative to the earliest timestamp. Rows are sorted by time (stably, so equal timestamps keep
/// file order): the published files are sorted, and a hand-edited one need not be. Errors name the line,
/// the field, the value and the rule.
pub fn parse_azure_llm_trace(text: &str) -> Result<Vec<TraceRequest>, DataLineError> {
    let records = crate::csv::parse_csv(text).map_err(|e| DataLineError {
        line: e.line,
        field: None,
        value: String::new(),
        rule: "unterminated quoted field".to_owned(),
    })?;
    let mut records = records.into_iter();
    let Some(header) = records.next() else {
        return Err(DataLineError {
            line: 1,
            field: None,
            value: String::new(),
            rule: format!("empty file; expected the header {AZURE_LLM_HEADER}"),
        });
    };
    let names: Vec<&str> = header.fields.iter().map(|f| f.trim()).collect();
    if names.join(",") != AZURE_LLM_HEADER {
        return Err(DataLineError {
            line: header.line,
            field: None,
            value: header.fields.join(","),
            rule: format!("expected the header {AZURE_LLM_HEADER}"),
        });
    }
    let mut rows: Vec<(i128, u64, u64)> = Vec::new();
    for rec in records {
        let bad = |field: &str, value: &str, rule: String| DataLineError {
            line: rec.line,
            field: Some(field.to_owned()),
            value: value.to_owned(),
            rule,
        };
        let [ts, ctx, generated] = rec.fields.as_slice() else {
            return Err(DataLineError {
                line: rec.line,
                field: None,
                value: rec.fields.join(","),
                rule: format!("expected 3 fields, found {}", rec.fields.len()),
            });
        };
        let ts = ts.trim();
        let ns = parse_timestamp_ns(ts).map_err(|rule| bad("TIMESTAMP", ts, rule))?;
        let count = |field: &str, value: &str| {
            let v = value.trim();
            v.parse::<u64>()
                .map_err(|_| bad(field, v, "expected a whole number ≥ 0".to_owned()))
        };
        rows.push((
            ns,
            count("ContextTokens", ctx)?,
            count("GeneratedTokens", generated)?,
        ));
    }
    if rows.is_empty() {
        return Err(DataLineError {
            line: header.line,
            field: None,
            value: String::new(),
            rule: "the trace holds no requests".to_owned(),
        });
    }
    rows.sort_by_key(|r| r.0);
    let first = rows[0].0;
    Ok(rows
        .into_iter()
        .map(|(ns, context_tokens, generated_tokens)| TraceRequest {
            offset_s: (ns - first) as f64 / 1e9,
            context_tokens,
            generated_tokens,
        })
        .collect())
}

/// Maps trace offsets to simulation time: `offset / time_scale − start_s`, keeping those in `[0, duration_s)`.
///
/// `time_scale = 2` replays the trace twice as fast; `start_s` skips the trace's first seconds (after
/// scaling). The result stays sorted when the input is.
pub fn trace_offsets(
    requests: &[TraceRequest],
    time_scale: f64,
    start_s: f64,
    duration_s: f64,
) -> Vec<f64> {
    requests
        .iter()
        .map(|r| r.offset_s / time_scale - start_s)
        .filter(|t| (0.0..duration_s).contains(t))
        .collect()
}

/// Standard normal variates by Marsaglia's polar method (the second variate of each pair is kept).
#[derive(Debug, Clone)]
struct Normal {
    spare: Option<f64>,
}

impl Normal {
    /// Next standard normal variate.
    fn sample(&mut self, rng: &mut Prng) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * rng.next_f64() - 1.0;
            let v = 2.0 * rng.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * m);
                return u * m;
            }
        }
    }
}

/// Gamma(shape, scale) variates by Marsaglia & Tsang (2000), with the `U^(1/shape)` boost for shape < 1.
#[derive(Debug, Clone)]
struct GammaSampler {
    /// `d = a − 1/3` for the boosted shape `a` (`shape + 1` when shape < 1).
    d: f64,
    /// `c = 1 / √(9d)`.
    c: f64,
    /// `1 / shape` when shape < 1 (the boost exponent), else `None`.
    boost: Option<f64>,
    /// Scale parameter θ (the mean is shape × θ).
    scale: f64,
    normal: Normal,
}

impl GammaSampler {
    /// A sampler of Gamma(`shape`, `scale`); both must be positive and finite.
    fn new(shape: f64, scale: f64) -> Self {
        let (a, boost) = if shape < 1.0 {
            (shape + 1.0, Some(1.0 / shape))
        } else {
            (shape, None)
        };
        let d = a - 1.0 / 3.0;
        Self {
            d,
            c: 1.0 / (9.0 * d).sqrt(),
            boost,
            scale,
            normal: Normal { spare: None },
        }
    }

    /// Next Gamma variate.
    fn sample(&mut self, rng: &mut Prng) -> f64 {
        let g = loop {
            let x = self.normal.sample(rng);
            let v = 1.0 + self.c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - rng.next_f64(); // (0, 1]
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + self.d * (1.0 - v + v.ln()) {
                break self.d * v;
            }
        };
        let g = match self.boost {
            // Gamma(a) = Gamma(a + 1) · U^(1/a), computed in log space to stay accurate for tiny shapes.
            Some(inv_shape) => {
                let u = 1.0 - rng.next_f64();
                g * (u.ln() * inv_shape).exp()
            }
            None => g,
        };
        g * self.scale
    }
}

/// An exponential variate with rate `rate` (> 0).
fn exponential(rng: &mut Prng, rate: f64) -> f64 {
    -(1.0 - rng.next_f64()).ln() / rate
}

/// State of a rate-series stream: the current time and the step it falls in.
#[derive(Debug, Clone)]
struct SeriesState {
    rng: Prng,
    rates: Vec<f64>,
    step_s: f64,
    scale: f64,
    offset_s: f64,
    repeat: bool,
    /// Current simulation time (s).
    t: f64,
    /// Absolute index of the current step (from series time 0, before wrapping).
    step: u64,
}

impl SeriesState {
    /// The rate (requests per second) of absolute step `step`, or `None` past the end without `repeat`.
    fn rate(&self, step: u64) -> Option<f64> {
        let n = self.rates.len() as u64;
        let idx = if self.repeat {
            step % n
        } else if step < n {
            step
        } else {
            return None;
        };
        Some(self.scale * self.rates[idx as usize])
    }

    /// Simulation time at which absolute step `step` ends.
    fn step_end(&self, step: u64) -> f64 {
        (step + 1) as f64 * self.step_s - self.offset_s
    }

    /// Next arrival before `duration_s`, in seconds. Per step, exponential gaps at that step's rate; at the
    /// step's end the pending gap is discarded and redrawn (exact, as the exponential is memoryless).
    fn next(&mut self, duration_s: f64) -> Option<f64> {
        while self.t < duration_s {
            let rate = self.rate(self.step)?;
            let end = self.step_end(self.step);
            if rate > 0.0 {
                let t = self.t + exponential(&mut self.rng, rate);
                if t < end {
                    self.t = t;
                    return (t < duration_s).then_some(t);
                }
            }
            self.t = self.t.max(end);
            self.step += 1;
        }
        None
    }
}

/// Where an [`ArrivalStream`]'s arrivals come from.
#[derive(Debug, Clone)]
enum Source {
    /// No (more) arrivals.
    Empty,
    /// Poisson process at `rate` per second.
    Poisson { rng: Prng, t: f64, rate: f64 },
    /// Gamma renewal process.
    Gamma {
        rng: Prng,
        t: f64,
        gamma: GammaSampler,
    },
    /// Non-homogeneous Poisson process over a rate series.
    Series(Box<SeriesState>),
    /// Fixed offsets, replayed in order.
    Trace { offsets: Vec<f64>, next: usize },
}

/// The arrival times of one function's workload, generated lazily and deterministically from a seed.
///
/// Poisson and Gamma streams are ordinary renewal processes started at time 0 (the first arrival comes one
/// gap after 0). Series streams keep the rate table and O(1) state; trace streams replay their offsets.
#[derive(Debug, Clone)]
pub struct ArrivalStream {
    duration_s: f64,
    source: Source,
}

impl ArrivalStream {
    /// Arrivals of `workload` in [0, duration_s), deterministic in `seed`.
    ///
    /// Invalid parameters (which a validated scenario never holds) give an empty stream rather than a panic:
    /// a non-positive or non-finite rate, step or duration, or an empty rate table.
    pub fn new(workload: &Workload, seed: u64, duration_s: f64) -> ArrivalStream {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let rng = Prng::new(seed);
        let source = if !positive(duration_s) {
            Source::Empty
        } else {
            match workload {
                Workload::Poisson { rps } if positive(*rps) => Source::Poisson {
                    rng,
                    t: 0.0,
                    rate: *rps,
                },
                Workload::Gamma { rps, cv } if positive(*rps) && positive(*cv) => {
                    let shape = 1.0 / (cv * cv);
                    Source::Gamma {
                        rng,
                        t: 0.0,
                        gamma: GammaSampler::new(shape, 1.0 / (rps * shape)),
                    }
                }
                Workload::Series {
                    rates,
                    step_s,
                    scale,
                    offset_s,
                    repeat,
                    ..
                } if positive(*step_s)
                    && positive(*scale)
                    && offset_s.is_finite()
                    && rates.iter().any(|r| positive(*r)) =>
                {
                    let offset_s = offset_s.max(0.0);
                    Source::Series(Box::new(SeriesState {
                        rng,
                        rates: rates.iter().map(|r| r.max(0.0)).collect(),
                        step_s: *step_s,
                        scale: *scale,
                        offset_s,
                        repeat: *repeat,
                        t: 0.0,
                        step: (offset_s / step_s).floor() as u64,
                    }))
                }
                Workload::Trace { offsets_s, .. } => {
                    let mut offsets: Vec<f64> = offsets_s
                        .iter()
                        .copied()
                        .filter(|t| (0.0..duration_s).contains(t))
                        .collect();
                    offsets.sort_by(f64::total_cmp);
                    Source::Trace { offsets, next: 0 }
                }
                _ => Source::Empty,
            }
        };
        ArrivalStream { duration_s, source }
    }

    /// Next arrival time in seconds of virtual time (non-decreasing), or `None` when there are no more.
    pub fn next_s(&mut self) -> Option<f64> {
        let duration_s = self.duration_s;
        let next = match &mut self.source {
            Source::Empty => None,
            Source::Poisson { rng, t, rate } => {
                *t += exponential(rng, *rate);
                Some(*t)
            }
            Source::Gamma { rng, t, gamma } => {
                *t += gamma.sample(rng);
                Some(*t)
            }
            Source::Series(state) => state.next(duration_s),
            Source::Trace { offsets, next } => {
                let t = offsets.get(*next).copied();
                *next += 1;
                t
            }
        };
        match next {
            Some(t) if t < duration_s => Some(t),
            _ => {
                self.source = Source::Empty;
                None
            }
        }
    }

    /// Next arrival time in nanoseconds of virtual time (non-decreasing), or None when there are no more.
    pub fn next_ns(&mut self) -> Option<u64> {
        self.next_s().map(|t| (t * 1e9).round() as u64)
    }

    /// Mean rate over [0, duration_s) implied by the spec (for sizing and reports).
    ///
    /// Poisson and Gamma: `rps`. Series: the exact integral of the piecewise-constant rate over the window,
    /// divided by its length. Trace: arrivals in the window divided by its length. 0 for an empty window.
    pub fn mean_rps(workload: &Workload, duration_s: f64) -> f64 {
        if !(duration_s.is_finite() && duration_s > 0.0) {
            return 0.0;
        }
        match workload {
            Workload::Poisson { rps } | Workload::Gamma { rps, .. } => rps.max(0.0),
            Workload::Series {
                rates,
                step_s,
                scale,
                offset_s,
                repeat,
                ..
            } => {
                if rates.is_empty() || !(step_s.is_finite() && *step_s > 0.0) {
                    return 0.0;
                }
                let start = offset_s.max(0.0);
                let area = series_cumulative(rates, *step_s, *repeat, start + duration_s)
                    - series_cumulative(rates, *step_s, *repeat, start);
                (scale.max(0.0) * area / duration_s).max(0.0)
            }
            Workload::Trace { offsets_s, .. } => {
                offsets_s
                    .iter()
                    .filter(|t| (0.0..duration_s).contains(*t))
                    .count() as f64
                    / duration_s
            }
        }
    }
}

impl Iterator for ArrivalStream {
    type Item = u64;

    /// The same as [`ArrivalStream::next_ns`].
    fn next(&mut self) -> Option<u64> {
        self.next_ns()
    }
}

/// `∫₀ˣ rates(u) du` for the unscaled step function (wrapping when `repeat`).
fn series_cumulative(rates: &[f64], step_s: f64, repeat: bool, x: f64) -> f64 {
    let n = rates.len();
    let period = n as f64 * step_s;
    let partial = |r: f64| {
        let k = ((r / step_s).floor().max(0.0) as usize).min(n);
        let whole: f64 = rates[..k].iter().map(|v| v.max(0.0)).sum::<f64>() * step_s;
        let part = rates
            .get(k)
            .map_or(0.0, |v| v.max(0.0) * (r - k as f64 * step_s));
        whole + part
    };
    if repeat {
        let cycles = (x / period).floor();
        cycles * partial(period) + partial(x - cycles * period)
    } else {
        partial(x.min(period))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn gamma_sampler_matches_mean_and_cv_for_small_and_large_shapes() {
        for (shape, scale) in [
            (0.0625, 2.0),
            (0.5, 1.0),
            (1.0, 3.0),
            (2.5, 0.4),
            (30.0, 0.1),
        ] {
            let mut g = GammaSampler::new(shape, scale);
            let mut rng = Prng::new(11);
            let xs: Vec<f64> = (0..400_000).map(|_| g.sample(&mut rng)).collect();
            assert!(xs.iter().all(|x| x.is_finite() && *x >= 0.0));
            let (mean, cv) = mean_and_cv(&xs);
            let want_cv = 1.0 / shape.sqrt();
            assert!(
                (mean / (shape * scale) - 1.0).abs() < 0.03,
                "shape {shape}: mean {mean}"
            );
            assert!(
                (cv / want_cv - 1.0).abs() < 0.04,
                "shape {shape}: cv {cv} vs {want_cv}"
            );
        }
    }

    #[test]
    fn normal_sampler_is_standard() {
        let mut n = Normal { spare: None };
        let mut rng = Prng::new(5);
        let xs: Vec<f64> = (0..200_000).map(|_| n.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn timestamps_parse_to_epoch_nanoseconds() {
        assert_eq!(parse_timestamp_ns("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(
            parse_timestamp_ns("2023-11-16 18:17:03.9799600"),
            Ok(1_700_158_623_979_960_000)
        );
        assert_eq!(
            parse_timestamp_ns("2000-02-29T23:59:59.5"),
            Ok(951_868_799_500_000_000)
        );
        assert_eq!(
            parse_timestamp_ns("2023-02-29 00:00:00"),
            Err("day 29 does not exist in 2023-02".to_owned())
        );
        assert_eq!(
            parse_timestamp_ns("2023-13-01 00:00:00"),
            Err("month 13 is not in 1..=12".to_owned())
        );
        for bad in [
            "2023-11-16",
            "2023-11-16 18:17",
            "23-11-16 18:17:03",
            "2023-11-16 18:17:03.",
            "2023-11-16 18:17:03.12a",
            "2023-11-16 18:1x:03",
        ] {
            assert!(parse_timestamp_ns(bad).is_err(), "{bad}");
        }
        assert!(parse_timestamp_ns("2023-11-16 24:00:00").is_err());
    }

    #[test]
    fn series_cumulative_integrates_wrapping_and_not() {
        let rates = [1.0, 3.0];
        assert_eq!(series_cumulative(&rates, 2.0, false, 3.0), 2.0 + 3.0);
        assert_eq!(series_cumulative(&rates, 2.0, false, 100.0), 8.0);
        assert_eq!(series_cumulative(&rates, 2.0, true, 9.0), 2.0 * 8.0 + 1.0);
        assert_eq!(series_cumulative(&rates, 2.0, true, 0.0), 0.0);
    }

    #[test]
    fn builtin_prefixes_are_stable() {
        for b in BuiltinSeries::ALL {
            let short = b.generate(3, 100);
            let long = b.generate(3, 1000);
            assert_eq!(short[..], long[..100], "{}", b.as_str());
            assert_ne!(b.generate(4, 100), short, "{}", b.as_str());
        }
    }
}
