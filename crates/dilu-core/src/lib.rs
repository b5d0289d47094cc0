//! Dilu's domain model and policies.
//!
//! Pure code only: no I/O, no clock, no global state. Time, randomness and data come in as arguments so
//! that the simulator and the platform run the very same policies.

pub mod batching;
pub mod cluster;
pub mod error;
pub mod frag;
pub mod gorand;
pub mod hash;
pub mod ledger;
pub mod perf;
pub mod placement;
pub mod policy;
pub mod profiler;
pub mod prometheus;
pub mod request;
pub mod scaling;
pub mod scheduling;
pub mod sync;
pub mod units;

pub use cluster::{Cluster, GpuShare, GpuState, Node, NodeSpec, Placement};
pub use error::{CoreError, FieldError};
pub use placement::{Placer, PlacerConfig, PlacerName, Unschedulable, build_placer};
pub use request::{InstanceKind, InstanceRequest, SM_MILLI};
