//! The grant → share rule: how a device's vertical controller's grants become the share of the device each
//! resident may use in the next window. The simulator's engine and the node agent's token manager both call
//! [`device_shares`], so a controller produces the same shares in both (`docs/policies.md`).
//!
//! 1. A grant never exceeds its resident's limit: the partition and the guarantee are capped at `sm_limit`
//!    (a quota's limit is the most an instance may burst to, whatever the controller would give).
//! 2. The *claimants* of the device are training residents (always: training is elastic and takes what it is
//!    given, so its share must not jump to its limit in a window it happened to be idle), busy inference
//!    residents, and idle inference residents while the controller reserves the device for inference
//!    ([`VerticalController::reserves_device`]: RCKM until inference has been idle for its release time).
//! 3. The claimants' capped grants are arbitrated with the controller's arbitration ([`arbitrate`]).
//! 4. A resident that does not claim gets the demand of its capped grant: what it may start with when work
//!    arrives before the next window re-divides the device. It is not counted as using the device.

use crate::scaling::vertical::{Grant, ResidentState, VerticalController, arbitrate};

/// The rule's name, as policies report it.
pub const RULE_NAME: &str = "capped-claims";

/// Applies the rule: fills `shares[i]` (and `claims[i]`) for resident `i` from `grants[i]`. All slices have one
/// entry per resident, in the same order.
pub fn device_shares(
    controller: &dyn VerticalController,
    residents: &[ResidentState],
    grants: &[Grant],
    shares: &mut [f64],
    claims: &mut [bool],
) {
    let reserved = controller.reserves_device();
    let capped: Vec<Grant> = grants
        .iter()
        .zip(residents)
        .map(|(g, r)| Grant {
            partition: g.partition.min(r.sm_limit),
            guaranteed: g.guaranteed.min(r.sm_limit),
            ..*g
        })
        .collect();
    for (claim, r) in claims.iter_mut().zip(residents) {
        *claim = r.busy || !r.kind.is_inference() || reserved;
    }
    arbitrate(controller.arbitration(), &capped, claims, shares);
    for ((share, grant), &claim) in shares.iter_mut().zip(&capped).zip(claims.iter()) {
        if !claim {
            *share = grant.demand();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::InstanceKind;
    use crate::scaling::vertical::VerticalEvent;
    use crate::scaling::{Rckm, RckmConfig};

    fn resident(id: u64, kind: InstanceKind, request: f64, limit: f64) -> ResidentState {
        ResidentState {
            id,
            kind,
            sm_request: request,
            sm_limit: limit,
            time_quota: 1.0,
            busy: false,
            queue: Default::default(),
        }
    }

    #[test]
    fn grants_are_capped_at_limits_and_idle_inference_claims_while_reserved() {
        let mut rckm = Rckm::new(RckmConfig::default());
        let residents = [
            resident(1, InstanceKind::Inference, 0.1, 0.3),
            resident(2, InstanceKind::Training, 0.5, 1.0),
        ];
        let mut grants = vec![Grant::spatial(0.0, 0.0); 2];
        rckm.on_event(0, VerticalEvent::ResidentsChanged, &residents, &mut grants);
        // RCKM gives inference the whole device; its limit caps it at 0.3.
        assert_eq!(grants[0].partition, 1.0);
        let (mut shares, mut claims) = ([0.0; 2], [false; 2]);
        // Released (no burst seen yet): idle inference does not claim; training gets its limit.
        device_shares(&rckm, &residents, &grants, &mut shares, &mut claims);
        assert_eq!(claims, [false, true]);
        assert_eq!(shares, [0.3, 1.0]);
        // A burst reserves the device: inference claims even when idle, training keeps its guarantee and
        // shares the rest by excess demand.
        let busy = [
            ResidentState {
                busy: true,
                ..residents[0]
            },
            residents[1],
        ];
        rckm.on_event(1, VerticalEvent::BusyStart { index: 0 }, &busy, &mut grants);
        rckm.on_event(5_000_000, VerticalEvent::Timer, &busy, &mut grants);
        assert!(rckm.reserves_device());
        device_shares(&rckm, &residents, &grants, &mut shares, &mut claims);
        assert_eq!(claims, [true, true]);
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        assert!(shares[0] > 0.1 && shares[0] <= 0.3, "{shares:?}");
        assert!(shares[1] >= 0.5, "{shares:?}");
    }
}
