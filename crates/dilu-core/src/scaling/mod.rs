//! Scaling policies: vertical (re-dividing one GPU's SM time among its residents, every few milliseconds)
//! and horizontal (adding or removing instances of a function, every second or two).
//!
//! Both are pure state machines driven by the caller with `now` in nanoseconds, so the simulator and the
//! platform run the same code.

pub mod fast_gshare;
pub mod has;
pub mod horizontal;
pub mod kpa;
pub mod lazy;
pub mod lazy_slo;
pub mod rckm;
pub mod reactive;
pub mod share;
pub mod slack;
pub mod static_share;
pub mod tgs;
pub mod vertical;

pub use fast_gshare::{FastGShareConfig, FastGShareScaler};
pub use has::{HasConfig, HasScaler, KalmanRps};
pub use horizontal::{FunctionLoad, HorizontalScaler, InstanceLoad, QuotaChange, ScaleDecision};
pub use kpa::{KpaConfig, KpaScaler};
pub use lazy::{LazyConfig, LazyScaler};
pub use lazy_slo::{LazySloConfig, LazySloScaler};
pub use rckm::{Rckm, RckmConfig};
pub use reactive::{InflessConfig, InflessScaler};
pub use slack::{SlackConfig, SlackGuard};
pub use static_share::StaticShares;
pub use tgs::{TgsConfig, TgsRate};
pub use vertical::{
    Arbitration, Grant, QueueState, ResidentState, ShareMode, VerticalController, VerticalEvent,
    arbitrate,
};

/// Nanoseconds per second, for converting the policies' second-based constants.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
