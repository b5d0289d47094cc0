//! Vertical scaling: per GPU, re-divide SM time among the instances that share it.

use crate::request::InstanceKind;

/// One resident of a GPU as a vertical controller sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidentState {
    /// Instance id.
    pub id: u64,
    /// What it does (its kind decides its priority: inference before training).
    pub kind: InstanceKind,
    /// Guaranteed SM share, fraction of the GPU.
    pub sm_request: f64,
    /// Most SM share it may use, fraction of the GPU.
    pub sm_limit: f64,
    /// Time quota within its partition for time-token policies (HAS-GPU's vertical knob), fraction (0, 1];
    /// 1.0 elsewhere.
    pub time_quota: f64,
    /// Whether it has GPU work in progress now (training is always busy).
    pub busy: bool,
    /// What its request queue looked like when the controller was called (inference; all zero when the
    /// process does not publish it, and for training).
    pub queue: QueueState,
}

/// An inference resident's request queue as the token manager sees it in a window.
///
/// All zero means "nothing known": a busy resident whose `queued` is 0 publishes no queue signal, and a
/// controller that uses the signal must fall back to what `busy` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    /// Requests not yet answered: waiting for a batch plus those in the running batch.
    pub queued: u32,
    /// How long the oldest unanswered request has waited since it arrived, nanoseconds (0 when none).
    pub oldest_wait_ns: u64,
    /// The latency SLO of the instance's requests, nanoseconds (0: unknown).
    pub slo_ns: u64,
}

impl QueueState {
    /// Whether this state carries a usable signal for a resident that is `busy`: an SLO is known, and a busy
    /// resident reports at least the requests it is running.
    pub fn signals(&self, busy: bool) -> bool {
        self.slo_ns > 0 && (self.queued > 0 || !busy)
    }
}

/// How a grant turns into speed when the resident runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    /// An SM-rate share: the resident runs as if it had `partition` of the SMs (MPS percentage, block tokens).
    Spatial,
    /// A time share of a fixed partition: it runs on `partition` of the SMs for `time_fraction` of the time
    /// (FaST-GShare / HAS-GPU time tokens).
    Temporal,
}

/// How the GPU divides SM time when the busy residents together ask for more than it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arbitration {
    /// Each gets its guaranteed part first; the rest is split in proportion to what they want beyond it.
    Guaranteed,
    /// Plain time slicing: everyone is scaled down in proportion to what they want.
    Proportional,
}

/// What a vertical controller gives one resident for the next window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// SM partition, fraction of the GPU (0, 1].
    pub partition: f64,
    /// Fraction of time it may run on that partition (0, 1]; 1.0 for spatial shares.
    pub time_fraction: f64,
    /// SM·time it is guaranteed under contention, fraction of the GPU.
    pub guaranteed: f64,
    /// How the grant is enforced.
    pub mode: ShareMode,
}

impl Grant {
    /// A spatial grant of `partition` with `guaranteed` SM·time.
    pub fn spatial(partition: f64, guaranteed: f64) -> Self {
        Grant {
            partition,
            time_fraction: 1.0,
            guaranteed: guaranteed.min(partition),
            mode: ShareMode::Spatial,
        }
    }

    /// SM·time the resident wants when busy: partition × time fraction.
    pub fn demand(&self) -> f64 {
        self.partition * self.time_fraction
    }
}

/// Something that happened on a GPU that a vertical controller may react to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VerticalEvent {
    /// The set of residents changed (one joined or left); `residents` is the new set.
    ResidentsChanged,
    /// Resident `index` turned busy.
    BusyStart {
        /// Index into `residents`.
        index: usize,
    },
    /// Resident `index` turned idle after a busy period of `busy_ns`.
    BusyEnd {
        /// Index into `residents`.
        index: usize,
        /// Length of the busy period that ended, nanoseconds.
        busy_ns: u64,
    },
    /// The timer the controller asked for has fired.
    Timer,
}

/// Re-divides one GPU's SM time among its residents. One controller per GPU.
pub trait VerticalController: Send {
    /// The policy's name.
    fn name(&self) -> &'static str;

    /// Reacts to `event` at `now_ns`: updates `grants` (one per resident, same order) and returns when it
    /// next wants a [`VerticalEvent::Timer`], if ever. `grants` keeps its previous values on entry
    /// (a new resident's entry starts as its static share).
    fn on_event(
        &mut self,
        now_ns: u64,
        event: VerticalEvent,
        residents: &[ResidentState],
        grants: &mut [Grant],
    ) -> Option<u64>;

    /// How many times this controller has changed a grant (the `vertical_adjustments` metric).
    fn adjustments(&self) -> u64;

    /// How the GPU arbitrates when its busy residents want more than it has under this controller.
    fn arbitration(&self) -> Arbitration {
        Arbitration::Guaranteed
    }

    /// Whether idle inference residents keep claiming their grants, so that a burst finds its share ready in
    /// the window it starts (RCKM until it releases the device after inference has been idle). Part of the
    /// grant → share rule, [`crate::scaling::share::device_shares`].
    fn reserves_device(&self) -> bool {
        false
    }

    /// The multiple of their requests training residents get while inference is active, for controllers
    /// that keep one (RCKM); shown by the agent per device.
    fn training_budget(&self) -> Option<f64> {
        None
    }
}

/// Divides one GPU's SM time among its residents: `shares[i]` becomes resident `i`'s SM·time share (0 when
/// idle). Under [`Arbitration::Guaranteed`] every busy resident first gets what it wants up to its
/// guarantee (scaled down only if the guarantees alone exceed the GPU), and the rest of the GPU is split in
/// proportion to what each wants beyond that; under [`Arbitration::Proportional`] demands are scaled
/// together. Nobody gets more than it asks for, and the shares never sum above 1.
pub fn arbitrate(arbitration: Arbitration, grants: &[Grant], busy: &[bool], shares: &mut [f64]) {
    let demand = |i: usize| {
        if busy[i] {
            grants[i].demand().max(0.0)
        } else {
            0.0
        }
    };
    match arbitration {
        Arbitration::Proportional => {
            let total: f64 = (0..grants.len()).map(demand).sum();
            let scale = if total > 1.0 { 1.0 / total } else { 1.0 };
            for (i, s) in shares.iter_mut().enumerate() {
                *s = demand(i) * scale;
            }
        }
        Arbitration::Guaranteed => {
            let base = |i: usize| demand(i).min(grants[i].guaranteed.max(0.0));
            let guaranteed: f64 = (0..grants.len()).map(base).sum();
            if guaranteed >= 1.0 {
                for (i, s) in shares.iter_mut().enumerate() {
                    *s = base(i) / guaranteed;
                }
                return;
            }
            let extra: f64 = (0..grants.len()).map(|i| demand(i) - base(i)).sum();
            let room = 1.0 - guaranteed;
            let scale = if extra > room { room / extra } else { 1.0 };
            for (i, s) in shares.iter_mut().enumerate() {
                *s = base(i) + (demand(i) - base(i)) * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_come_first_and_the_rest_is_split_by_excess_demand() {
        let g = [
            Grant::spatial(1.0, 0.6),
            Grant::spatial(0.3, 0.3),
            Grant::spatial(0.5, 0.1),
        ];
        let mut s = [0.0; 3];
        arbitrate(Arbitration::Guaranteed, &g, &[true, true, false], &mut s);
        assert!((s[0] - 0.7).abs() < 1e-12 && (s[1] - 0.3).abs() < 1e-12 && s[2] == 0.0);
        arbitrate(Arbitration::Guaranteed, &g, &[true, true, true], &mut s);
        // Guarantees 0.6 + 0.3 + 0.1 = 1.0: nothing left to split.
        assert!(
            (s[0] - 0.6).abs() < 1e-12 && (s[1] - 0.3).abs() < 1e-12 && (s[2] - 0.1).abs() < 1e-12
        );
        let light = [Grant::spatial(0.4, 0.2), Grant::spatial(0.3, 0.1)];
        let mut s2 = [0.0; 2];
        arbitrate(Arbitration::Guaranteed, &light, &[true, true], &mut s2);
        assert_eq!(s2, [0.4, 0.3]);
    }

    #[test]
    fn proportional_time_slicing_scales_everyone() {
        let g = [Grant::spatial(1.0, 0.0), Grant::spatial(0.5, 0.0)];
        let mut s = [0.0; 2];
        arbitrate(Arbitration::Proportional, &g, &[true, true], &mut s);
        assert!((s[0] - 2.0 / 3.0).abs() < 1e-12 && (s[1] - 1.0 / 3.0).abs() < 1e-12);
    }
}
