//! `libdilu_cuda.so`: the CUDA driver interposer that makes Dilu's quotas real inside a GPU instance.
//!
//! Loaded with `LD_PRELOAD` (or `/etc/ld.so.preload`) and configured by `DILU_QUOTA_FILE` (one channel file,
//! or several separated by `:`, one per device, matched by the UUID recorded in each), it
//! - delays kernel launches beyond the channel's budget — `cuLaunchKernel`, `cuLaunchKernelEx`,
//!   `cuLaunchCooperativeKernel`, their `_ptsz` twins and `cuGraphLaunch` (charged per kernel in the graph);
//! - refuses allocations beyond the memory cap with `CUDA_ERROR_OUT_OF_MEMORY` and counts every kind of
//!   device allocation, reporting the cap from `cuMemGetInfo_v2`/`cuDeviceTotalMem_v2`;
//! - answers `cuGetProcAddress`(`_v2`) and `dlsym` on the driver with its hooks, which is how the CUDA 12
//!   runtime and PyTorch reach the driver.
//!
//! Budgets and caps are read live from the channel, so the node agent changes them while the process runs.
//!
//! Environment: `DILU_QUOTA_FILE` (channels; unset or unusable = pass-through with one warning; when unset,
//! `$DILU_QUOTA_DIR/$DILU_POD_UID` if both are set, as in a Kubernetes pod),
//! `DILU_QUOTA_DIR` (set by Dilu's device plugin in Kubernetes, where the container can start before the agent
//! creates its channel: a channel of `DILU_QUOTA_FILE` that does not exist yet is waited for at the first hooked
//! call, polled every 50 ms, then opened; one that never appears means pass-through with one warning; unset =
//! no wait), `DILU_QUOTA_WAIT_S` (the most seconds of that wait, default 30; 0 = none),
//! `DILU_REAL_LIBCUDA` (the real driver, default `libcuda.so.1`), `DILU_CUDA_QUIET=1` (no warnings).
//!
//! Rules this crate lives by, because it runs inside other people's processes: no panics (clippy denies the
//! panicking helpers; a panic could not unwind out of an `extern "C"` hook anyway), no allocation and no lock
//! on the launch path when the budget is not binding, no system call on it except when waiting, and never
//! crashing or killing the host process on bad input — a missing or malformed channel means pass-through.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(non_snake_case)]

pub mod alloc;
pub mod cost;
mod dl;
mod exports;
pub mod ffi;
pub mod graph;
pub mod launch;
pub mod procaddr;
mod real;
mod runtime;
mod table;
