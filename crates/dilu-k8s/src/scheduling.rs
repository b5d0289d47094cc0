//! Node constraints between Dilu's form ([`dilu_core::scheduling`]) and Kubernetes objects: the controller
//! writes a function's `scheduling` into its pods (`nodeSelector`, `tolerations`, required node affinity), and
//! dilu-scheduler reads them back from any pod it places, with the labels and taints of each Node, so that
//! what an admission webhook or an operator adds to a pod is honoured too.

use std::collections::BTreeMap;

use dilu_core::scheduling::{
    NodeSelectorTerm, PlacementRules, Requirement, SelectorOperator, Taint, TaintEffect,
    Toleration, TolerationOperator,
};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, PodSpec,
};
use k8s_openapi::api::core::v1::{
    NodeSelectorTerm as KubeTerm, Taint as KubeTaint, Toleration as KubeToleration,
};

/// Writes the node rules of `constraints` into a pod spec: `nodeSelector`, `tolerations` and the required node
/// affinity (other affinity the spec has is kept). The spread goes in the `dilu.io/spread` annotation.
pub fn write_pod_spec(constraints: &PlacementRules, spec: &mut PodSpec) {
    if !constraints.node_selector.is_empty() {
        spec.node_selector = Some(constraints.node_selector.clone());
    }
    if !constraints.tolerations.is_empty() {
        spec.tolerations = Some(
            constraints
                .tolerations
                .iter()
                .map(kube_toleration)
                .collect(),
        );
    }
    if !constraints.node_affinity.is_empty() {
        let required = NodeSelector {
            node_selector_terms: constraints.node_affinity.iter().map(kube_term).collect(),
        };
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .required_during_scheduling_ignored_during_execution = Some(required);
    }
}

/// Reads the node rules of a pod spec (the spread is the `dilu.io/spread` annotation's); `Err` names what cannot be read (an operator or effect Kubernetes
/// does not define, which its API server would have refused).
pub fn read_pod_spec(spec: &PodSpec) -> Result<PlacementRules, String> {
    let tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| dilu_toleration(t).map_err(|why| format!("spec.tolerations[{i}]: {why}")))
        .collect::<Result<Vec<_>, _>>()?;
    let node_affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|required| {
            required
                .node_selector_terms
                .iter()
                .enumerate()
                .map(|(i, term)| {
                    dilu_term(term).map_err(|why| {
                        format!(
                            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution\
                             .nodeSelectorTerms[{i}]: {why}"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(PlacementRules {
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        node_affinity,
        tolerations,
        spread: None,
    })
}

/// A Node's taints in Dilu's form; a taint with an effect Kubernetes does not define is left out.
pub fn node_taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t: &KubeTaint| {
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: TaintEffect::parse(&t.effect)?,
            })
        })
        .collect()
}

/// A Node's labels.
pub fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn kube_toleration(t: &Toleration) -> KubeToleration {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    KubeToleration {
        key: text(&t.key),
        operator: Some(t.operator.as_str().into()),
        value: text(&t.value),
        effect: t.effect.map(|e| e.as_str().into()),
        toleration_seconds: None,
    }
}

fn dilu_toleration(t: &KubeToleration) -> Result<Toleration, String> {
    let operator = t.operator.as_deref().unwrap_or_default();
    Ok(Toleration {
        key: t.key.clone().unwrap_or_default(),
        operator: TolerationOperator::parse(operator)
            .ok_or_else(|| format!("operator {operator:?} is neither Equal nor Exists"))?,
        value: t.value.clone().unwrap_or_default(),
        effect: match t.effect.as_deref() {
            None | Some("") => None,
            Some(e) => Some(TaintEffect::parse(e).ok_or_else(|| {
                format!("effect {e:?} is none of NoSchedule, PreferNoSchedule, NoExecute")
            })?),
        },
    })
}

fn kube_term(term: &NodeSelectorTerm) -> KubeTerm {
    let requirements = |rs: &[Requirement]| {
        (!rs.is_empty()).then(|| {
            rs.iter()
                .map(|r| NodeSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.as_str().into(),
                    values: (!r.values.is_empty()).then(|| r.values.clone()),
                })
                .collect()
        })
    };
    KubeTerm {
        match_expressions: requirements(&term.match_expressions),
        match_fields: requirements(&term.match_fields),
    }
}

fn dilu_term(term: &KubeTerm) -> Result<NodeSelectorTerm, String> {
    let requirements = |rs: &Option<Vec<NodeSelectorRequirement>>| {
        rs.iter()
            .flatten()
            .map(|r| {
                Ok(Requirement {
                    key: r.key.clone(),
                    operator: SelectorOperator::parse(&r.operator).ok_or_else(|| {
                        format!("operator {:?} is not a node selector operator", r.operator)
                    })?,
                    values: r.values.clone().unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(NodeSelectorTerm {
        match_expressions: requirements(&term.match_expressions)?,
        match_fields: requirements(&term.match_fields)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn constraints() -> PlacementRules {
        PlacementRules {
            node_selector: [("zone".to_string(), "a".to_string())].into(),
            node_affinity: vec![
                NodeSelectorTerm {
                    match_expressions: vec![Requirement {
                        key: "gpus".into(),
                        operator: SelectorOperator::Gt,
                        values: vec!["2".into()],
                    }],
                    match_fields: vec![Requirement {
                        key: "metadata.name".into(),
                        operator: SelectorOperator::NotIn,
                        values: vec!["n9".into()],
                    }],
                },
                NodeSelectorTerm {
                    match_expressions: vec![Requirement {
                        key: "spare".into(),
                        operator: SelectorOperator::Exists,
                        values: vec![],
                    }],
                    match_fields: vec![],
                },
            ],
            tolerations: vec![
                Toleration {
                    key: "gpu".into(),
                    operator: TolerationOperator::Exists,
                    value: String::new(),
                    effect: Some(TaintEffect::NoSchedule),
                },
                Toleration {
                    key: "team".into(),
                    operator: TolerationOperator::Equal,
                    value: "ml".into(),
                    effect: None,
                },
            ],
            spread: None,
        }
    }

    #[test]
    fn a_pod_spec_carries_the_constraints_and_reads_back_the_same() {
        let mut spec = PodSpec::default();
        write_pod_spec(&constraints(), &mut spec);
        assert_eq!(spec.node_selector.as_ref().unwrap()["zone"], "a");
        let t = &spec.tolerations.as_ref().unwrap()[0];
        assert_eq!(
            (
                t.key.as_deref(),
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (Some("gpu"), Some("Exists"), None, Some("NoSchedule"))
        );
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0].match_fields.as_ref().unwrap()[0].operator, "NotIn");
        assert_eq!(terms[1].match_expressions.as_ref().unwrap()[0].values, None);
        assert_eq!(read_pod_spec(&spec).unwrap(), constraints());
        // Nothing to write leaves the spec as it was.
        let mut plain = PodSpec::default();
        write_pod_spec(&PlacementRules::default(), &mut plain);
        assert_eq!(plain, PodSpec::default());
        assert_eq!(read_pod_spec(&plain).unwrap(), PlacementRules::default());
    }

    #[test]
    fn a_pod_spec_with_an_undefined_operator_is_refused_by_path() {
        let mut spec = PodSpec::default();
        write_pod_spec(&constraints(), &mut spec);
        spec.tolerations.as_mut().unwrap()[1].operator = Some("Matches".into());
        let e = read_pod_spec(&spec).unwrap_err();
        assert!(
            e.starts_with("spec.tolerations[1]: operator \"Matches\""),
            "{e}"
        );
        let mut spec = PodSpec::default();
        write_pod_spec(&constraints(), &mut spec);
        spec.affinity
            .as_mut()
            .unwrap()
            .node_affinity
            .as_mut()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_mut()
            .unwrap()
            .node_selector_terms[1]
            .match_expressions
            .as_mut()
            .unwrap()[0]
            .operator = "Near".into();
        let e = read_pod_spec(&spec).unwrap_err();
        assert!(e.contains("nodeSelectorTerms[1]: operator \"Near\""), "{e}");
    }

    #[test]
    fn a_node_offers_its_labels_and_defined_taints() {
        let node = Node {
            metadata: ObjectMeta {
                labels: Some([("zone".to_string(), "a".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![
                    KubeTaint {
                        key: "node.kubernetes.io/unreachable".into(),
                        value: None,
                        effect: "NoExecute".into(),
                        time_added: None,
                    },
                    KubeTaint {
                        key: "odd".into(),
                        value: Some("x".into()),
                        effect: "Sometimes".into(),
                        time_added: None,
                    },
                ]),
                ..NodeSpec::default()
            }),
            status: None,
        };
        assert_eq!(node_labels(&node)["zone"], "a");
        assert_eq!(
            node_taints(&node),
            [Taint {
                key: "node.kubernetes.io/unreachable".into(),
                value: String::new(),
                effect: TaintEffect::NoExecute,
            }]
        );
    }
}
