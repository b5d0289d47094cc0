//! Hand-built scenarios for every placement policy (`PlacerName::ALL`), with hand-computed expectations for the
//! policy-specific rules of `docs/algorithms.md` §4 and §10, plus the validation rules of
//! `InstanceRequest::validate` and the checks of `Cluster::allocate` / `Cluster::release`.
mod common;
use common::snap;

use dilu_core::frag::TypicalPods;
use dilu_core::{
    Cluster, CoreError, GpuShare, InstanceKind, InstanceRequest, NodeSpec, Placement, Placer,
    PlacerConfig, PlacerName, Unschedulable, build_placer,
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// A node spec with generous CPU and host memory.
fn node(name: &str, model: &str, gpus: u32, gpu_mem_mib: u64) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        cpu_milli: 64_000,
        mem_mib: 256_000,
        gpu_model: if gpus == 0 {
            String::new()
        } else {
            model.into()
        },
        gpu_count: gpus,
        gpu_mem_mib,
        max_pods: 110,
    }
}

/// A node without GPUs.
fn cpu_node(name: &str) -> NodeSpec {
    node(name, "", 0, 0)
}

fn cluster(specs: Vec<NodeSpec>) -> Cluster {
    Cluster::new(specs).expect("valid cluster")
}

/// Whether the policy is one of the six of FGD's simulator (node score + tie rank + GPU choice).
fn fgd_family(p: PlacerName) -> bool {
    PlacerName::FGD_SIX.contains(&p)
}

/// The kind used for a single-GPU request under a policy.
fn single_kind(p: PlacerName) -> InstanceKind {
    if fgd_family(p) {
        InstanceKind::Pod
    } else {
        InstanceKind::Inference
    }
}

/// The kind used for a multi-GPU (gang) request under a policy.
fn gang_kind(p: PlacerName) -> InstanceKind {
    if fgd_family(p) {
        InstanceKind::Pod
    } else {
        InstanceKind::Training
    }
}

/// A GPU request with 1000 milli CPU and 2000 MiB host memory.
fn gpu_req(
    kind: InstanceKind,
    gpu_count: u32,
    sm_request: u32,
    sm_limit: u32,
    gpu_mem_mib: u64,
) -> InstanceRequest {
    let r = InstanceRequest {
        kind,
        service: None,
        gpu_count,
        sm_request,
        sm_limit,
        gpu_mem_mib,
        cpu_milli: 1000,
        mem_mib: 2000,
        gpu_types: Vec::new(),
    };
    r.validate().expect("test request is valid");
    r
}

/// A single-GPU share request for a policy (request = limit).
fn share(p: PlacerName, sm: u32, gpu_mem_mib: u64) -> InstanceRequest {
    gpu_req(single_kind(p), 1, sm, sm, gpu_mem_mib)
}

/// A gang of `k` whole GPUs for a policy.
fn whole(p: PlacerName, k: u32) -> InstanceRequest {
    gpu_req(gang_kind(p), k, 1000, 1000, 1000)
}

/// A placer for `p`; FGD's typical pods are built from `typical` (the other policies ignore them).
fn placer_seeded(
    p: PlacerName,
    c: &Cluster,
    typical: &[InstanceRequest],
    seed: i64,
) -> Box<dyn Placer> {
    let config = PlacerConfig {
        seed,
        typical_pods: Some(TypicalPods::from_requests(typical.iter(), 95.0)),
        ..Default::default()
    };
    build_placer(p, c, &config).unwrap_or_else(|e| panic!("{p}: cannot build placer: {e}"))
}

fn placer(p: PlacerName, c: &Cluster, typical: &[InstanceRequest]) -> Box<dyn Placer> {
    placer_seeded(p, c, typical, 7)
}

/// Allocates a placement directly (bypassing any policy), with no CPU or host memory, and returns it.
#[allow(clippy::too_many_arguments)]
fn occupy_with(
    c: &mut Cluster,
    id: u64,
    node: usize,
    gpus: &[u32],
    sm: u32,
    lim: u32,
    mem: u64,
    service: Option<&str>,
) -> Placement {
    let kind = if gpus.len() > 1 {
        InstanceKind::Training
    } else {
        InstanceKind::Inference
    };
    let req = InstanceRequest {
        kind,
        service: service.map(str::to_owned),
        gpu_count: gpus.len() as u32,
        sm_request: sm,
        sm_limit: lim,
        gpu_mem_mib: mem,
        cpu_milli: 0,
        mem_mib: 0,
        gpu_types: Vec::new(),
    };
    let mut p = Placement::uniform(node, &req, gpus);
    p.instance = id;
    c.allocate(&p)
        .unwrap_or_else(|e| panic!("setup allocation {id} failed: {e}"));
    p
}

fn occupy(c: &mut Cluster, id: u64, node: usize, gpus: &[u32], sm: u32, lim: u32, mem: u64) {
    occupy_with(c, id, node, gpus, sm, lim, mem, None);
}

/// Places `req` with `p` and allocates the result under `id`, asserting both succeed.
fn place_and_allocate(
    pol: PlacerName,
    placer: &mut dyn Placer,
    c: &mut Cluster,
    req: &InstanceRequest,
    id: u64,
) -> Placement {
    let mut p = placer
        .place(c, req)
        .unwrap_or_else(|e| panic!("{pol}: expected a placement for {req:?}, got {e}"));
    p.instance = id;
    c.allocate(&p)
        .unwrap_or_else(|e| panic!("{pol}: placement {p:?} was refused by the cluster: {e}"));
    p
}

/// GPU indices of a placement, in order.
fn gpus_of(p: &Placement) -> Vec<u32> {
    p.shares.iter().map(|s| s.gpu).collect()
}

/// Asserts that a policy refuses `req` on `c` and leaves the cluster as it was.
fn assert_refused(pol: PlacerName, c: &Cluster, req: &InstanceRequest, what: &str) {
    let before = snap(c);
    let mut pl = placer(pol, c, std::slice::from_ref(req));
    let got = pl.place(c, req);
    assert!(
        got.is_err(),
        "{pol}: {what}: expected Unschedulable, got {got:?}"
    );
    assert_eq!(snap(c), before, "{pol}: {what}: the cluster changed");
}

// ---------------------------------------------------------------------------------------------------------------
// Every policy
// ---------------------------------------------------------------------------------------------------------------

/// Every policy answers `NoRoom` and changes nothing when no GPU has the SM, GPU memory or GPU count asked for.
#[test]
fn every_policy_refuses_when_no_gpu_has_room() {
    // Both GPUs fully requested.
    let mut sm_full = cluster(vec![node("g", "V100", 2, 16_000), cpu_node("c")]);
    occupy(&mut sm_full, 1, 0, &[0], 1000, 1000, 1000);
    occupy(&mut sm_full, 2, 0, &[1], 1000, 1000, 1000);
    // SM left on both GPUs, but their memory is full.
    let mut mem_full = cluster(vec![node("g", "V100", 2, 16_000), cpu_node("c")]);
    occupy(&mut mem_full, 1, 0, &[0], 300, 300, 16_000);
    occupy(&mut mem_full, 2, 0, &[1], 300, 300, 16_000);
    // Idle GPUs, but fewer than asked for.
    let too_few = cluster(vec![node("g", "V100", 2, 16_000), cpu_node("c")]);

    for pol in PlacerName::ALL {
        let cases: [(&Cluster, InstanceRequest, &str); 3] = [
            (&sm_full, share(pol, 100, 1000), "SM full"),
            (&mem_full, share(pol, 100, 1000), "GPU memory full"),
            (&too_few, whole(pol, 4), "4 GPUs on a 2-GPU node"),
        ];
        for (c, req, what) in cases {
            let before = snap(c);
            let mut pl = placer(pol, c, std::slice::from_ref(&req));
            let got = pl.place(c, &req);
            assert!(
                matches!(got, Err(Unschedulable::NoRoom(_))),
                "{pol}: {what}: expected NoRoom, got {got:?}"
            );
            assert_eq!(snap(c), before, "{pol}: {what}: the cluster changed");
        }
    }
}

/// A T4-only request lands only on the T4 node; an absent type is `NoAllowedGpuModel` (FGD family, Dilu) or an error.
#[test]
fn gpu_type_constraint_is_respected() {
    let base = cluster(vec![
        node("v0", "V100", 4, 16_000),
        node("t4", "T4", 4, 16_000),
        node("v2", "V100", 4, 16_000),
    ]);
    for pol in PlacerName::ALL {
        for types in [vec!["T4"], vec!["A100", "T4"]] {
            let types: Vec<String> = types.into_iter().map(String::from).collect();
            for mut req in [share(pol, 200, 1000), whole(pol, 2)] {
                req.gpu_types = types.clone();
                let mut c = base.clone();
                let mut pl = placer(pol, &c, std::slice::from_ref(&req));
                let p = place_and_allocate(pol, pl.as_mut(), &mut c, &req, 1);
                assert_eq!(
                    p.node,
                    1,
                    "{pol}: request for {types:?} ({} GPUs) placed on {}",
                    req.gpu_count,
                    c.nodes()[p.node].spec.gpu_model
                );
            }
        }

        // The T4 node full: no fallback to V100.
        let mut full = base.clone();
        occupy(&mut full, 9, 1, &[0, 1, 2, 3], 1000, 1000, 1000);
        let mut req = share(pol, 200, 1000);
        req.gpu_types = vec!["T4".into()];
        assert_refused(pol, &full, &req, "T4 node full");

        // No node has the type.
        let mut req = share(pol, 200, 1000);
        req.gpu_types = vec!["A100".into()];
        let before = snap(&base);
        let mut pl = placer(pol, &base, std::slice::from_ref(&req));
        let got = pl.place(&base, &req);
        if fgd_family(pol) || pol == PlacerName::Dilu {
            assert_eq!(
                got,
                Err(Unschedulable::NoAllowedGpuModel("A100".into())),
                "{pol}: unknown GPU type"
            );
        } else {
            assert!(got.is_err(), "{pol}: unknown GPU type placed: {got:?}");
        }
        assert_eq!(snap(&base), before, "{pol}: the cluster changed");
    }
}

/// A node marked excluded (the instance's node constraints forbid it) is skipped by every policy, for shares
/// and whole GPUs alike, as if it were full; cleared, it is chosen again.
#[test]
fn an_excluded_node_is_skipped_by_every_policy() {
    let base = cluster(vec![
        node("n0", "V100", 4, 16_000),
        node("n1", "V100", 4, 16_000),
        node("n2", "V100", 4, 16_000),
    ]);
    for pol in PlacerName::ALL.into_iter().chain(PlacerName::SERVING_ONLY) {
        for req in [share(pol, 200, 1000), whole(pol, 2)] {
            let mut c = base.clone();
            let mut pl = placer(pol, &c, std::slice::from_ref(&req));
            let first = pl.place(&c, &req).unwrap_or_else(|e| panic!("{pol}: {e}"));
            c.set_excluded(first.node, true);
            let second = pl.place(&c, &req).unwrap_or_else(|e| panic!("{pol}: {e}"));
            assert_ne!(
                second.node, first.node,
                "{pol}: placed on the excluded node"
            );
            for i in 0..3 {
                c.set_excluded(i, true);
            }
            assert!(pl.place(&c, &req).is_err(), "{pol}: every node excluded");
            c.clear_excluded();
            assert!(pl.place(&c, &req).is_ok(), "{pol}: cleared");
        }
    }
}

/// 2- and 4-GPU requests take distinct free GPUs of one node, each charged, and are never split over nodes.
#[test]
fn multi_gpu_requests_take_distinct_gpus_of_one_node() {
    // Only node 0 has 2 free GPUs: 0 and 3.
    let mut two = cluster(vec![
        node("a", "V100", 4, 16_000),
        node("b", "V100", 2, 16_000),
    ]);
    occupy(&mut two, 1, 0, &[1], 1000, 1000, 1000);
    occupy(&mut two, 2, 0, &[2], 1000, 1000, 1000);
    occupy(&mut two, 3, 1, &[0], 1000, 1000, 1000);
    // Only node 1 has 4 free GPUs (node 0 has 3).
    let mut four = cluster(vec![
        node("a", "V100", 8, 16_000),
        node("b", "V100", 4, 16_000),
    ]);
    for (id, g) in [0u32, 2, 4, 6, 7].into_iter().enumerate() {
        occupy(&mut four, id as u64 + 1, 0, &[g], 1000, 1000, 1000);
    }
    // One free GPU on each node: a gang of 2 must not be split.
    let mut split = cluster(vec![
        node("a", "V100", 2, 16_000),
        node("b", "V100", 2, 16_000),
    ]);
    occupy(&mut split, 1, 0, &[0], 1000, 1000, 1000);
    occupy(&mut split, 2, 1, &[1], 1000, 1000, 1000);

    for pol in PlacerName::ALL {
        for (base, k, node, gpus) in [(&two, 2, 0, vec![0, 3]), (&four, 4, 1, vec![0, 1, 2, 3])] {
            let mut c = base.clone();
            let req = whole(pol, k);
            let before = snap(&c);
            let mut pl = placer(pol, &c, std::slice::from_ref(&req));
            let p = place_and_allocate(pol, pl.as_mut(), &mut c, &req, 100);
            assert_eq!(p.node, node, "{pol}: {k} GPUs on the wrong node");
            assert_eq!(gpus_of(&p), gpus, "{pol}: {k} GPUs: wrong GPUs");
            for &g in &gpus {
                let st = &c.nodes()[node].gpus[g as usize];
                assert!(
                    before.nodes[node].gpus[g as usize].is_idle(),
                    "{pol}: GPU {g} was busy"
                );
                assert_eq!(st.sm_request, 1000, "{pol}: GPU {g} sm_request");
                assert_eq!(st.mem_mib, 1000, "{pol}: GPU {g} mem_mib");
                assert_eq!(st.residents.len(), 1, "{pol}: GPU {g} residents");
                assert_eq!(st.residents[0].instance, 100, "{pol}: GPU {g} resident");
            }
            assert_eq!(
                c.sm_requested(),
                before.sm_requested + 1000 * u64::from(k),
                "{pol}: cluster sm_requested"
            );
            assert_eq!(
                c.active_gpus(),
                before.active_gpus + k,
                "{pol}: cluster active_gpus"
            );
        }
        assert_refused(pol, &split, &whole(pol, 2), "gang of 2 over two nodes");
    }
}

/// Exact fits of SM (600 after 400), GPU memory and CPU are accepted and one unit more is refused.
#[test]
fn exact_fit_is_accepted_and_one_unit_more_is_refused() {
    let mut sm = cluster(vec![node("g", "V100", 1, 16_000)]);
    occupy(&mut sm, 1, 0, &[0], 400, 400, 4000);
    let idle = cluster(vec![node("g", "V100", 1, 16_000)]);
    let mut small = node("s", "V100", 1, 16_000);
    small.cpu_milli = 4000;
    let small = cluster(vec![small]);

    for pol in PlacerName::ALL {
        // SM: 600 fills the GPU, 601 does not fit.
        let fits = share(pol, 600, 1000);
        let over = share(pol, 601, 1000);
        if pol == PlacerName::Exclusive {
            assert_refused(pol, &sm, &fits, "share of a busy GPU");
        } else {
            let mut c = sm.clone();
            let mut pl = placer(pol, &c, std::slice::from_ref(&fits));
            let p = place_and_allocate(pol, pl.as_mut(), &mut c, &fits, 2);
            assert_eq!((p.node, gpus_of(&p)), (0, vec![0]), "{pol}: 600 after 400");
            assert_eq!(c.nodes()[0].gpus[0].sm_request, 1000, "{pol}: GPU now full");
        }
        assert_refused(pol, &sm, &over, "601 after 400");

        // GPU memory: exactly the GPU's memory fits, one MiB more does not.
        let mut c = idle.clone();
        let req = share(pol, 500, 16_000);
        let mut pl = placer(pol, &c, std::slice::from_ref(&req));
        place_and_allocate(pol, pl.as_mut(), &mut c, &req, 1);
        assert_eq!(c.nodes()[0].gpus[0].mem_mib, 16_000, "{pol}: GPU memory");
        assert_refused(pol, &idle, &share(pol, 500, 16_001), "16001 MiB on 16000");

        // CPU: exactly the node's CPU fits (CPU-only and GPU requests), one milli more does not.
        for gpu in [false, true] {
            let mut req = if gpu {
                share(pol, 500, 1000)
            } else {
                InstanceRequest::cpu_only(single_kind(pol), 4000, 1000)
            };
            req.cpu_milli = 4000;
            let mut c = small.clone();
            let mut pl = placer(pol, &c, std::slice::from_ref(&req));
            place_and_allocate(pol, pl.as_mut(), &mut c, &req, 1);
            assert_eq!(c.nodes()[0].cpu_used, 4000, "{pol}: CPU (gpu: {gpu})");
            req.cpu_milli = 4001;
            assert_refused(pol, &small, &req, "4001 milli CPU on 4000");
        }
    }
}

/// Releasing a policy's placement restores every node field and cluster total; a second release fails.
#[test]
fn release_restores_the_state_before_allocation() {
    let mut base = cluster(vec![
        node("a", "V100", 4, 16_000),
        node("b", "V100", 4, 16_000),
        cpu_node("c"),
    ]);
    occupy_with(&mut base, 1, 0, &[0], 300, 500, 2000, Some("svc"));
    occupy_with(&mut base, 2, 1, &[0], 1000, 1000, 8000, None);
    let mut cpu_pod = Placement::uniform(
        2,
        &InstanceRequest::cpu_only(InstanceKind::Pod, 2000, 4000),
        &[],
    );
    cpu_pod.instance = 3;
    base.allocate(&cpu_pod).expect("cpu pod");

    for pol in PlacerName::ALL {
        let mut svc = share(pol, 250, 3000);
        svc.service = Some("svc".into());
        svc.sm_limit = 400;
        let mut llm = gpu_req(InstanceKind::LlmInference, 1, 200, 300, 6000);
        llm.service = Some("llm".into());
        let reqs = vec![
            svc,
            share(pol, 1000, 4000),
            whole(pol, 2),
            llm,
            InstanceRequest::cpu_only(single_kind(pol), 1500, 3000),
        ];
        for (i, req) in reqs.iter().enumerate() {
            let mut c = base.clone();
            let before = snap(&c);
            let mut pl = placer(pol, &c, &reqs);
            let p = place_and_allocate(pol, pl.as_mut(), &mut c, req, 100 + i as u64);
            assert_ne!(
                snap(&c),
                before,
                "{pol}: request {i}: allocation changed nothing"
            );
            c.release(&p)
                .unwrap_or_else(|e| panic!("{pol}: request {i}: release failed: {e}"));
            assert_eq!(
                snap(&c),
                before,
                "{pol}: request {i}: release did not restore"
            );
            if req.gpu_count == 0 {
                // A CPU-only placement leaves no record to check a second release against; see
                // `release_of_a_never_allocated_cpu_only_placement_is_refused`.
                continue;
            }
            let again = c.release(&p);
            assert!(
                matches!(again, Err(CoreError::NotAllocated { .. })),
                "{pol}: request {i}: second release gave {again:?}"
            );
            assert_eq!(
                snap(&c),
                before,
                "{pol}: request {i}: failed release changed state"
            );
        }
    }
}

/// A CPU-only request gets no GPU shares from any policy and leaves GPUs and affinity counts untouched.
#[test]
fn cpu_only_requests_get_no_gpu_shares() {
    let mut base = cluster(vec![node("g", "V100", 4, 16_000), cpu_node("c")]);
    occupy(&mut base, 1, 0, &[1], 300, 300, 1000);
    for pol in PlacerName::ALL {
        let req = InstanceRequest::cpu_only(single_kind(pol), 2000, 4000);
        let mut c = base.clone();
        let before = snap(&c);
        let mut pl = placer(pol, &c, std::slice::from_ref(&req));
        let p = place_and_allocate(pol, pl.as_mut(), &mut c, &req, 7);
        assert!(p.shares.is_empty(), "{pol}: CPU-only got shares {p:?}");
        assert_eq!(p.affinity, None, "{pol}: CPU-only affinity");
        let after = snap(&c);
        let n = p.node;
        assert_eq!(
            after.nodes[n].cpu_used,
            before.nodes[n].cpu_used + 2000,
            "{pol}: cpu"
        );
        assert_eq!(
            after.nodes[n].mem_used,
            before.nodes[n].mem_used + 4000,
            "{pol}: mem"
        );
        assert_eq!(after.nodes[n].pods, before.nodes[n].pods + 1, "{pol}: pods");
        for (a, b) in after.nodes.iter().zip(&before.nodes) {
            assert_eq!(a.gpus, b.gpus, "{pol}: GPU state changed on {}", a.name);
            assert_eq!(
                a.affinity, b.affinity,
                "{pol}: affinity changed on {}",
                a.name
            );
        }
        assert_eq!(
            after.sm_requested, before.sm_requested,
            "{pol}: sm_requested"
        );
        assert_eq!(after.active_gpus, before.active_gpus, "{pol}: active_gpus");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// FGD family
// ---------------------------------------------------------------------------------------------------------------

/// Best-fit takes the node with the least free (CPU, GPU) after placement and its fullest fitting GPU.
#[test]
fn best_fit_picks_the_tighter_node_and_gpu() {
    // raw = ⌊100·(1 − [0.5·(cpuFree − c)/128000 + 0.5·(G_free − M)/8000])⌋ with c = 1000, M = 500:
    //   node 0 (idle):            1 − [0.5·63000/128000 + 0.5·7500/8000] = 1 − 0.71484 → 28
    //   node 1 (G_free 4700):     1 − [0.5·63000/128000 + 0.5·4200/8000] = 1 − 0.50859 → 49
    // Node 1 wins; its fitting GPUs have free 700 (GPU 5) and 1000 (0, 4, 6, 7): best fit takes GPU 5.
    let mut c = cluster(vec![
        node("a", "V100", 8, 16_000),
        node("b", "V100", 8, 16_000),
    ]);
    occupy(&mut c, 1, 1, &[1, 2, 3], 1000, 1000, 1000);
    occupy(&mut c, 2, 1, &[5], 300, 300, 1000);
    let req = share(PlacerName::BestFit, 500, 1000);
    let mut pl = placer(PlacerName::BestFit, &c, &[]);
    let p = pl.place(&c, &req).expect("best-fit places");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![5]), "best-fit");
}

/// Packing prefers an already shared GPU, then free GPUs of a used node, over an empty node.
#[test]
fn packing_prefers_shared_gpus_then_used_nodes() {
    // Share pod of 200:
    //   node 0, 4 idle GPUs: max(33 − 4, 4) = 29;
    //   node 1, GPU 1 has 700 free: f = 0, s = ⌊700·100/1000⌋ = 70, 100 − ⌊70/10⌋ = 93;
    //   node 2, GPU 0 full: chosen = one fully free GPU, f = 1: max(50 − 1, 33) = 49.
    // Node 1 wins, best-fit GPU there is GPU 1 (700 free < 1000).
    let mut c = cluster(vec![
        node("a", "V100", 4, 16_000),
        node("b", "V100", 4, 16_000),
        node("c", "V100", 4, 16_000),
    ]);
    occupy(&mut c, 1, 1, &[1], 300, 300, 1000);
    occupy(&mut c, 2, 2, &[0], 1000, 1000, 1000);
    let req = share(PlacerName::Packing, 200, 1000);
    let mut pl = placer(PlacerName::Packing, &c, &[]);
    let p = pl.place(&c, &req).expect("packing places");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![1]), "packing, share pod");

    // Whole GPU: node 0 → 29, node 1 → f = 1 → 49, node 2 → 49. The tie between 1 and 2 goes to the lower tie
    // rank (node 1); the lowest-index idle GPU there is GPU 0.
    let req = whole(PlacerName::Packing, 1);
    let p = pl.place(&c, &req).expect("packing places");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![0]), "packing, whole GPU");
}

/// Clustering prefers the node already holding pods of the request's affinity class (share or k-GPU).
#[test]
fn clustering_prefers_nodes_with_the_same_affinity_class() {
    // base = ⌊25·(8000 − G_free)/8000⌋:
    //   node 0: empty, base 0, no GPU pods → +25 = 25
    //   node 1: one share pod (300), base ⌊25·300/8000⌋ = 0
    //   node 2: one 1-GPU pod, base ⌊25·1000/8000⌋ = 3
    // Share pod: node 1 = 0 + 75 = 75, node 2 = 3 + 0 = 3 → node 1, best-fit GPU 0 (700 free).
    // Whole pod: node 1 = 0 + 0 = 0, node 2 = 3 + 75 = 78 → node 2, lowest idle GPU 1.
    let mut c = cluster(vec![
        node("a", "V100", 8, 16_000),
        node("b", "V100", 8, 16_000),
        node("c", "V100", 8, 16_000),
    ]);
    occupy(&mut c, 1, 1, &[0], 300, 300, 1000);
    occupy(&mut c, 2, 2, &[0], 1000, 1000, 1000);
    let mut pl = placer(PlacerName::Clustering, &c, &[]);
    let p = pl
        .place(&c, &share(PlacerName::Clustering, 500, 1000))
        .expect("clustering places");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![0]), "clustering, share pod");
    let p = pl
        .place(&c, &whole(PlacerName::Clustering, 1))
        .expect("clustering places");
    assert_eq!((p.node, gpus_of(&p)), (2, vec![1]), "clustering, whole pod");
}

/// FGD takes the (node, GPU) whose placement increases the typical-pod fragmentation least.
#[test]
fn fgd_picks_the_placement_that_grows_fragmentation_least() {
    // Typical pods: {share 500, 1 CPU} and {whole 1 GPU, 1 CPU}, each with probability 0.5.
    // F(node) = Σ_m p_m·(free GPU milli the pod m cannot use); CPU always fits.
    //   node 0, free [1000, 1000]: F = 0.
    //     after GPU 0 → [500, 1000]: the whole pod fits, strands 500 → F = 0.5·500 = 250;
    //     Δ = −250, score ⌊100·σ(−0.25)⌋ = 43 (GPU 1 is symmetric).
    //   node 1, free [500, 1000]: F = 0.5·500 = 250.
    //     after GPU 0 → [0, 1000]: F = 0, Δ = +250, score ⌊100·σ(0.25)⌋ = 56;
    //     after GPU 1 → [500, 500]: the whole pod fits nowhere → Q2 = 0.5·1000 = 500, Δ = −250 → 43.
    // FGD takes node 1, GPU 0.
    let typical = vec![
        gpu_req(InstanceKind::Pod, 1, 500, 500, 0),
        gpu_req(InstanceKind::Pod, 1, 1000, 1000, 0),
    ];
    let dist = TypicalPods::from_requests(typical.iter(), 95.0);
    assert_eq!(dist.pods.len(), 2, "both shapes kept");
    assert!(
        dist.pods.iter().all(|t| (t.prob - 0.5).abs() < 1e-12),
        "{dist:?}"
    );

    let mut c = cluster(vec![
        node("a", "V100", 2, 16_000),
        node("b", "V100", 2, 16_000),
    ]);
    occupy(&mut c, 1, 1, &[0], 500, 500, 0);
    let mut pl = placer(PlacerName::Fgd, &c, &typical);
    let req = gpu_req(InstanceKind::Pod, 1, 500, 500, 0);
    let p = pl.place(&c, &req).expect("fgd places");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![0]), "fgd");
}

/// FGD avoids the best-fit GPU when that GPU would keep a fragment no typical pod can use.
#[test]
fn fgd_avoids_a_gpu_choice_that_strands_a_fragment() {
    // Typical pods: {share 600} only. One node, free [700, 1000]: F = 0 (both GPUs fit 600).
    //   request 400 on GPU 0 → [300, 1000]: 300 stranded → F = 300, Δ = −300 → ⌊100·σ(−0.3)⌋ = 42;
    //   request 400 on GPU 1 → [700, 600]: F = 0, Δ = 0 → 50.
    // FGD takes GPU 1, where best-fit would take GPU 0.
    let typical = vec![gpu_req(InstanceKind::Pod, 1, 600, 600, 0)];
    let mut c = cluster(vec![node("a", "V100", 2, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 300, 300, 0);
    let req = gpu_req(InstanceKind::Pod, 1, 400, 400, 0);
    let p = placer(PlacerName::Fgd, &c, &typical)
        .place(&c, &req)
        .expect("fgd places");
    assert_eq!((p.node, gpus_of(&p)), (0, vec![1]), "fgd");
    let p = placer(PlacerName::BestFit, &c, &typical)
        .place(&c, &req)
        .expect("best-fit places");
    assert_eq!((p.node, gpus_of(&p)), (0, vec![0]), "best-fit");
}

/// In the FGD family (except random), equal node scores go to the lowest `tie_rank`, not the lowest index.
#[test]
fn fgd_family_ties_go_to_the_lowest_tie_rank() {
    let specs = vec![
        node("a", "V100", 4, 16_000),
        node("b", "V100", 4, 16_000),
        node("c", "V100", 4, 16_000),
    ];
    for pol in PlacerName::FGD_SIX
        .into_iter()
        .filter(|&p| p != PlacerName::Random)
    {
        let reqs = [
            share(pol, 300, 1000),
            whole(pol, 2),
            InstanceRequest::cpu_only(InstanceKind::Pod, 1000, 1000),
        ];
        for (ranks, winner) in [(None, 0), (Some([2, 0, 1]), 1), (Some([2, 1, 0]), 2)] {
            let mut c = cluster(specs.clone());
            if let Some(r) = ranks {
                c.set_tie_ranks(&r);
            }
            for req in &reqs {
                let p = placer(pol, &c, &reqs).place(&c, req).expect("placed");
                assert_eq!(
                    p.node, winner,
                    "{pol}: ranks {ranks:?}, {} GPUs: tie went to node {}",
                    req.gpu_count, p.node
                );
            }
        }
    }
}

/// Random gives the same placement sequence for the same seed on a fresh cluster, and differs across seeds.
#[test]
fn random_is_deterministic_for_a_seed() {
    let specs: Vec<NodeSpec> = (0..4)
        .map(|i| node(&format!("n{i}"), "V100", 2, 16_000))
        .collect();
    let req = share(PlacerName::Random, 300, 1000);
    let run = |seed: i64| -> Vec<(usize, Vec<u32>)> {
        let mut c = cluster(specs.clone());
        let mut pl = placer_seeded(PlacerName::Random, &c, &[], seed);
        (0..20)
            .map(|i| {
                let p = place_and_allocate(PlacerName::Random, pl.as_mut(), &mut c, &req, i);
                (p.node, gpus_of(&p))
            })
            .collect()
    };
    let first = run(11);
    assert_eq!(first, run(11), "random: same seed, different sequence");
    let distinct: std::collections::BTreeSet<_> = (0..8).map(run).collect();
    assert!(distinct.len() > 1, "random: 8 seeds gave one sequence");
}

// ---------------------------------------------------------------------------------------------------------------
// Dilu and its baselines
// ---------------------------------------------------------------------------------------------------------------

/// Dilu admits a limit only while Σlimit on the GPU stays ≤ γ·1000 = 1500 (1000 + 500 fits, 1000 + 600 not).
#[test]
fn dilu_bounds_limit_overcommit_by_gamma() {
    let mut c = cluster(vec![node("g", "V100", 1, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 300, 1000, 1000);
    let over = gpu_req(InstanceKind::Inference, 1, 300, 600, 1000);
    assert_refused(PlacerName::Dilu, &c, &over, "Σlimit 1600");
    let fits = gpu_req(InstanceKind::Inference, 1, 300, 500, 1000);
    let mut pl = placer(PlacerName::Dilu, &c, &[]);
    place_and_allocate(PlacerName::Dilu, pl.as_mut(), &mut c, &fits, 2);
    assert_eq!(c.nodes()[0].gpus[0].sm_limit, 1500, "dilu: Σlimit");
    // INFless-r ignores limits and would take the request refused by Dilu.
    let mut c2 = cluster(vec![node("g", "V100", 1, 16_000)]);
    occupy(&mut c2, 1, 0, &[0], 300, 1000, 1000);
    assert!(
        placer(PlacerName::InflessR, &c2, &[])
            .place(&c2, &over)
            .is_ok(),
        "infless-r refuses a limit over-commit"
    );
}

/// Dilu puts inference on an active GPU before an idle one, even when the idle one is a tighter 2D fit.
#[test]
fn dilu_prefers_an_active_gpu_over_an_idle_one() {
    // Within one node: GPU 1 is active.
    let mut c = cluster(vec![node("g", "V100", 2, 16_000)]);
    occupy(&mut c, 1, 0, &[1], 200, 200, 1000);
    let req = gpu_req(InstanceKind::Inference, 1, 300, 300, 1000);
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &req)
        .expect("placed");
    assert_eq!((p.node, gpus_of(&p)), (0, vec![1]), "dilu, same node");

    // Across nodes: on node 0's idle 16 GB GPU the fit score would be 0.6·0.7 + 0.4·0 = 0.42, on node 1's
    // active 80 GB GPU 0.6·0.6 + 0.4·(1 − 17000/80000) = 0.675; the active tier wins anyway.
    let mut c = cluster(vec![
        node("a", "V100", 1, 16_000),
        node("b", "A100", 1, 80_000),
    ]);
    occupy(&mut c, 1, 1, &[0], 100, 100, 1000);
    let req = gpu_req(InstanceKind::Inference, 1, 300, 300, 16_000);
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &req)
        .expect("placed");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![0]), "dilu, across nodes");
}

/// Dilu's 2D best fit among active GPUs takes the GPU left with the smallest α·SM + β·memory fragment.
#[test]
fn dilu_best_fit_in_two_dimensions() {
    // Request 200 SM, 4000 MiB on 16000 MiB GPUs:
    //   GPU 0 (500 SM, 1000 MiB used):  0.6·(1 − 0.7) + 0.4·(1 − 5000/16000)  = 0.18 + 0.275 = 0.455
    //   GPU 1 (300 SM, 10000 MiB used): 0.6·(1 − 0.5) + 0.4·(1 − 14000/16000) = 0.30 + 0.05  = 0.35
    // GPU 1 wins although it has more free SM.
    let mut c = cluster(vec![node("g", "V100", 3, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 500, 500, 1000);
    occupy(&mut c, 2, 0, &[1], 300, 300, 10_000);
    let req = gpu_req(InstanceKind::Inference, 1, 200, 200, 4000);
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &req)
        .expect("placed");
    assert_eq!(gpus_of(&p), vec![1], "dilu 2D best fit");
}

/// A Dilu training gang of 2 needs 2 fitting GPUs on one node; one free GPU on each of two nodes is refused.
#[test]
fn dilu_training_gang_stays_on_one_node() {
    let mut c = cluster(vec![
        node("a", "V100", 2, 16_000),
        node("b", "V100", 2, 16_000),
    ]);
    occupy(&mut c, 1, 0, &[0], 1000, 1000, 1000);
    let blocker = occupy_with(&mut c, 2, 1, &[1], 1000, 1000, 1000, None);
    let gang = gpu_req(InstanceKind::Training, 2, 500, 800, 4000);
    let before = snap(&c);
    let got = placer(PlacerName::Dilu, &c, &[]).place(&c, &gang);
    assert!(
        matches!(got, Err(Unschedulable::NoRoom(_))),
        "dilu: gang split over nodes: {got:?}"
    );
    assert_eq!(snap(&c), before, "dilu: cluster changed");
    c.release(&blocker).expect("release blocker");
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &gang)
        .expect("gang fits on node 1");
    assert_eq!((p.node, gpus_of(&p)), (1, vec![0, 1]), "dilu gang");
    assert!(
        p.shares
            .iter()
            .all(|s| s.sm_request == 500 && s.sm_limit == 800)
    );
}

/// Dilu places LLMs worst-fit on memory, then splits memory over active GPUs before taking an idle one.
#[test]
fn dilu_llm_worst_fit_then_memory_split() {
    // Worst fit: GPU 0 has 10000 MiB used, GPU 1 4000; both fit 6000 → the least used, GPU 1.
    let mut c = cluster(vec![node("g", "V100", 3, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 200, 200, 10_000);
    occupy(&mut c, 2, 0, &[1], 200, 200, 4000);
    let llm = gpu_req(InstanceKind::LlmInference, 1, 300, 400, 6000);
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &llm)
        .expect("placed");
    assert_eq!(gpus_of(&p), vec![1], "dilu LLM worst fit");

    // Split: 4000 and 6000 MiB free on the active GPUs, 9000 wanted, GPU 2 idle. Most used first: 4000 from
    // GPU 0, the remaining 5000 from GPU 1.
    let mut c = cluster(vec![node("g", "V100", 3, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 200, 200, 12_000);
    occupy(&mut c, 2, 0, &[1], 200, 200, 10_000);
    let before = snap(&c);
    let llm = gpu_req(InstanceKind::LlmInference, 1, 300, 400, 9000);
    let mut pl = placer(PlacerName::Dilu, &c, &[]);
    let p = place_and_allocate(PlacerName::Dilu, pl.as_mut(), &mut c, &llm, 3);
    assert_eq!(
        p.shares,
        vec![
            GpuShare {
                gpu: 0,
                sm_request: 300,
                sm_limit: 300,
                mem_mib: 4000
            },
            GpuShare {
                gpu: 1,
                sm_request: 300,
                sm_limit: 300,
                mem_mib: 5000
            },
        ],
        "dilu LLM split"
    );
    assert!(c.nodes()[0].gpus[2].is_idle(), "the idle GPU stays idle");
    c.release(&p).expect("release split");
    assert_eq!(snap(&c), before, "release of the split placement");
}

/// Exclusive never puts two instances on one GPU: two small instances take two GPUs, a third is refused.
#[test]
fn exclusive_never_shares_a_gpu() {
    let mut c = cluster(vec![node("g", "V100", 2, 16_000)]);
    let req = share(PlacerName::Exclusive, 100, 1000);
    let mut pl = placer(PlacerName::Exclusive, &c, &[]);
    let a = place_and_allocate(PlacerName::Exclusive, pl.as_mut(), &mut c, &req, 1);
    let b = place_and_allocate(PlacerName::Exclusive, pl.as_mut(), &mut c, &req, 2);
    assert_ne!(gpus_of(&a), gpus_of(&b), "exclusive: shared GPU");
    assert_refused(
        PlacerName::Exclusive,
        &c,
        &req,
        "third instance on two GPUs",
    );
    assert!(c.nodes()[0].gpus.iter().all(|g| g.residents.len() == 1));
}

/// INFless-l reserves the limit and refuses what INFless-r, reserving only the request, accepts.
#[test]
fn infless_l_refuses_what_infless_r_accepts() {
    let mut base = cluster(vec![node("g", "V100", 1, 16_000)]);
    occupy(&mut base, 1, 0, &[0], 600, 600, 1000);
    let req = gpu_req(InstanceKind::Inference, 1, 300, 500, 1000);
    assert_refused(
        PlacerName::InflessL,
        &base,
        &req,
        "limit above the free share",
    );

    let mut c = base.clone();
    let mut pl = placer(PlacerName::InflessR, &c, &[]);
    let p = place_and_allocate(PlacerName::InflessR, pl.as_mut(), &mut c, &req, 2);
    assert_eq!(
        p.shares[0].sm_request, 300,
        "infless-r reserves the request"
    );
    assert_eq!(c.nodes()[0].gpus[0].sm_request, 900);

    let fits = gpu_req(InstanceKind::Inference, 1, 300, 400, 1000);
    let mut c = base.clone();
    let mut pl = placer(PlacerName::InflessL, &c, &[]);
    let p = place_and_allocate(PlacerName::InflessL, pl.as_mut(), &mut c, &fits, 2);
    assert_eq!(p.shares[0].sm_request, 400, "infless-l reserves the limit");
    assert_eq!(c.nodes()[0].gpus[0].sm_request, 1000);
}

/// INFless best-fits on SM alone: the fitting GPU with the least free SM wins, whatever its memory.
#[test]
fn infless_best_fits_on_sm_only() {
    // GPU 0: 500 SM used, 1000 MiB; GPU 1: 200 SM, 14000 MiB. Dilu's 2D fit would prefer GPU 1
    // (0.6·0.5 + 0.4·0.0625 = 0.325 vs 0.6·0.2 + 0.4·0.875 = 0.47); INFless takes GPU 0 (SM only).
    let mut c = cluster(vec![node("g", "V100", 2, 16_000)]);
    occupy(&mut c, 1, 0, &[0], 500, 500, 1000);
    occupy(&mut c, 2, 0, &[1], 200, 200, 14_000);
    let req = gpu_req(InstanceKind::Inference, 1, 300, 300, 1000);
    for pol in [PlacerName::InflessL, PlacerName::InflessR] {
        let p = placer(pol, &c, &[]).place(&c, &req).expect("placed");
        assert_eq!(gpus_of(&p), vec![0], "{pol}");
    }
    let p = placer(PlacerName::Dilu, &c, &[])
        .place(&c, &req)
        .expect("placed");
    assert_eq!(gpus_of(&p), vec![1], "dilu");
}

// ---------------------------------------------------------------------------------------------------------------
// Known bugs
// ---------------------------------------------------------------------------------------------------------------

/// Every policy's placement fits the chosen GPUs' memory, so that `Cluster::allocate` accepts it.
#[test]
fn every_policy_chooses_a_gpu_with_enough_memory() {
    // GPU 0: 600 SM free but memory full; GPU 1 idle. A share pod of 300 SM / 8000 MiB fits only on GPU 1.
    let mut base = cluster(vec![node("g", "V100", 2, 16_000)]);
    occupy(&mut base, 1, 0, &[0], 400, 400, 16_000);
    // Multi-GPU, non-Pod (partial SM is valid): GPU 0 has SM but no memory; GPUs 1 and 2 are idle.
    let mut gang = cluster(vec![node("g", "V100", 3, 16_000)]);
    occupy(&mut gang, 1, 0, &[0], 400, 400, 16_000);
    let mut failures = Vec::new();
    for pol in PlacerName::ALL {
        let cases = [
            (&base, share(pol, 300, 8000), vec![1]),
            (
                &gang,
                gpu_req(InstanceKind::Training, 2, 500, 500, 8000),
                vec![1, 2],
            ),
        ];
        for (c, req, want) in cases {
            match placer(pol, c, std::slice::from_ref(&req)).place(c, &req) {
                Ok(p) => {
                    let mut c = c.clone();
                    if let Err(e) = c.allocate(&p) {
                        failures.push(format!("{pol}: {:?} → {e}", gpus_of(&p)));
                    } else if gpus_of(&p) != want {
                        failures.push(format!("{pol}: {:?}, want {want:?}", gpus_of(&p)));
                    }
                }
                Err(e) => failures.push(format!("{pol}: refused: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Releasing a smaller share than was allocated is refused and changes nothing.
#[test]
fn release_of_a_different_placement_is_refused() {
    let mut c = cluster(vec![node("g", "V100", 1, 16_000)]);
    let p = occupy_with(&mut c, 1, 0, &[0], 600, 600, 2000, None);
    let before = snap(&c);
    let mut smaller = p.clone();
    smaller.shares[0].sm_request = 300;
    smaller.shares[0].sm_limit = 300;
    let got = c.release(&smaller);
    assert!(got.is_err(), "release of a smaller share accepted");
    assert_eq!(snap(&c), before, "failed release changed the cluster");
}

/// Releasing a placement that names one GPU twice is an error (it matches no live placement), not a panic.
#[test]
fn release_with_a_gpu_named_twice_is_refused() {
    let mut c = cluster(vec![node("g", "V100", 1, 16_000)]);
    let p = occupy_with(&mut c, 1, 0, &[0], 600, 600, 2000, None);
    let before = snap(&c);
    let mut twice = p.clone();
    twice.shares = vec![
        GpuShare {
            gpu: 0,
            sm_request: 300,
            sm_limit: 300,
            mem_mib: 1000,
        };
        2
    ];
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.release(&twice)));
    assert!(
        matches!(got, Ok(Err(CoreError::NotAllocated { .. }))),
        "release named GPU 0 twice: {got:?}"
    );
    assert_eq!(snap(&c), before);
}

/// Releasing a never-allocated CPU-only placement is an error, as `Cluster::release` documents.
#[test]
fn release_of_a_never_allocated_cpu_only_placement_is_refused() {
    let mut c = cluster(vec![cpu_node("c")]);
    let req = InstanceRequest::cpu_only(InstanceKind::Pod, 2000, 2000);
    let mut real = Placement::uniform(0, &req, &[]);
    real.instance = 1;
    c.allocate(&real).expect("allocate");
    let before = snap(&c);
    let mut ghost = real.clone();
    ghost.instance = 2;
    assert!(
        c.release(&ghost).is_err(),
        "released instance 2, never allocated"
    );
    assert_eq!(snap(&c), before);
}

// ---------------------------------------------------------------------------------------------------------------
// InstanceRequest::validate
// ---------------------------------------------------------------------------------------------------------------

fn base_gpu_request() -> InstanceRequest {
    InstanceRequest {
        kind: InstanceKind::Inference,
        service: None,
        gpu_count: 1,
        sm_request: 300,
        sm_limit: 500,
        gpu_mem_mib: 1000,
        cpu_milli: 1000,
        mem_mib: 1000,
        gpu_types: Vec::new(),
    }
}

fn field_of(r: &InstanceRequest) -> Option<String> {
    r.validate().err().map(|e| e.field)
}

/// `validate` accepts CPU-only, share, whole-GPU and partial multi-GPU non-pod requests.
#[test]
fn validate_accepts_well_formed_requests() {
    assert_eq!(field_of(&base_gpu_request()), None);
    assert_eq!(
        field_of(&InstanceRequest::cpu_only(InstanceKind::Pod, 1000, 1000)),
        None
    );
    let whole = InstanceRequest {
        kind: InstanceKind::Pod,
        gpu_count: 4,
        sm_request: 1000,
        sm_limit: 1000,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&whole), None);
    let training = InstanceRequest {
        kind: InstanceKind::Training,
        gpu_count: 2,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&training), None);
    let exact = InstanceRequest {
        sm_request: 1000,
        sm_limit: 1000,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&exact), None);
}

/// `validate` rejects a request above its limit, naming `sm_limit`.
#[test]
fn validate_rejects_request_above_limit() {
    let r = InstanceRequest {
        sm_request: 500,
        sm_limit: 400,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_limit"));
}

/// `validate` rejects a limit (or request) above one GPU, naming the field.
#[test]
fn validate_rejects_more_than_one_gpu() {
    let r = InstanceRequest {
        sm_limit: 1001,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_limit"));
    let r = InstanceRequest {
        sm_request: 1001,
        sm_limit: 1001,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_request"));
}

/// `validate` rejects a GPU request with a zero SM request, naming `sm_request`.
#[test]
fn validate_rejects_zero_request_with_gpus() {
    let r = InstanceRequest {
        sm_request: 0,
        sm_limit: 0,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_request"));
    let r = InstanceRequest {
        sm_request: 0,
        sm_limit: 500,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_request"));
}

/// `validate` rejects GPU fields on a CPU-only request, naming each one.
#[test]
fn validate_rejects_gpu_fields_on_cpu_only_requests() {
    let cpu = InstanceRequest::cpu_only(InstanceKind::Pod, 1000, 1000);
    let r = InstanceRequest {
        sm_request: 100,
        sm_limit: 100,
        ..cpu.clone()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_request"));
    let r = InstanceRequest {
        sm_limit: 100,
        ..cpu.clone()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_limit"));
    let r = InstanceRequest {
        gpu_mem_mib: 100,
        ..cpu
    };
    assert_eq!(field_of(&r).as_deref(), Some("gpu_mem_mib"));
}

/// `validate` rejects a multi-GPU pod that does not take whole GPUs, naming `sm_request`.
#[test]
fn validate_rejects_partial_multi_gpu_pods() {
    let r = InstanceRequest {
        kind: InstanceKind::Pod,
        gpu_count: 2,
        sm_request: 500,
        sm_limit: 1000,
        ..base_gpu_request()
    };
    assert_eq!(field_of(&r).as_deref(), Some("sm_request"));
}

// ---------------------------------------------------------------------------------------------------------------
// Cluster::allocate / Cluster::release
// ---------------------------------------------------------------------------------------------------------------

fn small_cluster() -> Cluster {
    let mut spec = node("g", "V100", 2, 16_000);
    spec.cpu_milli = 4000;
    spec.mem_mib = 8000;
    spec.max_pods = 2;
    cluster(vec![spec])
}

fn share_on(gpu: u32, sm: u32, mem: u64) -> GpuShare {
    GpuShare {
        gpu,
        sm_request: sm,
        sm_limit: sm,
        mem_mib: mem,
    }
}

fn placement(id: u64, cpu: u64, mem: u64, shares: Vec<GpuShare>) -> Placement {
    let req = InstanceRequest {
        cpu_milli: cpu,
        mem_mib: mem,
        ..base_gpu_request()
    };
    let mut p = Placement::with_shares(0, &req, shares);
    p.instance = id;
    p
}

/// Asserts `allocate` refuses with `OverCapacity` on `resource` and changes nothing.
fn assert_over(c: &mut Cluster, p: &Placement, resource: &str) {
    let before = snap(c);
    match c.allocate(p) {
        Err(CoreError::OverCapacity { resource: r, .. }) => assert_eq!(r, resource),
        other => panic!("expected OverCapacity on {resource}, got {other:?}"),
    }
    assert_eq!(snap(c), before, "refused allocation changed the cluster");
}

/// `allocate` refuses CPU, memory, pod, GPU SM and GPU memory over-capacity, naming the resource.
#[test]
fn allocate_rejects_over_capacity_naming_the_resource() {
    let mut c = small_cluster();
    assert_over(&mut c, &placement(1, 4001, 0, vec![]), "cpu_milli");
    assert_over(&mut c, &placement(1, 0, 8001, vec![]), "mem_mib");
    assert_over(
        &mut c,
        &placement(1, 0, 0, vec![share_on(1, 1001, 0)]),
        "gpu 1 sm_request",
    );
    assert_over(
        &mut c,
        &placement(1, 0, 0, vec![share_on(0, 100, 0), share_on(1, 100, 16_001)]),
        "gpu 1 mem_mib",
    );
    c.allocate(&placement(1, 1000, 1000, vec![share_on(0, 700, 10_000)]))
        .expect("fits");
    assert_over(
        &mut c,
        &placement(2, 0, 0, vec![share_on(0, 301, 0)]),
        "gpu 0 sm_request",
    );
    assert_over(
        &mut c,
        &placement(2, 0, 0, vec![share_on(0, 300, 6001)]),
        "gpu 0 mem_mib",
    );
    c.allocate(&placement(2, 0, 0, vec![share_on(0, 300, 6000)]))
        .expect("exact fit");
    assert_over(&mut c, &placement(3, 0, 0, vec![]), "pods");
}

/// `allocate` refuses an out-of-range GPU, a GPU named twice and an unknown node, changing nothing.
#[test]
fn allocate_rejects_bad_gpu_indices_and_nodes() {
    let mut c = small_cluster();
    let before = snap(&c);
    let got = c.allocate(&placement(1, 0, 0, vec![share_on(2, 100, 0)]));
    assert_eq!(
        got,
        Err(CoreError::BadGpu {
            node: "g".into(),
            gpu: 2,
            rule: "no such GPU"
        })
    );
    // Each share alone fits; together they would overfill GPU 1.
    let got = c.allocate(&placement(
        1,
        0,
        0,
        vec![
            share_on(1, 600, 0),
            share_on(0, 100, 0),
            share_on(1, 600, 0),
        ],
    ));
    assert_eq!(
        got,
        Err(CoreError::BadGpu {
            node: "g".into(),
            gpu: 1,
            rule: "named twice in one placement"
        })
    );
    let mut p = placement(1, 0, 0, vec![share_on(0, 100, 0)]);
    p.node = 1;
    assert_eq!(c.allocate(&p), Err(CoreError::NoSuchNode(1)));
    assert_eq!(snap(&c), before, "refused allocations changed the cluster");
}

/// `release` of a never-allocated GPU placement (or bad GPU / node index) is an error and changes nothing.
#[test]
fn release_of_a_never_allocated_placement_is_an_error() {
    let mut c = small_cluster();
    let ghost = placement(5, 1000, 1000, vec![share_on(0, 300, 1000)]);
    let before = snap(&c);
    assert!(matches!(
        c.release(&ghost),
        Err(CoreError::NotAllocated { .. })
    ));
    assert_eq!(snap(&c), before, "empty cluster");

    // The same amounts are allocated, but under another instance id.
    c.allocate(&placement(1, 1000, 1000, vec![share_on(0, 300, 1000)]))
        .expect("allocate");
    let before = snap(&c);
    assert!(matches!(
        c.release(&ghost),
        Err(CoreError::NotAllocated { .. })
    ));
    assert_eq!(snap(&c), before, "other instance");

    // An affinity tag the node does not hold.
    let mut tagged = placement(1, 1000, 1000, vec![share_on(0, 300, 1000)]);
    tagged.affinity = Some(3);
    assert!(matches!(
        c.release(&tagged),
        Err(CoreError::NotAllocated { .. })
    ));
    assert_eq!(snap(&c), before, "wrong affinity tag");

    // A GPU index out of range, an unknown node: neither matches the live placement.
    let bad = placement(1, 0, 0, vec![share_on(7, 300, 1000)]);
    assert!(matches!(
        c.release(&bad),
        Err(CoreError::NotAllocated { .. })
    ));
    let mut far = placement(1, 1000, 1000, vec![share_on(0, 300, 1000)]);
    far.node = 3;
    assert!(matches!(
        c.release(&far),
        Err(CoreError::NotAllocated { .. })
    ));
    assert_eq!(snap(&c), before, "bad indices");
}
