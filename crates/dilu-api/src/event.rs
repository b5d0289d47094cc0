//! Events: every decision the platform takes, with its reason and numbers — where an instance was placed,
//! what profiling found, why a function scaled, how a device's shares moved, which quota changed, what exited
//! and what was refused. `GET /v1/events` lists them, `GET /v1/events/stream` streams them (server-sent
//! events), `dilu events [-f]` prints them.

use serde::{Deserialize, Serialize};

/// What kind of decision an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A function was created or its spec replaced.
    Deployed,
    /// A function was deleted.
    Deleted,
    /// An instance was booked on a device.
    Placement,
    /// Nothing could be placed, or an update did not fit: the refusal and its rule.
    Refused,
    /// Profiling finished: the points measured and the quota, batch and capacity chosen.
    Profiled,
    /// Profiling failed.
    ProfilingFailed,
    /// The horizontal scaler added an instance, and why.
    ScaleOut,
    /// The horizontal scaler removed an instance, and why.
    ScaleIn,
    /// A request woke a function scaled to zero.
    ColdStart,
    /// A device's shares were re-divided: who got more, who was squeezed.
    Vertical,
    /// An instance's quota was changed.
    Quota,
    /// A function's instances are being replaced by ones of its new template.
    Roll,
    /// An instance's process ended (and is restarted, or not).
    Exit,
    /// An instance did not become ready in time.
    NotReady,
    /// An instance's memory cap refused allocations.
    OutOfMemory,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 15] = [
        EventKind::Deployed,
        EventKind::Deleted,
        EventKind::Placement,
        EventKind::Refused,
        EventKind::Profiled,
        EventKind::ProfilingFailed,
        EventKind::ScaleOut,
        EventKind::ScaleIn,
        EventKind::ColdStart,
        EventKind::Vertical,
        EventKind::Quota,
        EventKind::Roll,
        EventKind::Exit,
        EventKind::NotReady,
        EventKind::OutOfMemory,
    ];

    /// Its name on the wire (`scale-out`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Deployed => "deployed",
            EventKind::Deleted => "deleted",
            EventKind::Placement => "placement",
            EventKind::Refused => "refused",
            EventKind::Profiled => "profiled",
            EventKind::ProfilingFailed => "profiling-failed",
            EventKind::ScaleOut => "scale-out",
            EventKind::ScaleIn => "scale-in",
            EventKind::ColdStart => "cold-start",
            EventKind::Vertical => "vertical",
            EventKind::Quota => "quota",
            EventKind::Roll => "roll",
            EventKind::Exit => "exit",
            EventKind::NotReady => "not-ready",
            EventKind::OutOfMemory => "out-of-memory",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event kind {s:?}; one of {}", names.join(", "))
            })
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its number: increasing, never reused (a client resumes with `since`).
    pub seq: u64,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What kind of decision.
    pub kind: EventKind,
    /// The function it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The instance it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The decision and its reason in words, with the numbers.
    pub message: String,
    /// The numbers, for programs (device, shares, counts…).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!(
            "scale-sideways"
                .parse::<EventKind>()
                .unwrap_err()
                .contains("scale-out")
        );
    }
}
