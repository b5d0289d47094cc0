//! What the reconciler learns of a function's traffic: arrivals per scaling interval (the horizontal scaler's
//! input) and requests in flight per instance (so that a draining instance stops only when they are done).
//! `dilu up` reads them from its gateway.

/// A function's traffic since the previous [`LoadSource::take_window`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Requests that arrived.
    pub arrivals: u64,
    /// Requests waiting for an instance now.
    pub queued_now: u64,
    /// Requests answered (or failed).
    pub answered: u64,
    /// Of those, the ones answered after the function's SLO or refused or failed by the platform.
    pub late: u64,
}

/// A source of traffic counts.
pub trait LoadSource: Send + Sync {
    /// The counts of `function` since the previous call (and resets them).
    fn take_window(&self, function: &str) -> Window;
    /// Requests in flight on one instance of `function`.
    fn in_flight(&self, function: &str, instance: &str) -> usize;
}

/// No traffic at all (a control plane without a gateway).
pub struct NoLoad;

impl LoadSource for NoLoad {
    fn take_window(&self, _function: &str) -> Window {
        Window::default()
    }

    fn in_flight(&self, _function: &str, _instance: &str) -> usize {
        0
    }
}
