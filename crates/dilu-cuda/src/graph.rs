//! CUDA graph hooks. A graph launch runs many kernels with one call, so it is charged for all of them: the
//! threads of every kernel node (child graphs included) are summed once, when the graph is instantiated —
//! the only moment its nodes can be read, since the graph may be destroyed right after — and remembered per
//! executable graph. `cuGraphExecUpdate` re-learns from the new graph; `cuGraphExecDestroy` forgets.
//!
//! Known gaps, documented: kernel parameters changed per node on an executable graph
//! (`cuGraphExecKernelNodeSetParams`) keep the instantiation-time charge; launches recorded by stream capture
//! are charged once at capture time as ordinary launches; an executable graph the interposer never saw
//! instantiated is charged [`UNKNOWN_GRAPH_THREADS`].

use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

use crate::cost::launch_threads;
use crate::ffi::{
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_INITIALIZED, CUDA_SUCCESS, CUgraph, CUgraphExec,
    CUgraphNode, CUresult, CUstream, GRAPH_NODE_TYPE_GRAPH, GRAPH_NODE_TYPE_KERNEL,
    KernelNodeParams,
};
use crate::runtime::{Runtime, runtime};
use crate::table::FixedMap;

/// Executable graphs tracked at once.
const GRAPH_CAPACITY: usize = 1 << 12;
/// Nesting of child graphs followed when summing.
const MAX_DEPTH: u32 = 8;
/// Charge for a graph the interposer did not see instantiated: one full wave of a 132-SM, 2048-thread GPU.
pub const UNKNOWN_GRAPH_THREADS: u64 = 132 * 2048;

static GRAPHS: Mutex<FixedMap<GRAPH_CAPACITY>> = Mutex::new(FixedMap::new());

fn graphs() -> std::sync::MutexGuard<'static, FixedMap<GRAPH_CAPACITY>> {
    GRAPHS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Runtime {
    /// Sums the threads of every kernel node of `graph`, following child graphs.
    fn graph_threads(&self, graph: CUgraph, depth: u32) -> u64 {
        let (Some(get_nodes), Some(get_type)) =
            (self.real.cuGraphGetNodes, self.real.cuGraphNodeGetType)
        else {
            return 0;
        };
        let mut count = 0usize;
        // SAFETY: a null node array asks for the count only.
        if unsafe { get_nodes(graph, std::ptr::null_mut(), &mut count) } != CUDA_SUCCESS
            || count == 0
        {
            return 0;
        }
        // Instantiation is not a hot path; a heap buffer sized to the graph is fine here.
        let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); count];
        // SAFETY: the buffer holds `count` nodes.
        if unsafe { get_nodes(graph, nodes.as_mut_ptr(), &mut count) } != CUDA_SUCCESS {
            return 0;
        }
        nodes.truncate(count);
        let mut threads = 0u64;
        for node in nodes {
            let mut kind: c_int = -1;
            // SAFETY: writes one int.
            if unsafe { get_type(node, &mut kind) } != CUDA_SUCCESS {
                continue;
            }
            if kind == GRAPH_NODE_TYPE_KERNEL {
                threads = threads.saturating_add(self.kernel_node_threads(node));
            } else if kind == GRAPH_NODE_TYPE_GRAPH
                && depth < MAX_DEPTH
                && let Some(child_of) = self.real.cuGraphChildGraphNodeGetGraph
            {
                let mut child: CUgraph = std::ptr::null_mut();
                // SAFETY: writes one handle.
                if unsafe { child_of(node, &mut child) } == CUDA_SUCCESS && !child.is_null() {
                    threads = threads.saturating_add(self.graph_threads(child, depth + 1));
                }
            }
        }
        threads
    }

    fn kernel_node_threads(&self, node: CUgraphNode) -> u64 {
        let Some(get_params) = self
            .real
            .cuGraphKernelNodeGetParams_v2
            .or(self.real.cuGraphKernelNodeGetParams)
        else {
            return 0;
        };
        // The v2 layout is a superset of v1, so one buffer serves both entry points.
        let mut params = KernelNodeParams::zeroed();
        // SAFETY: writes at most one KernelNodeParams.
        if unsafe { get_params(node, &mut params) } != CUDA_SUCCESS {
            return 0;
        }
        launch_threads(
            [params.grid_dim_x, params.grid_dim_y, params.grid_dim_z],
            [params.block_dim_x, params.block_dim_y, params.block_dim_z],
        )
    }

    /// Records what one launch of `exec` (instantiated from `graph`) costs.
    fn learn_graph(&self, exec: CUgraphExec, graph: CUgraph) {
        if self.slots.is_empty() || exec.is_null() {
            return;
        }
        let threads = self.graph_threads(graph, 0);
        graphs().insert(exec as u64, threads);
    }

    fn launch_graph(&self, exec: CUgraphExec) {
        if self.slots.is_empty() {
            return;
        }
        let threads = graphs().get(exec as u64).unwrap_or(UNKNOWN_GRAPH_THREADS);
        self.charge_threads(threads);
    }
}

macro_rules! instantiate_hook {
    ($(#[$doc:meta])* $name:ident, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: *mut CUgraphExec, graph: CUgraph, $($arg: $ty),*) -> CUresult {
            let Some(rt) = runtime() else {
                return CUDA_ERROR_NOT_INITIALIZED;
            };
            let Some(real) = rt.real.$name else {
                return CUDA_ERROR_NOT_FOUND;
            };
            // SAFETY: forwarding the caller's arguments unchanged.
            let result = unsafe { real(exec, graph, $($arg),*) };
            if result == CUDA_SUCCESS {
                // SAFETY: on success the driver wrote the new executable graph through `exec`.
                if let Some(&created) = unsafe { exec.as_ref() } {
                    rt.learn_graph(created, graph);
                }
            }
            result
        }
    };
}

instantiate_hook!(
    /// Hook of `cuGraphInstantiate` (CUDA 10/11 signature).
    cuGraphInstantiate,
    (error_node: *mut CUgraphNode, log: *mut c_char, log_size: usize)
);
instantiate_hook!(
    /// Hook of `cuGraphInstantiate_v2` (CUDA 11 signature).
    cuGraphInstantiate_v2,
    (error_node: *mut CUgraphNode, log: *mut c_char, log_size: usize)
);
instantiate_hook!(
    /// Hook of `cuGraphInstantiateWithFlags` (what `cuGraphInstantiate` means in CUDA 12).
    cuGraphInstantiateWithFlags,
    (flags: u64)
);
instantiate_hook!(
    /// Hook of `cuGraphInstantiateWithParams`.
    cuGraphInstantiateWithParams,
    (params: *mut c_void)
);
instantiate_hook!(
    /// Hook of `cuGraphInstantiateWithParams_ptsz`.
    cuGraphInstantiateWithParams_ptsz,
    (params: *mut c_void)
);

macro_rules! update_hook {
    ($(#[$doc:meta])* $name:ident, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: CUgraphExec, graph: CUgraph, $($arg: $ty),*) -> CUresult {
            let Some(rt) = runtime() else {
                return CUDA_ERROR_NOT_INITIALIZED;
            };
            let Some(real) = rt.real.$name else {
                return CUDA_ERROR_NOT_FOUND;
            };
            // SAFETY: forwarding the caller's arguments unchanged.
            let result = unsafe { real(exec, graph, $($arg),*) };
            if result == CUDA_SUCCESS {
                rt.learn_graph(exec, graph);
            }
            result
        }
    };
}

update_hook!(
    /// Hook of `cuGraphExecUpdate` (CUDA 11 signature): re-learns the executable graph's cost.
    cuGraphExecUpdate,
    (error_node: *mut CUgraphNode, result: *mut c_int)
);
update_hook!(
    /// Hook of `cuGraphExecUpdate_v2` (CUDA 12): re-learns the executable graph's cost.
    cuGraphExecUpdate_v2,
    (result_info: *mut c_void)
);

/// Hook of `cuGraphExecDestroy`: forgets the graph's cost.
///
/// # Safety
/// Same contract as the driver's `cuGraphExecDestroy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    let Some(rt) = runtime() else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    let Some(real) = rt.real.cuGraphExecDestroy else {
        return CUDA_ERROR_NOT_FOUND;
    };
    graphs().remove(exec as u64);
    // SAFETY: forwarding the caller's argument.
    unsafe { real(exec) }
}

macro_rules! graph_launch_hook {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: CUgraphExec, stream: CUstream) -> CUresult {
            let Some(rt) = runtime() else {
                return CUDA_ERROR_NOT_INITIALIZED;
            };
            let Some(real) = rt.real.$name else {
                return CUDA_ERROR_NOT_FOUND;
            };
            rt.launch_graph(exec);
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(exec, stream) }
        }
    };
}

graph_launch_hook!(
    /// Hook of `cuGraphLaunch`: charged for every kernel in the graph (HAMi passes graphs through).
    cuGraphLaunch
);
graph_launch_hook!(
    /// Hook of `cuGraphLaunch_ptsz`.
    cuGraphLaunch_ptsz
);
