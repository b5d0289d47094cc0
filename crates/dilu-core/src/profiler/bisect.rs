//! The training profiler (`docs/algorithms.md` §3): bisection over SM shares that are multiples of 5% for the
//! smallest share keeping at least `target` (default 98%) of the full-GPU throughput.
//!
//! The reference script never narrows its interval (a defect, §9). Here the interval really shrinks: share 0 is
//! taken as failing (nothing runs) and 100% as succeeding (it *is* the full throughput); each step measures the
//! multiple of 5 nearest below the midpoint, then `high = mid` on success, else `low = mid`, until
//! `high − low ≤ 5`. The answer is `high`. For a monotone curve it is within 5 percentage points above the true
//! smallest share reaching the target, after `1 + ⌈log2 20⌉ ≤ 6` measurements.

use super::ProfileError;
use serde::{Deserialize, Serialize};

/// Dilu's default: keep 98% of the full-GPU training throughput.
pub const DEFAULT_TRAINING_TARGET: f64 = 0.98;

/// Granularity of the training search, percent.
pub const TRAINING_SM_STEP: u32 = 5;

/// What the training bisection found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingProfile {
    /// The smallest multiple-of-5 share (percent) found to keep the target fraction of full throughput.
    pub sm_request_pct: u32,
    /// Distinct shares measured (100% included).
    pub measured: usize,
    /// Throughput at 100%.
    pub full_throughput: f64,
    /// Throughput at `sm_request_pct`.
    pub throughput: f64,
    /// Whole-device measurements taken again beside the candidates ([`bisect_training_paired`]; 0 for
    /// [`bisect_training`]).
    #[serde(default)]
    pub references: usize,
}

/// Bisects for the smallest share (multiple of 5%) whose throughput, `measure(sm_pct)`, reaches `target` of
/// the throughput at 100%. `target` must be within (0, 1]; the full-GPU throughput must be finite and > 0.
pub fn bisect_training(
    mut measure: impl FnMut(u32) -> f64,
    target: f64,
) -> Result<TrainingProfile, ProfileError> {
    if !(target > 0.0 && target <= 1.0) {
        return Err(ProfileError::Config(crate::FieldError::new(
            "target",
            target.to_string(),
            "must be within (0, 1]",
        )));
    }
    let full = measure(100);
    if !(full.is_finite() && full > 0.0) {
        return Err(ProfileError::BadMeasurement {
            batch: 0,
            sm_pct: 100,
            field: "throughput",
            value: full,
        });
    }
    let goal = target * full;
    let (mut low, mut high, mut at_high) = (0u32, 100u32, full);
    let mut measured = 1;
    while high - low > TRAINING_SM_STEP {
        let mid = low + (high - low) / (2 * TRAINING_SM_STEP) * TRAINING_SM_STEP;
        let thr = measure(mid);
        measured += 1;
        if thr >= goal {
            high = mid;
            at_high = thr;
        } else {
            low = mid;
        }
    }
    Ok(TrainingProfile {
        sm_request_pct: high,
        measured,
        full_throughput: full,
        throughput: at_high,
        references: 0,
    })
}

/// [`bisect_training`] for a machine whose speed drifts during the search (a shared CPU device: 10–20 % within
/// a minute). A single whole-device measurement at the start would judge every later candidate against the
/// speed the machine had then, so a fast start fails every share. Here the whole device is measured again
/// right after each candidate, and the candidate is judged against the mean of the whole-device rates
/// measured just before and just after it (a drift that is linear over the two cancels). The rate reported
/// for a candidate is scaled to the first whole-device measurement. Costs one more measurement per
/// candidate (counted in `references`; `measured` stays the search's distinct shares).
pub fn bisect_training_paired(
    mut measure: impl FnMut(u32) -> f64,
    target: f64,
) -> Result<TrainingProfile, ProfileError> {
    let mut first = f64::NAN;
    let mut before = f64::NAN;
    let mut references = 0usize;
    let mut profile = bisect_training(
        |pct| {
            if pct == 100 {
                first = measure(100);
                before = first;
                return first;
            }
            let candidate = measure(pct);
            let after = measure(100);
            references += 1;
            let around = (before + after) / 2.0;
            if after.is_finite() && after > 0.0 {
                before = after;
            }
            if around.is_finite() && around > 0.0 {
                candidate * first / around
            } else {
                f64::NAN
            }
        },
        target,
    )?;
    profile.references = references;
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The true smallest share (to 0.01%) at which `f` reaches `target · f(100)`.
    fn true_knee(f: &dyn Fn(f64) -> f64, target: f64) -> f64 {
        let goal = target * f(100.0);
        (1..=10_000)
            .map(|i| f64::from(i) / 100.0)
            .find(|&s| f(s) >= goal)
            .unwrap_or(100.0)
    }

    fn check(f: &dyn Fn(f64) -> f64, target: f64) -> Result<(), TestCaseError> {
        let p = bisect_training(|s| f(f64::from(s)), target).unwrap();
        let knee = true_knee(f, target);
        prop_assert!(p.sm_request_pct % 5 == 0);
        prop_assert!(
            f64::from(p.sm_request_pct) >= knee - 0.01 && f64::from(p.sm_request_pct) <= knee + 5.0,
            "found {} true {knee}",
            p.sm_request_pct
        );
        prop_assert!(p.measured <= 6);
        Ok(())
    }

    #[test]
    fn narrows_and_counts() {
        // Saturates at 40%.
        let p = bisect_training(|s| f64::from(s.min(40)), 0.98).unwrap();
        assert_eq!(p.sm_request_pct, 40);
        // Measures 100, 50, 25, 35, 40: (0,100] → (0,50] → (25,50] → (35,50] → (35,40].
        assert_eq!(p.measured, 5);
        assert_eq!(p.full_throughput, 40.0);
        let p = bisect_training(f64::from, 1.0).unwrap();
        assert_eq!(p.sm_request_pct, 100);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert!(matches!(
            bisect_training(|_| 1.0, 0.0),
            Err(ProfileError::Config(crate::FieldError { ref field, .. })) if field == "target"
        ));
        assert!(matches!(
            bisect_training(|_| f64::NAN, 0.98),
            Err(ProfileError::BadMeasurement { .. })
        ));
    }

    /// A machine that gets 3 % slower with every measurement (a 1.2 s window each: about 20 % over the
    /// search, what the shared CPU device showed), and a trainer that saturates at half the device.
    fn drifting() -> impl FnMut(u32) -> f64 {
        let mut calls = 0u32;
        move |pct| {
            let speed = 1.0 - 0.03 * f64::from(calls);
            calls += 1;
            speed * f64::from(pct.min(50)) / 50.0
        }
    }

    #[test]
    fn a_drifting_machine_fails_every_share_against_one_reference_but_not_against_its_neighbours() {
        // Every candidate is measured slower than the whole device was at the start, so none keeps 98 %.
        let plain = bisect_training(drifting(), 0.98).unwrap();
        assert_eq!(plain.sm_request_pct, 100);
        // Judged against the whole device measured beside it, 50 % keeps everything and 45 % does not.
        let paired = bisect_training_paired(drifting(), 0.98).unwrap();
        assert_eq!(paired.sm_request_pct, 50);
        // 100, 50, 25, 35, 40, 45: each candidate followed by one more whole-device measurement.
        assert_eq!(paired.measured, 6);
        assert_eq!(paired.references, 5);
        assert_eq!(paired.full_throughput, 1.0);
        // The rate at 50 % (0.97 at the second measurement) scaled to the first reference (1.0) by the mean
        // around it, (1.0 + 0.94) / 2 = 0.97.
        assert!((paired.throughput - 1.0).abs() < 1e-12, "{paired:?}");
    }

    #[test]
    fn a_failed_reference_fails_the_candidate() {
        let mut calls = 0;
        let p = bisect_training_paired(
            |pct| {
                calls += 1;
                if pct == 100 && calls > 1 {
                    f64::NAN
                } else {
                    1.0
                }
            },
            0.98,
        )
        .unwrap();
        // Every candidate fails without a reference after it; the answer stays the whole device.
        assert_eq!(p.sm_request_pct, 100);
    }

    proptest! {
        #[test]
        fn without_drift_pairing_finds_what_the_plain_search_finds(
            knee in 1.0f64..=100.0, p in 0.2f64..4.0, target in 0.5f64..=1.0,
        ) {
            let f = move |s: u32| (f64::from(s) / knee).min(1.0).powf(p);
            let plain = bisect_training(f, target).unwrap();
            let paired = bisect_training_paired(f, target).unwrap();
            prop_assert_eq!(plain.sm_request_pct, paired.sm_request_pct);
            prop_assert_eq!(plain.measured, paired.measured);
            prop_assert_eq!(paired.references, paired.measured - 1);
        }

        #[test]
        fn power_knee_curves(knee in 1.0f64..=100.0, p in 0.2f64..4.0, target in 0.5f64..=1.0) {
            let f = move |s: f64| (s / knee).min(1.0).powf(p);
            check(&f, target)?;
        }

        #[test]
        fn saturating_exponentials(k in 1.0f64..60.0, target in 0.5f64..0.99) {
            let f = move |s: f64| 1.0 - (-s / k).exp();
            check(&f, target)?;
        }
    }
}
