//! Kernel launch hooks: charge the launch to the current context's budget (waiting if it is spent), then
//! call the real entry point. The waiting happens in the launching thread before the launch reaches the
//! driver, so launches are delayed, never dropped, and keep their order within a stream.

use std::ffi::{c_uint, c_void};

use crate::cost::{cost_units, launch_threads};
use crate::ffi::{
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_INITIALIZED, CUfunction, CUlaunchConfig, CUresult,
    CUstream,
};
use crate::runtime::{Runtime, runtime};

impl Runtime {
    /// Charges a launch of `threads` threads to the current context's channel, waiting for budget.
    pub(crate) fn charge_threads(&self, threads: u64) {
        if let Some(target) = self.context_target() {
            let cost = cost_units(threads, target.multiplier);
            let channel = &target.slot.channel;
            target
                .slot
                .gate
                .admit(channel.control(), channel.counters(), cost);
        }
    }
}

/// Shared body of `cuLaunchKernel` and `cuLaunchCooperativeKernel` (and their `_ptsz` twins): charge, then call.
macro_rules! grid_launch_hook {
    ($(#[$doc:meta])* $name:ident, ($($extra:ident: $extra_ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            grid_x: c_uint,
            grid_y: c_uint,
            grid_z: c_uint,
            block_x: c_uint,
            block_y: c_uint,
            block_z: c_uint,
            shared_mem_bytes: c_uint,
            stream: CUstream,
            $($extra: $extra_ty),*
        ) -> CUresult {
            let Some(rt) = runtime() else {
                return CUDA_ERROR_NOT_INITIALIZED;
            };
            let Some(real) = rt.real.$name else {
                return CUDA_ERROR_NOT_FOUND;
            };
            rt.charge_threads(launch_threads([grid_x, grid_y, grid_z], [block_x, block_y, block_z]));
            // SAFETY: forwarding the caller's arguments unchanged to the real driver.
            unsafe {
                real(f, grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_mem_bytes, stream, $($extra),*)
            }
        }
    };
}

grid_launch_hook!(
    /// Hook of `cuLaunchKernel`.
    cuLaunchKernel,
    (kernel_params: *mut *mut c_void, extra: *mut *mut c_void)
);
grid_launch_hook!(
    /// Hook of `cuLaunchKernel_ptsz` (per-thread default stream).
    cuLaunchKernel_ptsz,
    (kernel_params: *mut *mut c_void, extra: *mut *mut c_void)
);
grid_launch_hook!(
    /// Hook of `cuLaunchCooperativeKernel`.
    cuLaunchCooperativeKernel,
    (kernel_params: *mut *mut c_void)
);
grid_launch_hook!(
    /// Hook of `cuLaunchCooperativeKernel_ptsz`.
    cuLaunchCooperativeKernel_ptsz,
    (kernel_params: *mut *mut c_void)
);

/// Shared body of `cuLaunchKernelEx` and `cuLaunchKernelEx_ptsz`.
macro_rules! config_launch_hook {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            config: *const CUlaunchConfig,
            f: CUfunction,
            kernel_params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let Some(rt) = runtime() else {
                return CUDA_ERROR_NOT_INITIALIZED;
            };
            let Some(real) = rt.real.$name else {
                return CUDA_ERROR_NOT_FOUND;
            };
            // SAFETY: the caller passes a valid config or null (which the driver rejects; we charge nothing).
            if let Some(c) = unsafe { config.as_ref() } {
                rt.charge_threads(launch_threads(
                    [c.grid_dim_x, c.grid_dim_y, c.grid_dim_z],
                    [c.block_dim_x, c.block_dim_y, c.block_dim_z],
                ));
            }
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(config, f, kernel_params, extra) }
        }
    };
}

config_launch_hook!(
    /// Hook of `cuLaunchKernelEx` (CUDA 11.8+; HAMi missed it for a long time).
    cuLaunchKernelEx
);
config_launch_hook!(
    /// Hook of `cuLaunchKernelEx_ptsz`.
    cuLaunchKernelEx_ptsz
);
