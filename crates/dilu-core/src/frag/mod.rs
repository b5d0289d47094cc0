//! Fragmentation metrics: FGD's (ATC'23) typical-pod fragment amount and Dilu's mean free share of active
//! GPUs. Both are kept per node and updated incrementally, so reading them after every event is cheap.

pub mod dilu;
pub mod fgd;

pub use dilu::DiluFragTracker;
pub use fgd::{FgdFragTracker, FragMemo, TypicalPod, TypicalPods};
