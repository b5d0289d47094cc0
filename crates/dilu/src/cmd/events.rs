//! `dilu events [-f]`: every decision the platform took, with its reason — placements, profiling results,
//! scaling with its votes, vertical re-divisions, quota changes, exits, refusals — oldest first; `-f` keeps
//! printing them as they happen.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use dilu_api::Event;

use super::client::{ServerArgs, json_of};

/// Arguments of `dilu events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen (until interrupted).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only this function's events.
    #[arg(long)]
    function: Option<String>,
    /// Only these kinds, comma-separated: deployed, deleted, placement, refused, profiled, profiling-failed,
    /// scale-out, scale-in, cold-start, vertical, quota, roll, exit, not-ready, out-of-memory.
    #[arg(long)]
    kind: Option<String>,
    /// Only events numbered above this.
    #[arg(long)]
    since: Option<u64>,
    /// How many of the newest events to show first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = dilu_sim::instance_trace::civil_from_days(days);
    let in_day = ms % 86_400_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// One event as a line.
fn line(e: &Event, json: bool) -> String {
    if json {
        return serde_json::to_string(e).unwrap_or_default();
    }
    format!(
        "{} #{:<5} {:<16} {:<20} {}",
        utc(e.at_ms),
        e.seq,
        e.kind.as_str(),
        e.function.as_deref().unwrap_or("-"),
        e.message
    )
}

fn query(args: &EventsArgs) -> String {
    let mut q = vec![format!("limit={}", args.limit)];
    if let Some(f) = &args.function {
        q.push(format!("function={f}"));
    }
    if let Some(k) = &args.kind {
        q.push(format!("kind={k}"));
    }
    if let Some(s) = args.since {
        q.push(format!("since={s}"));
    }
    q.join("&")
}

/// Prints the events; with `--follow`, reads the server-sent-events stream until it ends.
pub fn run(args: EventsArgs) -> Result<()> {
    let stdout = std::io::stdout();
    if !args.follow {
        let v = args.server.get(&format!("/v1/events?{}", query(&args)))?;
        let events: Vec<Event> = serde_json::from_value(v["events"].clone())
            .context("reading the events the server sent")?;
        let mut out = stdout.lock();
        for e in &events {
            writeln!(out, "{}", line(e, args.json))?;
        }
        return Ok(());
    }
    let url = args
        .server
        .url(&format!("/v1/events/stream?{}", query(&args)));
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(None)
        .build()
        .context("building the HTTP client")?;
    let resp = client
        .get(&url)
        .send()
        .with_context(|| format!("GET {url} (is `dilu up` running?)"))?;
    if !resp.status().is_success() {
        return json_of(resp, "GET", &url).map(|_| ());
    }
    let mut kind = String::new();
    for text in BufReader::new(resp).lines() {
        let text = text.with_context(|| format!("reading {url}"))?;
        if let Some(k) = text.strip_prefix("event:") {
            kind = k.trim().to_string();
        } else if let Some(data) = text.strip_prefix("data:") {
            let mut out = stdout.lock();
            if kind == "lagged" {
                writeln!(out, "(missed some events: {})", data.trim())?;
            } else {
                let e: Event = serde_json::from_str(data.trim())
                    .map_err(|e| anyhow!("{url}: an event that is not one: {e}"))?;
                writeln!(out, "{}", line(&e, args.json))?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        // 2026-12-06 14:50:01.123 UTC
        assert_eq!(utc(1_796_568_601_123), "2026-12-06 14:50:01.123");
    }
}
