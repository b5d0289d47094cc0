//! The controller's traffic counts in a cluster: [`PulledLoad`] is a `dilu_control::LoadSource` fed by the
//! gateways' `GET /v1/load` reports (`dilu_api::route::LoadReport`).
//!
//! A background task polls every configured gateway each [`PullConfig::interval`] (1 s) with the bearer
//! token. Arrivals are summed over gateways into a pending window per function, which
//! [`LoadSource::take_window`] returns and resets; the queue and the requests in flight per instance are the
//! sums of the gateways' latest reports. A gateway not heard from for [`PullConfig::stale_after`] no longer
//! counts in those sums (it is down, or the network is: its requests are not coming back).
//!
//! A gateway's report takes its arrivals, so exactly one `PulledLoad` may poll a gateway: the leader
//! controller's. Arrivals in a report that is lost on the way (a timeout after the gateway answered) are lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dilu_api::route::LoadReport;
use dilu_control::{LoadSource, Window};
use tokio::task::JoinHandle;

/// The path of the gateways' load report.
pub const LOAD_PATH: &str = "/v1/load";

/// Pending arrivals nobody took for this long are dropped (a function deleted meanwhile).
const PENDING_TTL: Duration = Duration::from_secs(600);

/// Which gateways to poll, and how.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// The gateways' base URLs (`http://HOST:PORT`), one per replica.
    pub gateways: Vec<String>,
    /// The bearer token the gateways require for `GET /v1/load` (their `--token-file`), if any.
    pub token: Option<String>,
    /// Time between polls. Default 1 s.
    pub interval: Duration,
    /// The most one poll of one gateway may take. Default 1 s.
    pub timeout: Duration,
    /// A gateway's queue and in-flight counts stop counting once its last report is this old. Default 5 s.
    pub stale_after: Duration,
}

impl PullConfig {
    /// Polls `gateways` with the default timings.
    pub fn new(gateways: Vec<String>, token: Option<String>) -> PullConfig {
        PullConfig {
            gateways,
            token,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            stale_after: Duration::from_secs(5),
        }
    }
}

/// Why polling could not start.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A gateway URL is not `http://HOST[:PORT]`.
    #[error("gateway URL {url:?}: {reason} (rule: http://HOST[:PORT], no path)")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client for the gateways' load reports: {0}")]
    Client(#[source] reqwest::Error),
}

/// One gateway's latest report (arrivals taken out), and whether its last poll failed.
#[derive(Debug, Default)]
struct GatewayState {
    latest: Option<(Instant, LoadReport)>,
    failing: bool,
}

/// Counts of one function summed over gateways and not yet taken, and when some were last added.
#[derive(Debug)]
struct Pending {
    arrivals: u64,
    answered: u64,
    late: u64,
    at: Instant,
}

/// The sums over gateways: the pure part of [`PulledLoad`] (time is a parameter).
#[derive(Debug)]
struct Sums {
    gateways: Vec<GatewayState>,
    /// Counts not yet taken, per function.
    pending: BTreeMap<String, Pending>,
    stale_after: Duration,
}

impl Sums {
    fn new(gateways: usize, stale_after: Duration) -> Sums {
        Sums {
            gateways: (0..gateways).map(|_| GatewayState::default()).collect(),
            pending: BTreeMap::new(),
            stale_after,
        }
    }

    /// Adds gateway `index`'s report received at `now`.
    fn record(&mut self, index: usize, mut report: LoadReport, now: Instant) {
        for (function, load) in &mut report.functions {
            let arrivals = std::mem::take(&mut load.arrivals);
            let answered = std::mem::take(&mut load.answered);
            let late = std::mem::take(&mut load.late);
            if arrivals > 0 || answered > 0 {
                let entry = self.pending.entry(function.clone()).or_insert(Pending {
                    arrivals: 0,
                    answered: 0,
                    late: 0,
                    at: now,
                });
                entry.arrivals = entry.arrivals.saturating_add(arrivals);
                entry.answered = entry.answered.saturating_add(answered);
                entry.late = entry.late.saturating_add(late);
                entry.at = now;
            }
        }
        if let Some(g) = self.gateways.get_mut(index) {
            g.latest = Some((now, report));
            g.failing = false;
        }
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.at) < PENDING_TTL);
    }

    /// Notes that polling gateway `index` failed; whether it was the first failure in a row.
    fn failed(&mut self, index: usize) -> bool {
        self.gateways
            .get_mut(index)
            .is_some_and(|g| !std::mem::replace(&mut g.failing, true))
    }

    /// The latest reports not older than `stale_after` at `now`.
    fn fresh(&self, now: Instant) -> impl Iterator<Item = &LoadReport> {
        self.gateways.iter().filter_map(move |g| {
            let (at, report) = g.latest.as_ref()?;
            (now.saturating_duration_since(*at) <= self.stale_after).then_some(report)
        })
    }

    fn queued_now(&self, function: &str, now: Instant) -> u64 {
        self.fresh(now)
            .filter_map(|r| r.functions.get(function))
            .map(|f| f.queued_now)
            .sum()
    }

    fn in_flight(&self, function: &str, instance: &str, now: Instant) -> u64 {
        self.fresh(now)
            .filter_map(|r| r.functions.get(function)?.in_flight.get(instance))
            .sum()
    }

    /// The arrivals since the previous call (reset) and the queue now.
    fn take_window(&mut self, function: &str, now: Instant) -> Window {
        let taken = self.pending.remove(function);
        Window {
            arrivals: taken.as_ref().map_or(0, |p| p.arrivals),
            answered: taken.as_ref().map_or(0, |p| p.answered),
            late: taken.as_ref().map_or(0, |p| p.late),
            queued_now: self.queued_now(function, now),
        }
    }
}

/// Checks a gateway base URL and gives its load report's URL.
fn report_url(base: &str) -> Result<String, PullError> {
    let bad = |reason: &str| PullError::Url {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| bad("not an http:// URL"))?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains('/') || host.contains('?') || host.contains('#') {
        return Err(bad("has a path"));
    }
    Ok(format!("http://{host}{LOAD_PATH}"))
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `LoadSource` fed by polling the gateways' `GET /v1/load` (see the module documentation). Its task runs
/// on the Tokio runtime that started it and stops when it is dropped.
pub struct PulledLoad {
    sums: Arc<Mutex<Sums>>,
    _task: AbortOnDrop,
}

impl PulledLoad {
    /// Starts polling; must be called within a Tokio runtime. A URL that is not `http://HOST[:PORT]` is
    /// refused.
    pub fn start(config: PullConfig) -> Result<PulledLoad, PullError> {
        let urls = config
            .gateways
            .iter()
            .map(|g| report_url(g))
            .collect::<Result<Vec<_>, _>>()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(PullError::Client)?;
        let sums = Arc::new(Mutex::new(Sums::new(urls.len(), config.stale_after)));
        let task = tokio::spawn(poll(
            client,
            urls,
            config.token,
            config.interval,
            Arc::clone(&sums),
        ));
        Ok(PulledLoad {
            sums,
            _task: AbortOnDrop(task),
        })
    }

    fn sums(&self) -> std::sync::MutexGuard<'_, Sums> {
        self.sums.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LoadSource for PulledLoad {
    fn take_window(&self, function: &str) -> Window {
        self.sums().take_window(function, Instant::now())
    }

    fn in_flight(&self, function: &str, instance: &str) -> usize {
        let n = self.sums().in_flight(function, instance, Instant::now());
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// Polls every gateway each `interval`, all at once, and records what they report.
async fn poll(
    client: reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    interval: Duration,
    sums: Arc<Mutex<Sums>>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let polls = urls.iter().map(|url| fetch(&client, url, token.as_deref()));
        let results = futures::future::join_all(polls).await;
        let now = Instant::now();
        let mut sums = sums.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, (url, result)) in urls.iter().zip(results).enumerate() {
            match result {
                Ok(report) => {
                    if sums.gateways.get(index).is_some_and(|g| g.failing) {
                        eprintln!("dilu controller: load report from {url}: answering again");
                    }
                    sums.record(index, report, now);
                }
                Err(e) => {
                    // Logged when it starts failing, not at every poll.
                    if sums.failed(index) {
                        eprintln!("dilu controller: load report from {url}: {e}");
                    }
                }
            }
        }
    }
}

/// One `GET /v1/load`.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<LoadReport, String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        return Err(format!("HTTP {status}: {body}"));
    }
    response
        .json::<LoadReport>()
        .await
        .map_err(|e| format!("not a load report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_api::route::FunctionLoad;

    /// A function's line in a report: name, arrivals, queued, in flight per instance.
    type Line<'a> = (&'a str, u64, u64, &'a [(&'a str, u64)]);

    fn report(entries: &[Line<'_>]) -> LoadReport {
        LoadReport {
            functions: entries
                .iter()
                .map(|(f, arrivals, queued, in_flight)| {
                    (
                        f.to_string(),
                        FunctionLoad {
                            arrivals: *arrivals,
                            queued_now: *queued,
                            // Test data: every arrival answered, half of them (rounded down) late.
                            answered: *arrivals,
                            late: *arrivals / 2,
                            in_flight: in_flight.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn arrivals_add_up_over_gateways_and_polls_until_taken() {
        let t0 = Instant::now();
        let mut sums = Sums::new(2, Duration::from_secs(5));
        sums.record(0, report(&[("f", 3, 1, &[("f-0", 2)])]), t0);
        sums.record(1, report(&[("f", 4, 2, &[("f-0", 1), ("f-1", 5)])]), t0);
        let t1 = t0 + Duration::from_secs(1);
        sums.record(0, report(&[("f", 2, 0, &[("f-0", 1)])]), t1);
        assert_eq!(sums.in_flight("f", "f-0", t1), 2, "latest of each: 1 + 1");
        assert_eq!(sums.in_flight("f", "f-1", t1), 5);
        assert_eq!(sums.in_flight("f", "f-9", t1), 0);
        assert_eq!(sums.in_flight("g", "g-0", t1), 0);
        assert_eq!(
            sums.take_window("f", t1),
            Window {
                arrivals: 9,
                queued_now: 2,
                answered: 9,
                late: 1 + 2 + 1,
            }
        );
        assert_eq!(
            sums.take_window("f", t1),
            Window {
                queued_now: 2,
                ..Window::default()
            }
        );
        assert_eq!(sums.take_window("g", t1), Window::default());
    }

    #[test]
    fn a_silent_gateway_stops_counting_in_the_gauges_but_its_arrivals_stay() {
        let t0 = Instant::now();
        let mut sums = Sums::new(2, Duration::from_secs(5));
        sums.record(0, report(&[("f", 1, 1, &[("f-0", 1)])]), t0);
        sums.record(1, report(&[("f", 1, 1, &[("f-0", 1)])]), t0);
        assert!(sums.failed(1), "first failure");
        assert!(!sums.failed(1), "still failing");
        let t6 = t0 + Duration::from_secs(6);
        sums.record(0, report(&[("f", 0, 1, &[("f-0", 1)])]), t6);
        assert_eq!(sums.in_flight("f", "f-0", t6), 1);
        assert_eq!(
            sums.take_window("f", t6),
            Window {
                arrivals: 2,
                queued_now: 1,
                answered: 2,
                late: 0,
            }
        );
        sums.record(1, report(&[]), t6);
        assert!(sums.failed(1), "failing again after an answer");
    }

    #[test]
    fn untaken_arrivals_expire() {
        let t0 = Instant::now();
        let mut sums = Sums::new(1, Duration::from_secs(5));
        sums.record(0, report(&[("gone", 5, 0, &[])]), t0);
        sums.record(0, report(&[("f", 1, 0, &[])]), t0 + PENDING_TTL);
        assert_eq!(sums.take_window("gone", t0 + PENDING_TTL).arrivals, 0);
        assert_eq!(sums.take_window("f", t0 + PENDING_TTL).arrivals, 1);
    }

    #[test]
    fn gateway_urls_are_checked() {
        assert_eq!(
            report_url("http://10.0.0.1:8080/").unwrap(),
            "http://10.0.0.1:8080/v1/load"
        );
        assert_eq!(
            report_url("http://gw.dilu.svc").unwrap(),
            "http://gw.dilu.svc/v1/load"
        );
        for bad in ["https://gw:1", "gw:8080", "http://", "http://gw:1/v1/load"] {
            let err = report_url(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
