//! The slice of the CUDA driver ABI the interposer touches, declared from the driver API reference.
//!
//! Handles are opaque pointers; only the structures whose fields the interposer reads are spelled out, and
//! only up to the last field it reads (the driver owns the rest).

#![allow(non_camel_case_types)]

use std::ffi::{c_int, c_uint, c_void};

/// `CUresult`: 0 is success.
pub type CUresult = c_int;
/// `CUdevice`: a device ordinal.
pub type CUdevice = c_int;
/// `CUdeviceptr`: a device address.
pub type CUdeviceptr = u64;
/// Opaque driver handles.
pub type CUcontext = *mut c_void;
/// A stream handle.
pub type CUstream = *mut c_void;
/// A kernel function handle.
pub type CUfunction = *mut c_void;
/// A graph handle.
pub type CUgraph = *mut c_void;
/// An executable graph handle.
pub type CUgraphExec = *mut c_void;
/// A graph node handle.
pub type CUgraphNode = *mut c_void;
/// A memory pool handle.
pub type CUmemoryPool = *mut c_void;
/// A VMM physical allocation handle.
pub type CUmemGenericAllocationHandle = u64;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_OUT_OF_MEMORY`: what an allocation over the cap returns.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`: returned when no real driver could be loaded.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_NOT_FOUND`: returned when the real driver lacks the entry point.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`.
pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
/// `CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR`.
pub const ATTR_MAX_THREADS_PER_MULTIPROCESSOR: c_int = 39;

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CU_GRAPH_NODE_TYPE_KERNEL`.
pub const GRAPH_NODE_TYPE_KERNEL: c_int = 0;
/// `CU_GRAPH_NODE_TYPE_GRAPH` (a child graph).
pub const GRAPH_NODE_TYPE_GRAPH: c_int = 4;

/// `CU_MEM_LOCATION_TYPE_DEVICE`.
pub const MEM_LOCATION_TYPE_DEVICE: c_int = 1;

/// `CUlaunchConfig`, the first argument of `cuLaunchKernelEx`.
#[repr(C)]
pub struct CUlaunchConfig {
    /// Grid width in blocks.
    pub grid_dim_x: c_uint,
    /// Grid height in blocks.
    pub grid_dim_y: c_uint,
    /// Grid depth in blocks.
    pub grid_dim_z: c_uint,
    /// Block width in threads.
    pub block_dim_x: c_uint,
    /// Block height in threads.
    pub block_dim_y: c_uint,
    /// Block depth in threads.
    pub block_dim_z: c_uint,
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: c_uint,
    /// Stream of the launch.
    pub stream: CUstream,
    /// Launch attributes.
    pub attrs: *mut c_void,
    /// Number of launch attributes.
    pub num_attrs: c_uint,
}

/// `CUDA_KERNEL_NODE_PARAMS_v2` (v1 is its prefix without `kern` and `ctx`).
#[repr(C)]
pub struct KernelNodeParams {
    /// Kernel function.
    pub func: CUfunction,
    /// Grid width in blocks.
    pub grid_dim_x: c_uint,
    /// Grid height in blocks.
    pub grid_dim_y: c_uint,
    /// Grid depth in blocks.
    pub grid_dim_z: c_uint,
    /// Block width in threads.
    pub block_dim_x: c_uint,
    /// Block height in threads.
    pub block_dim_y: c_uint,
    /// Block depth in threads.
    pub block_dim_z: c_uint,
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: c_uint,
    /// Kernel arguments.
    pub kernel_params: *mut *mut c_void,
    /// Extra launch options.
    pub extra: *mut *mut c_void,
    /// `CUkernel` (v2 only).
    pub kern: *mut c_void,
    /// Context (v2 only).
    pub ctx: CUcontext,
}

impl KernelNodeParams {
    /// An all-zero value for the driver to fill in.
    pub fn zeroed() -> Self {
        Self {
            func: std::ptr::null_mut(),
            grid_dim_x: 0,
            grid_dim_y: 0,
            grid_dim_z: 0,
            block_dim_x: 0,
            block_dim_y: 0,
            block_dim_z: 0,
            shared_mem_bytes: 0,
            kernel_params: std::ptr::null_mut(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        }
    }
}

/// The leading fields of `CUmemAllocationProp`: allocation type, requested handle types, and the location.
#[repr(C)]
pub struct MemAllocationPropPrefix {
    /// `CUmemAllocationType`.
    pub alloc_type: c_int,
    /// `CUmemAllocationHandleType`.
    pub requested_handle_types: c_int,
    /// `CUmemLocation::type`.
    pub location_type: c_int,
    /// `CUmemLocation::id` (a device ordinal for device locations).
    pub location_id: c_int,
}
