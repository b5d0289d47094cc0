//! In-instance dynamic batching (`docs/algorithms.md` §7): the rule lives in [`dilu_core::batching`], shared with
//! the worker; re-exported here so the simulator's paths stay as they were.

pub use dilu_core::batching::*;
