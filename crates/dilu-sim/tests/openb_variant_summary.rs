//! Every openb pod list FGD ships (`../shared/data/alibaba-gpu-v2023/csv/openb_pod_list_*.csv`) loads and runs
//! through FGD's experiment, summarised per variant as `dilu sim placement --pods DIR` prints it; on the
//! `default` list the medians over seeds 42..51 are FGD's published ones.

mod common;

use dilu_core::PlacerName;
use dilu_sim::csv::parse_csv;
use dilu_sim::openb::{read_openb_nodes, read_openb_pods};
use dilu_sim::openb_experiment::{pod_list_variants, summarize_variant};

#[test]
fn every_openb_variant_loads_and_fgd_summarises_it() {
    let Some(nodes_path) =
        common::shared_data("alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")
    else {
        return;
    };
    let Some(dir) = nodes_path.parent().map(std::path::Path::to_path_buf) else {
        panic!("{} has no parent directory", nodes_path.display());
    };
    let nodes = read_openb_nodes(&nodes_path).expect("node list");
    let variants = pod_list_variants(&dir).expect("directory");
    let names: Vec<&str> = variants.iter().map(|(v, _)| v.as_str()).collect();
    eprintln!("{} pod lists: {}", names.len(), names.join(" "));
    // FGD's families: default, cpuN (9), gpushareN (5), gpuspecN (5), multigpuN (4).
    assert_eq!(names.len(), 24, "{names:?}");
    for family in ["cpu", "gpushare", "gpuspec", "multigpu"] {
        assert!(names.iter().any(|n| n.starts_with(family)), "{family}");
    }
    for (variant, path) in &variants {
        let pods = read_openb_pods(path).unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert!(pods.len() > 7000, "{variant}: {} pods", pods.len());
        let s = summarize_variant(
            variant,
            &nodes,
            &pods,
            PlacerName::Fgd,
            &[42],
            1.3,
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{variant}: {e}"));
        let at = |pct: u32| {
            s.points
                .iter()
                .find(|p| p.arrived_pct == pct)
                .unwrap_or_else(|| panic!("{variant}: no {pct}% point"))
        };
        eprintln!(
            "{variant:<12} pods {:>6} failed {:>5}: unallocated {:6.2} % at 100 %, frag {:6.2} %",
            s.pods,
            s.failed_pods_median,
            at(100).unallocated_gpu_pct,
            at(100).frag_total_pct
        );
        // At half the capacity requested almost everything fits: about half the GPU is still free.
        assert!(
            (at(50).unallocated_gpu_pct - 50.0).abs() < 2.5,
            "{variant}: {:?}",
            at(50)
        );
        // Unallocated GPU only falls as pods arrive; the 130 % load leaves pods unplaced.
        for w in s.points.windows(2) {
            assert!(
                w[1].unallocated_gpu_pct <= w[0].unallocated_gpu_pct + 1e-9,
                "{variant}: {w:?}"
            );
        }
        assert!(s.failed_pods_median > 0.0, "{variant}");
        assert!(
            s.points.iter().all(
                |p| p.frag_total_pct >= 0.0 && p.frag_total_pct <= p.unallocated_gpu_pct + 1e-9
            ),
            "{variant}: fragment is part of the unallocated GPU: {:?}",
            s.points
        );
    }
}

#[test]
fn default_variant_medians_over_ten_seeds_are_fgd_s() {
    let Some(summary) = common::shared_data("fgd-expected/summary_unalloc_gpu_pct_default.csv")
    else {
        return;
    };
    let Some(nodes_path) =
        common::shared_data("alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")
    else {
        return;
    };
    let Some(pods_path) = common::shared_data("alibaba-gpu-v2023/csv/openb_pod_list_default.csv")
    else {
        return;
    };
    let text = std::fs::read_to_string(&summary).expect("summary");
    let published: Vec<(u32, f64)> = parse_csv(&text)
        .expect("csv")
        .into_iter()
        .skip(1)
        .filter(|r| r.fields[2] == "06-FGD")
        .map(|r| {
            (
                r.fields[1].parse().expect("pct"),
                r.fields[3].parse().expect("median"),
            )
        })
        .collect();
    assert_eq!(published.len(), 8, "80, 90, 95, 100, 105, 110, 120, 130");
    let nodes = read_openb_nodes(&nodes_path).expect("nodes");
    let pods = read_openb_pods(&pods_path).expect("pods");
    let seeds: Vec<i64> = (42..=51).collect();
    let s = summarize_variant(
        "default",
        &nodes,
        &pods,
        PlacerName::Fgd,
        &seeds,
        1.3,
        &mut |_, _| {},
    )
    .expect("runs");
    let mut compared = 0;
    for (pct, want) in published {
        // The summary has the levels 50, 60, …, 130; 95 and 105 are not among them.
        let Some(got) = s
            .points
            .iter()
            .find(|p| p.arrived_pct == pct)
            .map(|p| p.unallocated_gpu_pct)
        else {
            continue;
        };
        compared += 1;
        eprintln!(
            "default, FGD, arrived {pct}%: median unallocated {got:.2} (FGD published {want:.2})"
        );
        assert!((got - want).abs() <= 0.1 + 1e-9, "{pct}%: {got} vs {want}");
    }
    assert_eq!(compared, 6);
}
