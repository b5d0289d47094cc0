//! The policy registry: each policy name selects one bundle of components, and the simulator, the node
//! agent and the control plane all build their components from it, so a name means the same code everywhere
//! (`docs/policies.md`).
//!
//! | policy | placer | vertical controller | horizontal scaler | inference quota | training quota |
//! |---|---|---|---|---|---|
//! | `dilu` | `dilu` (2D complementary best-fit) | `rckm` | `lazy` | request..limit | request..limit |
//! | `exclusive` | `exclusive` (whole device) | `static-spatial` | `kpa` | whole device | whole device |
//! | `infless` | `infless-l` (SM best-fit) | `static-spatial` | `infless` | request, fixed | request, fixed |
//! | `fast-gshare` | `infless-r` (SM·time best-fit) | `static-temporal` | `fast-gshare` | partition = request | request..limit |
//! | `tgs` | `tgs` (one inference + one training per device) | `tgs` | `kpa` | whole device | opportunistic |
//! | `has` | `has` (≤ 2 SM rows) | `static-temporal` | `has` (vertical-first) | partition = request | request..limit |
//! | `dilu-slo` | `dilu` | `slack` (queue-aware) | `lazy-slo` (lazy + SLO escape) | request..limit | request..limit |
//!
//! Besides the components, a bundle fixes two rules shared by every policy: how a controller's grants become
//! the shares residents may use ([`crate::scaling::share::device_shares`]), and how profiling turns
//! measurements into a limit ([`crate::profiler::knee::limit_knee`] at [`LIMIT_KNEE_FRACTION`]).

mod name;
mod parameters;
mod quota;

pub use name::{PolicyName, UnknownPolicy};
pub use parameters::PolicyParameters;
pub use quota::InstanceQuota;

use serde::Serialize;

use crate::error::FieldError;
use crate::placement::{DiluParams, DiluPlacer, Placer, PlacerName, serving_placer};
use crate::profiler::quota::{InferenceQuota, LIMIT_KNEE_FRACTION, TrainingQuota};
use crate::scaling::{
    FastGShareScaler, HasScaler, HorizontalScaler, InflessScaler, KpaScaler, LazyConfig,
    LazyScaler, LazySloScaler, Rckm, ShareMode, SlackGuard, StaticShares, TgsRate,
    VerticalController,
};

/// Which vertical controller a policy runs on every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerticalKind {
    /// Dilu's token manager (bursts squeeze training, idle inference releases the device).
    Rckm,
    /// Fixed shares: partition = limit, guarantee = request (MPS percentages).
    StaticSpatial,
    /// Fixed time shares of a partition (FaST-GShare / HAS-GPU time tokens).
    StaticTemporal,
    /// TGS's adaptive rate control of the opportunistic (training) resident.
    Tgs,
    /// The queue-aware token manager: inference ahead of training once its oldest request eats into its SLO.
    Slack,
}

/// Which horizontal scaler a policy runs per function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HorizontalKind {
    /// Dilu's lazy scaler (a 40-sample window).
    Lazy,
    /// The lazy vote plus an escape for intervals that miss the SLO (`dilu-slo`).
    LazySlo,
    /// Knative's KPA (stable and panic windows).
    Kpa,
    /// INFless's reactive scaler with keep-alive.
    Infless,
    /// FaST-GShare's autoscaler.
    FastGShare,
    /// HAS-GPU's vertical-first hybrid scaler.
    Has,
}

/// How a policy turns a profiled quota into what one instance is charged and granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaRule {
    /// Charged and granted request..limit.
    RequestToLimit,
    /// Charged request..limit, granted the whole device.
    WholeDevice,
    /// Charged and granted the request as a fixed share (limit = request).
    FixedRequest,
    /// An SM partition equal to the request at the full time quota (HAS-GPU's starting point).
    PartitionAtRequest,
    /// Charged request..limit, guaranteed its request, and free to use the whole device when the others
    /// leave it idle (TGS's opportunistic job, whose rate the controller sets).
    Opportunistic,
}

/// The names of the components a policy selects, as they report themselves; what `dilu up` and the simulator
/// print, and what the registry test compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Components {
    /// The policy.
    pub policy: &'static str,
    /// The placer's name.
    pub placer: &'static str,
    /// The vertical controller's name.
    pub vertical: &'static str,
    /// The horizontal scaler's name.
    pub horizontal: &'static str,
    /// The inference quota rule.
    pub inference_quota: QuotaRule,
    /// The training quota rule.
    pub training_quota: QuotaRule,
    /// The grant → share rule.
    pub share_rule: &'static str,
    /// The fraction of the best throughput that defines the limit knee.
    pub knee_fraction: f64,
}

/// A policy: its name, its parameters and the components they select.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    name: PolicyName,
    parameters: PolicyParameters,
}

impl Policy {
    /// The policy `name` with `parameters`, checked.
    pub fn new(name: PolicyName, parameters: PolicyParameters) -> Result<Policy, FieldError> {
        parameters.validate()?;
        Ok(Policy { name, parameters })
    }

    /// The policy `name` with its published parameters.
    pub fn named(name: PolicyName) -> Policy {
        Policy {
            name,
            parameters: PolicyParameters::default(),
        }
    }

    /// Its name.
    pub fn name(&self) -> PolicyName {
        self.name
    }

    /// Its parameters.
    pub fn parameters(&self) -> &PolicyParameters {
        &self.parameters
    }

    /// The placer it places with.
    pub fn placer_name(&self) -> PlacerName {
        match self.name {
            PolicyName::Dilu | PolicyName::DiluSlo => PlacerName::Dilu,
            PolicyName::Exclusive => PlacerName::Exclusive,
            PolicyName::Infless => PlacerName::InflessL,
            PolicyName::FastGShare => PlacerName::InflessR,
            PolicyName::Tgs => PlacerName::Tgs,
            PolicyName::Has => PlacerName::Has,
        }
    }

    /// The vertical controller it runs per device.
    pub fn vertical_kind(&self) -> VerticalKind {
        match self.name {
            PolicyName::Dilu => VerticalKind::Rckm,
            PolicyName::Exclusive | PolicyName::Infless => VerticalKind::StaticSpatial,
            PolicyName::FastGShare | PolicyName::Has => VerticalKind::StaticTemporal,
            PolicyName::Tgs => VerticalKind::Tgs,
            PolicyName::DiluSlo => VerticalKind::Slack,
        }
    }

    /// The horizontal scaler it runs per function.
    pub fn horizontal_kind(&self) -> HorizontalKind {
        match self.name {
            PolicyName::Dilu => HorizontalKind::Lazy,
            PolicyName::DiluSlo => HorizontalKind::LazySlo,
            PolicyName::Exclusive | PolicyName::Tgs => HorizontalKind::Kpa,
            PolicyName::Infless => HorizontalKind::Infless,
            PolicyName::FastGShare => HorizontalKind::FastGShare,
            PolicyName::Has => HorizontalKind::Has,
        }
    }

    /// The rule for inference instances.
    pub fn inference_rule(&self) -> QuotaRule {
        match self.name {
            PolicyName::Dilu | PolicyName::DiluSlo => QuotaRule::RequestToLimit,
            PolicyName::Exclusive | PolicyName::Tgs => QuotaRule::WholeDevice,
            PolicyName::Infless => QuotaRule::FixedRequest,
            // FaST-GShare's pod is (SM partition, quota request, quota limit 1.0) and its autoscaler counts the
            // throughput profiled at that configuration; the most efficient one meeting the SLO is the request
            // as the partition at the full quota (`docs/baselines.md`). HAS-GPU starts from the same one.
            PolicyName::FastGShare | PolicyName::Has => QuotaRule::PartitionAtRequest,
        }
    }

    /// The rule for training instances (per device of a job).
    pub fn training_rule(&self) -> QuotaRule {
        match self.name {
            PolicyName::Exclusive => QuotaRule::WholeDevice,
            PolicyName::Infless => QuotaRule::FixedRequest,
            PolicyName::Tgs => QuotaRule::Opportunistic,
            _ => QuotaRule::RequestToLimit,
        }
    }

    /// A new placer. Every serving placer is deterministic and needs nothing but Dilu's constants.
    pub fn placer(&self) -> Box<dyn Placer> {
        // Every policy places with a serving placer; Dilu's stands in should that ever change.
        serving_placer(self.placer_name(), DiluParams::default())
            .unwrap_or_else(|| Box::new(DiluPlacer::new(DiluParams::default())))
    }

    /// A new vertical controller for one device.
    pub fn vertical(&self) -> Box<dyn VerticalController> {
        match self.vertical_kind() {
            VerticalKind::Rckm => Box::new(Rckm::new(self.parameters.rckm)),
            VerticalKind::StaticSpatial => Box::new(StaticShares::new(ShareMode::Spatial)),
            VerticalKind::StaticTemporal => Box::new(StaticShares::new(ShareMode::Temporal)),
            VerticalKind::Tgs => Box::new(TgsRate::new(self.parameters.tgs)),
            VerticalKind::Slack => Box::new(SlackGuard::new(self.parameters.slack)),
        }
    }

    /// A new horizontal scaler for one function. `lazy` overrides the lazy scaler's settings for that
    /// function (a function spec's `scaling.lazy`); the other scalers take the policy's parameters.
    pub fn horizontal(
        &self,
        lazy: Option<LazyConfig>,
    ) -> Result<Box<dyn HorizontalScaler>, FieldError> {
        let p = &self.parameters;
        Ok(match self.horizontal_kind() {
            HorizontalKind::Lazy => Box::new(LazyScaler::new(lazy.unwrap_or(p.lazy))?),
            HorizontalKind::LazySlo => {
                Box::new(LazySloScaler::new(lazy.unwrap_or(p.lazy), p.lazy_slo)?)
            }
            HorizontalKind::Kpa => Box::new(KpaScaler::new(p.kpa)?),
            HorizontalKind::Infless => Box::new(InflessScaler::new(p.infless)?),
            HorizontalKind::FastGShare => Box::new(FastGShareScaler::new(p.fast_gshare)?),
            HorizontalKind::Has => Box::new(HasScaler::new(p.has)?),
        })
    }

    /// What one instance of an inference function with profiled quota `q` is charged and granted.
    pub fn inference_quota(&self, q: &InferenceQuota) -> InstanceQuota {
        let (request, limit) = (q.sm_request, q.sm_limit.max(q.sm_request));
        let terms = match self.inference_rule() {
            QuotaRule::RequestToLimit => InstanceQuota::spatial(request, limit, q.capacity_rps),
            QuotaRule::WholeDevice => InstanceQuota {
                grant_request: 1.0,
                grant_limit: 1.0,
                ..InstanceQuota::spatial(request, limit, q.capacity_full_rps)
            },
            QuotaRule::FixedRequest => InstanceQuota::spatial(request, request, q.capacity_rps),
            QuotaRule::Opportunistic => InstanceQuota {
                grant_limit: 1.0,
                ..InstanceQuota::spatial(request, limit, q.capacity_rps)
            },
            QuotaRule::PartitionAtRequest => InstanceQuota {
                grant_limit: request,
                ..InstanceQuota::spatial(request, request, q.capacity_rps)
            },
        };
        terms.with_profile(q.batch, q.capacity_full_rps)
    }

    /// What one device of a training job with quota `t` is charged and granted.
    pub fn training_quota(&self, t: &TrainingQuota) -> InstanceQuota {
        let (request, limit) = (t.sm_request, t.sm_limit.max(t.sm_request));
        match self.training_rule() {
            QuotaRule::WholeDevice => InstanceQuota {
                grant_request: 1.0,
                grant_limit: 1.0,
                ..InstanceQuota::spatial(request, limit, 0.0)
            },
            QuotaRule::FixedRequest | QuotaRule::PartitionAtRequest => {
                InstanceQuota::spatial(request, request, 0.0)
            }
            QuotaRule::RequestToLimit => InstanceQuota::spatial(request, limit, 0.0),
            QuotaRule::Opportunistic => InstanceQuota {
                grant_limit: 1.0,
                ..InstanceQuota::spatial(request, limit, 0.0)
            },
        }
    }

    /// The components this policy selects, named as they name themselves.
    pub fn components(&self) -> Components {
        let horizontal = self
            .horizontal(None)
            .map(|s| s.name())
            .unwrap_or("(invalid parameters)");
        Components {
            policy: self.name.as_str(),
            placer: self.placer().name(),
            vertical: self.vertical().name(),
            horizontal,
            inference_quota: self.inference_rule(),
            training_quota: self.training_rule(),
            share_rule: crate::scaling::share::RULE_NAME,
            knee_fraction: LIMIT_KNEE_FRACTION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiled() -> InferenceQuota {
        InferenceQuota {
            batch: 4,
            sm_request: 0.2,
            sm_limit: 0.5,
            capacity_rps: 40.0,
            capacity_full_rps: 120.0,
        }
    }

    #[test]
    fn every_name_selects_components_that_report_the_documented_names() {
        let expected = [
            ("dilu", "dilu", "rckm", "lazy"),
            ("exclusive", "exclusive", "static-spatial", "kpa"),
            ("infless", "infless-l", "static-spatial", "infless"),
            ("fast-gshare", "infless-r", "static-temporal", "fast-gshare"),
            ("tgs", "tgs", "tgs", "kpa"),
            ("has", "has", "static-temporal", "has"),
            ("dilu-slo", "dilu", "slack", "lazy-slo"),
        ];
        for (name, placer, vertical, horizontal) in expected {
            let p = Policy::named(name.parse().unwrap());
            let c = p.components();
            assert_eq!(
                (c.policy, c.placer, c.vertical, c.horizontal),
                (name, placer, vertical, horizontal)
            );
        }
    }

    #[test]
    fn quota_rules_charge_and_grant_as_documented() {
        let q = profiled();
        let dilu = Policy::named(PolicyName::Dilu).inference_quota(&q);
        assert_eq!((dilu.charge_request, dilu.charge_limit), (200, 500));
        assert_eq!((dilu.grant_request, dilu.grant_limit), (0.2, 0.5));
        assert_eq!(dilu.capacity_rps, 40.0);
        let exclusive = Policy::named(PolicyName::Exclusive).inference_quota(&q);
        assert_eq!((exclusive.grant_request, exclusive.grant_limit), (1.0, 1.0));
        assert_eq!(exclusive.capacity_rps, 120.0);
        let infless = Policy::named(PolicyName::Infless).inference_quota(&q);
        assert_eq!((infless.charge_limit, infless.grant_limit), (200, 0.2));
        let has = Policy::named(PolicyName::Has).inference_quota(&q);
        assert_eq!(
            (has.grant_request, has.grant_limit, has.time_quota),
            (0.2, 0.2, 1.0)
        );
        let t = TrainingQuota {
            sm_request: 0.4,
            sm_limit: 0.7,
        };
        let tgs = Policy::named(PolicyName::Tgs).training_quota(&t);
        assert_eq!((tgs.grant_request, tgs.grant_limit), (0.4, 1.0));
        assert_eq!((tgs.charge_request, tgs.charge_limit), (400, 700));
        let dilu = Policy::named(PolicyName::Dilu).training_quota(&t);
        assert_eq!(dilu.grant_limit, 0.7);
        let ex = Policy::named(PolicyName::Exclusive).training_quota(&t);
        assert_eq!((ex.grant_request, ex.grant_limit), (1.0, 1.0));
    }

    #[test]
    fn a_function_s_lazy_settings_override_the_policy_s() {
        let p = Policy::named(PolicyName::Dilu);
        let lazy = LazyConfig {
            window: 8,
            out_votes: 4,
            in_votes: 6,
            ..LazyConfig::default()
        };
        assert_eq!(p.horizontal(Some(lazy)).unwrap().name(), "lazy");
        let bad = LazyConfig {
            window: 4,
            out_votes: 5,
            ..LazyConfig::default()
        };
        let e = p.horizontal(Some(bad)).err().unwrap();
        assert_eq!(e.field, "lazy.out_votes");
    }
}
