//! Names of the policies: Dilu and the baselines it is compared with (`docs/policies.md`).
//!
//! Scenario files, `dilu up --policy`, the command line and reports all refer to a policy by the kebab-case
//! name returned by [`PolicyName::as_str`]; this module is the one table of those names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A policy: how devices are shared between function instances and how they scale, in the simulator and
/// on the live platform alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
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
    /// Dilu with a queue-aware token manager (`slack`): inference gets SM time ahead of training as soon as
    /// its oldest queued request eats into its SLO, training everything else.
    #[serde(rename = "dilu-slo")]
    DiluSlo,
}

impl PolicyName {
    /// All policies in a stable order (the default `policies` list of a scenario).
    pub const ALL: [PolicyName; 7] = [
        PolicyName::Dilu,
        PolicyName::Exclusive,
        PolicyName::Infless,
        PolicyName::FastGShare,
        PolicyName::Tgs,
        PolicyName::Has,
        PolicyName::DiluSlo,
    ];

    /// The name used in scenario files, on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Dilu => "dilu",
            PolicyName::Exclusive => "exclusive",
            PolicyName::Infless => "infless",
            PolicyName::FastGShare => "fast-gshare",
            PolicyName::Tgs => "tgs",
            PolicyName::Has => "has",
            PolicyName::DiluSlo => "dilu-slo",
        }
    }

    /// The valid names joined by `", "`, for error messages.
    pub fn valid_names() -> String {
        PolicyName::ALL.map(PolicyName::as_str).join(", ")
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a serving policy; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{0}'; valid: dilu, exclusive, infless, fast-gshare, tgs, has, dilu-slo")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyName {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for p in PolicyName::ALL {
            assert_eq!(p.as_str().parse::<PolicyName>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<PolicyName>(&json).unwrap(), p);
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "fast".parse::<PolicyName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unknown policy 'fast'; valid: {}",
                PolicyName::valid_names()
            )
        );
        assert_eq!(
            PolicyName::valid_names(),
            "dilu, exclusive, infless, fast-gshare, tgs, has, dilu-slo"
        );
    }
}
