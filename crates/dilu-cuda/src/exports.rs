//! Which names the interposer answers for, and how a name asked of `cuGetProcAddress` maps to one of them.

use std::ffi::c_void;

use crate::ffi::PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
use crate::{alloc, graph, launch, procaddr};

/// The address of our hook for the exported driver symbol `name`, if we hook it.
pub(crate) fn hook_address(name: &[u8]) -> Option<*mut c_void> {
    let address = match name {
        b"cuLaunchKernel" => launch::cuLaunchKernel as *const () as usize,
        b"cuLaunchKernel_ptsz" => launch::cuLaunchKernel_ptsz as *const () as usize,
        b"cuLaunchKernelEx" => launch::cuLaunchKernelEx as *const () as usize,
        b"cuLaunchKernelEx_ptsz" => launch::cuLaunchKernelEx_ptsz as *const () as usize,
        b"cuLaunchCooperativeKernel" => launch::cuLaunchCooperativeKernel as *const () as usize,
        b"cuLaunchCooperativeKernel_ptsz" => {
            launch::cuLaunchCooperativeKernel_ptsz as *const () as usize
        }
        b"cuGraphLaunch" => graph::cuGraphLaunch as *const () as usize,
        b"cuGraphLaunch_ptsz" => graph::cuGraphLaunch_ptsz as *const () as usize,
        b"cuGraphInstantiate" => graph::cuGraphInstantiate as *const () as usize,
        b"cuGraphInstantiate_v2" => graph::cuGraphInstantiate_v2 as *const () as usize,
        b"cuGraphInstantiateWithFlags" => graph::cuGraphInstantiateWithFlags as *const () as usize,
        b"cuGraphInstantiateWithParams" => {
            graph::cuGraphInstantiateWithParams as *const () as usize
        }
        b"cuGraphInstantiateWithParams_ptsz" => {
            graph::cuGraphInstantiateWithParams_ptsz as *const () as usize
        }
        b"cuGraphExecUpdate" => graph::cuGraphExecUpdate as *const () as usize,
        b"cuGraphExecUpdate_v2" => graph::cuGraphExecUpdate_v2 as *const () as usize,
        b"cuGraphExecDestroy" => graph::cuGraphExecDestroy as *const () as usize,
        b"cuMemAlloc_v2" => alloc::cuMemAlloc_v2 as *const () as usize,
        b"cuMemAllocPitch_v2" => alloc::cuMemAllocPitch_v2 as *const () as usize,
        b"cuMemAllocManaged" => alloc::cuMemAllocManaged as *const () as usize,
        b"cuMemAllocAsync" => alloc::cuMemAllocAsync as *const () as usize,
        b"cuMemAllocAsync_ptsz" => alloc::cuMemAllocAsync_ptsz as *const () as usize,
        b"cuMemAllocFromPoolAsync" => alloc::cuMemAllocFromPoolAsync as *const () as usize,
        b"cuMemAllocFromPoolAsync_ptsz" => {
            alloc::cuMemAllocFromPoolAsync_ptsz as *const () as usize
        }
        b"cuMemFree_v2" => alloc::cuMemFree_v2 as *const () as usize,
        b"cuMemFreeAsync" => alloc::cuMemFreeAsync as *const () as usize,
        b"cuMemFreeAsync_ptsz" => alloc::cuMemFreeAsync_ptsz as *const () as usize,
        b"cuMemCreate" => alloc::cuMemCreate as *const () as usize,
        b"cuMemRelease" => alloc::cuMemRelease as *const () as usize,
        b"cuMemGetInfo_v2" => alloc::cuMemGetInfo_v2 as *const () as usize,
        b"cuDeviceTotalMem_v2" => alloc::cuDeviceTotalMem_v2 as *const () as usize,
        b"cuGetProcAddress" => procaddr::cuGetProcAddress as *const () as usize,
        b"cuGetProcAddress_v2" => procaddr::cuGetProcAddress_v2 as *const () as usize,
        _ => return None,
    };
    Some(address as *mut c_void)
}

/// The exported symbol a driver returns for `cuGetProcAddress(base, version, flags)`, for the names we hook:
/// `_v2` suffixes from the CUDA version that introduced them, `_ptsz` twins when the per-thread default
/// stream is requested. Names we do not hook return `None`.
pub(crate) fn versioned_export(
    base: &[u8],
    cuda_version: i32,
    flags: u64,
) -> Option<&'static [u8]> {
    let per_thread = flags & PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    let pick = |plain: &'static [u8], ptsz: &'static [u8]| if per_thread { ptsz } else { plain };
    let since = |version: i32, new: &'static [u8]| (cuda_version >= version).then_some(new);
    match base {
        b"cuLaunchKernel" => Some(pick(b"cuLaunchKernel", b"cuLaunchKernel_ptsz")),
        b"cuLaunchKernelEx" => Some(pick(b"cuLaunchKernelEx", b"cuLaunchKernelEx_ptsz")),
        b"cuLaunchCooperativeKernel" => Some(pick(
            b"cuLaunchCooperativeKernel",
            b"cuLaunchCooperativeKernel_ptsz",
        )),
        b"cuGraphLaunch" => Some(pick(b"cuGraphLaunch", b"cuGraphLaunch_ptsz")),
        b"cuGraphInstantiateWithParams" => Some(pick(
            b"cuGraphInstantiateWithParams",
            b"cuGraphInstantiateWithParams_ptsz",
        )),
        b"cuMemAllocAsync" => Some(pick(b"cuMemAllocAsync", b"cuMemAllocAsync_ptsz")),
        b"cuMemAllocFromPoolAsync" => Some(pick(
            b"cuMemAllocFromPoolAsync",
            b"cuMemAllocFromPoolAsync_ptsz",
        )),
        b"cuMemFreeAsync" => Some(pick(b"cuMemFreeAsync", b"cuMemFreeAsync_ptsz")),
        b"cuMemAlloc" => since(3020, b"cuMemAlloc_v2"),
        b"cuMemAllocPitch" => since(3020, b"cuMemAllocPitch_v2"),
        b"cuMemFree" => since(3020, b"cuMemFree_v2"),
        b"cuMemGetInfo" => since(3020, b"cuMemGetInfo_v2"),
        b"cuDeviceTotalMem" => since(3020, b"cuDeviceTotalMem_v2"),
        b"cuMemAllocManaged" => Some(b"cuMemAllocManaged"),
        b"cuMemCreate" => Some(b"cuMemCreate"),
        b"cuMemRelease" => Some(b"cuMemRelease"),
        b"cuGraphInstantiate" => Some(if cuda_version >= 12000 {
            b"cuGraphInstantiateWithFlags"
        } else if cuda_version >= 11000 {
            b"cuGraphInstantiate_v2"
        } else {
            b"cuGraphInstantiate"
        }),
        b"cuGraphInstantiateWithFlags" => Some(b"cuGraphInstantiateWithFlags"),
        b"cuGraphExecUpdate" => Some(if cuda_version >= 12000 {
            b"cuGraphExecUpdate_v2"
        } else {
            b"cuGraphExecUpdate"
        }),
        b"cuGraphExecDestroy" => Some(b"cuGraphExecDestroy"),
        b"cuGetProcAddress" => Some(if cuda_version >= 12000 {
            b"cuGetProcAddress_v2"
        } else {
            b"cuGetProcAddress"
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_versioned_export_has_a_hook() {
        let bases: [&[u8]; 23] = [
            b"cuLaunchKernel",
            b"cuLaunchKernelEx",
            b"cuLaunchCooperativeKernel",
            b"cuGraphLaunch",
            b"cuGraphInstantiateWithParams",
            b"cuMemAllocAsync",
            b"cuMemAllocFromPoolAsync",
            b"cuMemFreeAsync",
            b"cuMemAlloc",
            b"cuMemAllocPitch",
            b"cuMemFree",
            b"cuMemGetInfo",
            b"cuDeviceTotalMem",
            b"cuMemAllocManaged",
            b"cuMemCreate",
            b"cuMemRelease",
            b"cuGraphInstantiate",
            b"cuGraphInstantiateWithFlags",
            b"cuGraphExecUpdate",
            b"cuGraphExecDestroy",
            b"cuGetProcAddress",
            b"cuLaunchKernel",
            b"cuGraphInstantiate",
        ];
        for base in bases {
            for version in [10020, 11080, 12040] {
                for flags in [0, 1, 2] {
                    if let Some(name) = versioned_export(base, version, flags) {
                        assert!(
                            hook_address(name).is_some(),
                            "{} has no hook",
                            String::from_utf8_lossy(name)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn versions_and_streams_pick_the_right_variant() {
        assert_eq!(
            versioned_export(b"cuMemAlloc", 12040, 0),
            Some(&b"cuMemAlloc_v2"[..])
        );
        assert_eq!(versioned_export(b"cuMemAlloc", 3010, 0), None);
        assert_eq!(
            versioned_export(b"cuLaunchKernel", 12040, 2),
            Some(&b"cuLaunchKernel_ptsz"[..])
        );
        assert_eq!(
            versioned_export(b"cuLaunchKernel", 12040, 1),
            Some(&b"cuLaunchKernel"[..])
        );
        assert_eq!(
            versioned_export(b"cuGraphInstantiate", 12040, 0),
            Some(&b"cuGraphInstantiateWithFlags"[..])
        );
        assert_eq!(
            versioned_export(b"cuGraphInstantiate", 11040, 0),
            Some(&b"cuGraphInstantiate_v2"[..])
        );
        assert_eq!(versioned_export(b"cuInit", 12040, 0), None);
    }
}
