//! Every openb pod list FGD ships reads, whatever columns it has: the `multigpu` lists carry only
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli` (no `gpu_spec`, `qos`, `pod_phase` or times), and FGD's simulator
//! reads the absent columns as empty.

mod common;

use dilu_sim::openb::read_openb_pods;

#[test]
fn every_openb_pod_list_variant_reads() {
    let Some(dir) = common::shared_data("alibaba-gpu-v2023/csv") else {
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("openb_pod_list_") && n.ends_with(".csv"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "openb pod lists found: {files:?}");
    let mut without_spec = 0;
    for file in &files {
        let pods = read_openb_pods(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(pods.len() > 1000, "{}: {} pods", file.display(), pods.len());
        let header = std::fs::read_to_string(file).unwrap();
        let header = header.lines().next().unwrap();
        if !header.split(',').any(|c| c.trim() == "gpu_spec") {
            without_spec += 1;
            assert!(
                pods.iter().all(|p| p.request.gpu_types.is_empty()),
                "{}: no gpu_spec column, so no model constraint",
                file.display()
            );
        }
        let name = file.file_name().unwrap().to_string_lossy();
        if name.contains("multigpu") {
            assert!(
                pods.iter().any(|p| p.request.gpu_count > 1),
                "{name}: a multi-GPU list has multi-GPU pods"
            );
        }
    }
    assert_eq!(without_spec, 4, "the four multigpu lists lack gpu_spec");
}
