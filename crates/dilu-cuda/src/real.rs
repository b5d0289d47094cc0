//! The real driver's entry points, resolved once from the `libcuda.so.1` handle with the real `dlsym`.

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::ffi::{
    CUcontext, CUdevice, CUdeviceptr, CUfunction, CUgraph, CUgraphExec, CUgraphNode,
    CUlaunchConfig, CUmemoryPool, CUresult, CUstream, KernelNodeParams, MemAllocationPropPrefix,
};

/// Signature of the real `dlsym`.
pub(crate) type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

macro_rules! driver_table {
    ($( $name:ident ( $($arg:ty),* ); )*) => {
        /// One optional function pointer per driver entry point the interposer calls; `None` where the
        /// installed driver does not export it.
        #[allow(non_snake_case)]
        pub(crate) struct RealDriver {
            $( pub(crate) $name: Option<unsafe extern "C" fn($($arg),*) -> CUresult>, )*
        }

        impl RealDriver {
            /// Looks every entry point up in `handle` with the real `dlsym`.
            ///
            /// # Safety
            /// `handle` must be a live `dlopen` handle and `dlsym` the C library's `dlsym`.
            pub(crate) unsafe fn resolve(handle: *mut c_void, dlsym: DlsymFn) -> Self {
                Self {
                    $( $name: {
                        // SAFETY: NUL-terminated literal; dlsym returns the symbol's address or null.
                        let address = unsafe { dlsym(handle, concat!(stringify!($name), "\0").as_ptr().cast()) };
                        if address.is_null() {
                            None
                        } else {
                            // SAFETY: the driver exports this symbol with exactly this C signature.
                            Some(unsafe {
                                std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CUresult>(address)
                            })
                        }
                    }, )*
                }
            }

            /// The exported name of the entry point at `address`, if it is one of ours.
            pub(crate) fn name_of(&self, address: *mut c_void) -> Option<&'static str> {
                $( if let Some(f) = self.$name {
                    if f as usize == address as usize {
                        return Some(stringify!($name));
                    }
                } )*
                None
            }

            /// Whether the driver exports `name` (one of the table's names).
            pub(crate) fn exports(&self, name: &[u8]) -> bool {
                $( if name == stringify!($name).as_bytes() {
                    return self.$name.is_some();
                } )*
                false
            }
        }
    };
}

driver_table! {
    cuLaunchKernel(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernel_ptsz(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernelEx(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernelEx_ptsz(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
    cuLaunchCooperativeKernel(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void);
    cuLaunchCooperativeKernel_ptsz(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void);
    cuGraphLaunch(CUgraphExec, CUstream);
    cuGraphLaunch_ptsz(CUgraphExec, CUstream);
    cuGraphInstantiate(*mut CUgraphExec, CUgraph, *mut CUgraphNode, *mut c_char, usize);
    cuGraphInstantiate_v2(*mut CUgraphExec, CUgraph, *mut CUgraphNode, *mut c_char, usize);
    cuGraphInstantiateWithFlags(*mut CUgraphExec, CUgraph, u64);
    cuGraphInstantiateWithParams(*mut CUgraphExec, CUgraph, *mut c_void);
    cuGraphInstantiateWithParams_ptsz(*mut CUgraphExec, CUgraph, *mut c_void);
    cuGraphExecUpdate(CUgraphExec, CUgraph, *mut CUgraphNode, *mut c_int);
    cuGraphExecUpdate_v2(CUgraphExec, CUgraph, *mut c_void);
    cuGraphExecDestroy(CUgraphExec);
    cuMemAlloc_v2(*mut CUdeviceptr, usize);
    cuMemAllocPitch_v2(*mut CUdeviceptr, *mut usize, usize, usize, c_uint);
    cuMemAllocManaged(*mut CUdeviceptr, usize, c_uint);
    cuMemAllocAsync(*mut CUdeviceptr, usize, CUstream);
    cuMemAllocAsync_ptsz(*mut CUdeviceptr, usize, CUstream);
    cuMemAllocFromPoolAsync(*mut CUdeviceptr, usize, CUmemoryPool, CUstream);
    cuMemAllocFromPoolAsync_ptsz(*mut CUdeviceptr, usize, CUmemoryPool, CUstream);
    cuMemFree_v2(CUdeviceptr);
    cuMemFreeAsync(CUdeviceptr, CUstream);
    cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
    cuMemCreate(*mut u64, usize, *const MemAllocationPropPrefix, u64);
    cuMemRelease(u64);
    cuMemGetInfo_v2(*mut usize, *mut usize);
    cuDeviceTotalMem_v2(*mut usize, CUdevice);
    cuGetProcAddress(*const c_char, *mut *mut c_void, c_int, u64);
    cuGetProcAddress_v2(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int);
    cuCtxGetCurrent(*mut CUcontext);
    cuCtxGetDevice(*mut CUdevice);
    cuDeviceGetCount(*mut c_int);
    cuDeviceGetUuid(*mut [u8; 16], CUdevice);
    cuDeviceGetUuid_v2(*mut [u8; 16], CUdevice);
    cuDeviceGetAttribute(*mut c_int, c_int, CUdevice);
    cuGraphGetNodes(CUgraph, *mut CUgraphNode, *mut usize);
    cuGraphNodeGetType(CUgraphNode, *mut c_int);
    cuGraphKernelNodeGetParams(CUgraphNode, *mut KernelNodeParams);
    cuGraphKernelNodeGetParams_v2(CUgraphNode, *mut KernelNodeParams);
    cuGraphChildGraphNodeGetGraph(CUgraphNode, *mut CUgraph);
}
