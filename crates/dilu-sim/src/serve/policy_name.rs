//! Names of the serving policies the simulator compares (Dilu and its baselines, `docs/dilu.md` §1 and §10).
//!
//! Scenario files, the command line and reports all refer to a policy by the kebab-case name returned by
//! [`ServePolicy::as_str`]; this module is the one table of those names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A serving policy: how GPUs are shared between function instances and how they scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServePolicy {
    /// Dilu: complementary placement, RCKM token manager (vertical), lazy scale-out/in (horizontal).
    Dilu,
    /// One whole GPU per instance, no sharing (Kubernetes' default device plugin).
    Exclusive,
    /// INFless: static SM partitions sized by a profiled batch/quota configuration.
    Infless,
    /// FaST-GShare: MPS SM partition plus time tokens in a sliding window.
    #[serde(rename = "fast-gshare")]
    FastGShare,
    /// TGS: transparent co-location with adaptive rate control for opportunistic jobs.
    Tgs,
    /// HAS-GPU: vertical-first hybrid autoscaling over SM partition and time quota.
    Has,
}

impl ServePolicy {
    /// All policies in a stable order (the default `policies` list of a scenario).
    pub const ALL: [ServePolicy; 6] = [
        ServePolicy::Dilu,
        ServePolicy::Exclusive,
        ServePolicy::Infless,
        ServePolicy::FastGShare,
        ServePolicy::Tgs,
        ServePolicy::Has,
    ];

    /// The name used in scenario files, on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ServePolicy::Dilu => "dilu",
            ServePolicy::Exclusive => "exclusive",
            ServePolicy::Infless => "infless",
            ServePolicy::FastGShare => "fast-gshare",
            ServePolicy::Tgs => "tgs",
            ServePolicy::Has => "has",
        }
    }

    /// The valid names joined by `", "`, for error messages.
    pub fn valid_names() -> String {
        ServePolicy::ALL.map(ServePolicy::as_str).join(", ")
    }
}

impl fmt::Display for ServePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a serving policy; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown serving policy '{0}'; valid: dilu, exclusive, infless, fast-gshare, tgs, has")]
pub struct UnknownServePolicy(pub String);

impl FromStr for ServePolicy {
    type Err = UnknownServePolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownServePolicy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for p in ServePolicy::ALL {
            assert_eq!(p.as_str().parse::<ServePolicy>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<ServePolicy>(&json).unwrap(), p);
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "fast".parse::<ServePolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unknown serving policy 'fast'; valid: {}",
                ServePolicy::valid_names()
            )
        );
        assert_eq!(
            ServePolicy::valid_names(),
            "dilu, exclusive, infless, fast-gshare, tgs, has"
        );
    }
}
