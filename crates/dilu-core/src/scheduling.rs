//! Which nodes an instance may run on, in Kubernetes' own terms so that an operator's cluster rules apply to
//! Dilu's instances unchanged: a node selector (labels the node must carry), required node affinity (terms of
//! label expressions, any of which must hold) and tolerations (a node's `NoSchedule`/`NoExecute` taints keep
//! off every instance that does not tolerate each of them).
//!
//! The rules are kube-scheduler's (`NodeAffinity` and `TaintToleration` filters, Kubernetes 1.20):
//! - a node selector matches when every key is a label of the node with exactly that value;
//! - required node affinity matches when at least one term matches; a term matches when all its expressions
//!   and fields do, and a term with neither matches no node;
//! - `In`/`NotIn` compare the label's value with a list (`NotIn` also holds when the label is absent),
//!   `Exists`/`DoesNotExist` look at the key only, `Gt`/`Lt` compare the label and the one value as integers
//!   (an absent or non-integer label does not match); fields name the node (`metadata.name`, `In`/`NotIn`);
//! - a toleration tolerates a taint when its effect is empty or equal, its key is empty (with `Exists`: every
//!   key) or equal, and with `Equal` (the default) its value is equal; `Exists` ignores the value;
//! - `PreferNoSchedule` taints never forbid a node (kube-scheduler only scores them): the ledger places on a
//!   node with one the instance does not tolerate only when no other allowed node has room.
//!
//! What a node offers is [`NodeInventory`]'s `labels` and `taints`; the ledger applies the constraints before
//! its placer ranks the nodes ([`crate::ledger::Ledger::place_where`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, GpuState, Resident};
use crate::error::FieldError;
use crate::ledger::NodeInventory;

/// What a taint does to instances that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TaintEffect {
    /// No new instance is placed on the node.
    NoSchedule,
    /// Placement avoids the node when it can (never forbids it).
    PreferNoSchedule,
    /// No new instance is placed, and Kubernetes evicts running pods that do not tolerate it.
    NoExecute,
}

impl TaintEffect {
    /// The name as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }

    /// Parses the Kubernetes name.
    pub fn parse(text: &str) -> Option<TaintEffect> {
        match text {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }

    /// Whether an untolerated taint of this effect keeps new instances off the node.
    pub fn forbids(self) -> bool {
        !matches!(self, TaintEffect::PreferNoSchedule)
    }
}

/// A taint of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Taint {
    /// Its key.
    pub key: String,
    /// Its value (may be empty).
    #[serde(default)]
    pub value: String,
    /// Its effect.
    pub effect: TaintEffect,
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect.as_str())
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect.as_str())
        }
    }
}

/// How a toleration compares its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TolerationOperator {
    /// Key and value equal.
    #[default]
    Equal,
    /// Key equal (or empty: any key), any value.
    Exists,
}

impl TolerationOperator {
    /// The name as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Equal => "Equal",
            TolerationOperator::Exists => "Exists",
        }
    }

    /// Parses the Kubernetes name (empty is `Equal`, as in a pod spec).
    pub fn parse(text: &str) -> Option<TolerationOperator> {
        match text {
            "" | "Equal" => Some(TolerationOperator::Equal),
            "Exists" => Some(TolerationOperator::Exists),
            _ => None,
        }
    }
}

/// A toleration: lets an instance onto nodes with a matching taint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint key it tolerates; empty with `Exists` tolerates every key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `Equal` (default) or `Exists`.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The value it tolerates (`Equal` only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The effect it tolerates; empty tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether it tolerates `taint` (kube's `ToleratesTaint`).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.key.is_empty() && self.operator != TolerationOperator::Exists {
            return Err(FieldError::new(
                "operator",
                "Equal",
                "a toleration without a key must use operator Exists (it then tolerates every taint)",
            ));
        }
        if !self.key.is_empty() {
            check_label_key(&self.key).map_err(|rule| FieldError::new("key", &self.key, rule))?;
        }
        if self.operator == TolerationOperator::Exists && !self.value.is_empty() {
            return Err(FieldError::new(
                "value",
                &self.value,
                "must be empty with operator Exists",
            ));
        }
        check_label_value(&self.value).map_err(|rule| FieldError::new("value", &self.value, rule))
    }
}

/// How a node selector requirement compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater than the one value.
    Gt,
    /// The label's value, as an integer, is less than the one value.
    Lt,
}

impl SelectorOperator {
    /// Every operator.
    pub const ALL: [SelectorOperator; 6] = [
        SelectorOperator::In,
        SelectorOperator::NotIn,
        SelectorOperator::Exists,
        SelectorOperator::DoesNotExist,
        SelectorOperator::Gt,
        SelectorOperator::Lt,
    ];

    /// The name as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
            SelectorOperator::Gt => "Gt",
            SelectorOperator::Lt => "Lt",
        }
    }

    /// Parses the Kubernetes name.
    pub fn parse(text: &str) -> Option<SelectorOperator> {
        Self::ALL.into_iter().find(|op| op.as_str() == text)
    }
}

/// One requirement of a node selector term: a key, an operator and values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// A label key (in `match_expressions`) or `metadata.name` (in `match_fields`).
    pub key: String,
    /// How to compare.
    pub operator: SelectorOperator,
    /// The values (`In`/`NotIn`: at least one; `Gt`/`Lt`: one integer; `Exists`/`DoesNotExist`: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `value` (the label's, or `None` when the node lacks it) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
            SelectorOperator::Gt | SelectorOperator::Lt => {
                let (Some(Ok(have)), Some(Ok(bound))) = (
                    value.map(|v| v.parse::<i64>()),
                    self.values.first().map(|v| v.parse::<i64>()),
                ) else {
                    return false;
                };
                if self.operator == SelectorOperator::Gt {
                    have > bound
                } else {
                    have < bound
                }
            }
        }
    }

    fn validate(&self, field: bool) -> Result<(), FieldError> {
        if field {
            if self.key != "metadata.name" {
                return Err(FieldError::new(
                    "key",
                    &self.key,
                    "the only node field is metadata.name",
                ));
            }
            if !matches!(
                self.operator,
                SelectorOperator::In | SelectorOperator::NotIn
            ) {
                return Err(FieldError::new(
                    "operator",
                    self.operator.as_str(),
                    "metadata.name is compared with In or NotIn",
                ));
            }
        } else {
            check_label_key(&self.key).map_err(|rule| FieldError::new("key", &self.key, rule))?;
        }
        let values = format!("{:?}", self.values);
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn if self.values.is_empty() => Err(
                FieldError::new("values", values, "In and NotIn need at least one value"),
            ),
            SelectorOperator::Exists | SelectorOperator::DoesNotExist
                if !self.values.is_empty() =>
            {
                Err(FieldError::new(
                    "values",
                    values,
                    "must be empty with Exists and DoesNotExist",
                ))
            }
            SelectorOperator::Gt | SelectorOperator::Lt
                if self.values.len() != 1 || self.values[0].parse::<i64>().is_err() =>
            {
                Err(FieldError::new(
                    "values",
                    values,
                    "Gt and Lt take exactly one integer",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// One term of required node affinity: every expression (on labels) and field (on the node's name) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeSelectorTerm {
    /// Requirements on the node's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
    /// Requirements on the node's fields (`metadata.name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<Requirement>,
}

impl NodeSelectorTerm {
    /// Whether the term holds on `node`; a term with no requirement matches nothing.
    pub fn matches(&self, node: &NodeInventory) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(node.labels.get(&r.key).map(String::as_str)))
            && self
                .match_fields
                .iter()
                .all(|r| r.matches(Some(node.name.as_str())))
    }
}

/// Where an instance may run: which nodes (selector, affinity, tolerations) and how its function's replicas
/// spread over nodes or devices. The default allows every node without a `NoSchedule`/`NoExecute` taint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PlacementRules {
    /// Labels the node must carry, with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: the node matches at least one term (none: no constraint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<NodeSelectorTerm>,
    /// Taints the instance tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How the function's replicas spread (none: wherever the placer packs them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// What replicas spread across: each node, each device, or each value of a node label (a topology key such as
/// `topology.kubernetes.io/zone`). Written as `node`, `device` or the label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SpreadDomain {
    /// Nodes: losing a node loses as few replicas as the spread allows.
    Node,
    /// Devices (GPUs, or CPU devices): a device fault or a burst on one device hits as few as it allows.
    Device,
    /// The values of a node label: nodes with the same value form one domain; a node without the label takes
    /// no replica (Kubernetes' topology spread does the same).
    Label(String),
}

impl SpreadDomain {
    /// The name used in specs and messages (`node`, `device` or the label key).
    pub fn as_str(&self) -> &str {
        match self {
            SpreadDomain::Node => "node",
            SpreadDomain::Device => "device",
            SpreadDomain::Label(key) => key,
        }
    }
}

impl From<String> for SpreadDomain {
    fn from(text: String) -> Self {
        match text.as_str() {
            "node" => SpreadDomain::Node,
            "device" => SpreadDomain::Device,
            _ => SpreadDomain::Label(text),
        }
    }
}

impl From<SpreadDomain> for String {
    fn from(domain: SpreadDomain) -> Self {
        domain.as_str().to_string()
    }
}

/// How a function's replicas spread, with Kubernetes' topology-spread arithmetic: a new replica may go to a
/// domain only if, with it, that domain holds at most `max_skew` more replicas than the emptiest allowed domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// `node`, `device`, or a node label key whose values are the domains (`topology.kubernetes.io/zone`).
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub across: SpreadDomain,
    /// The largest difference allowed between the fullest and the emptiest domain (at least 1; default 1).
    #[serde(default = "one")]
    pub max_skew: u32,
    /// `true`: a replica waits rather than break the spread (Kubernetes' `DoNotSchedule`); `false` (default):
    /// the spread is preferred, and a replica that fits nowhere else is placed anyway (`ScheduleAnyway`).
    #[serde(default)]
    pub required: bool,
}

fn one() -> u32 {
    1
}

/// Why a node is not one an instance may run on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeMismatch {
    /// A label of the node selector is missing or has another value.
    Selector,
    /// No term of the required node affinity matches.
    Affinity,
    /// A taint with a forbidding effect that no toleration tolerates.
    Taint(Taint),
}

impl fmt::Display for NodeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeMismatch::Selector => f.write_str("didn't match the node selector"),
            NodeMismatch::Affinity => f.write_str("didn't match the required node affinity"),
            NodeMismatch::Taint(t) => write!(f, "had the taint {t}, not tolerated"),
        }
    }
}

impl PlacementRules {
    /// Whether there is nothing beyond the default (which still keeps instances off tainted nodes).
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty()
            && self.node_affinity.is_empty()
            && self.tolerations.is_empty()
            && self.spread.is_none()
    }

    /// Whether an instance under these constraints may run on `node`, and if not, the first reason (the taint
    /// first, then the selector, then the affinity).
    pub fn check(&self, node: &NodeInventory) -> Result<(), NodeMismatch> {
        if let Some(taint) = node
            .taints
            .iter()
            .find(|t| t.effect.forbids() && !self.tolerations.iter().any(|x| x.tolerates(t)))
        {
            return Err(NodeMismatch::Taint(taint.clone()));
        }
        if !self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return Err(NodeMismatch::Selector);
        }
        if !self.node_affinity.is_empty() && !self.node_affinity.iter().any(|t| t.matches(node)) {
            return Err(NodeMismatch::Affinity);
        }
        Ok(())
    }

    /// Whether `node` has a `PreferNoSchedule` taint these rules do not tolerate: such a node is used only when
    /// no other allowed node has room (kube-scheduler lowers its score; Dilu's placers rank by their own
    /// policy, so the ledger tries the others first).
    pub fn avoids(&self, node: &NodeInventory) -> bool {
        node.taints.iter().any(|t| {
            t.effect == TaintEffect::PreferNoSchedule
                && !self.tolerations.iter().any(|x| x.tolerates(t))
        })
    }

    /// Checks the rules Kubernetes checks on the same fields (keys and values as labels allow, operators with
    /// the values they take, a toleration without a key only with `Exists`); fields are named as in a spec
    /// (`node_selector.<key>`, `node_affinity[i].match_expressions[j].values`, `tolerations[i].operator`).
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(spread) = &self.spread {
            if spread.max_skew == 0 {
                return Err(FieldError::new(
                    "spread.max_skew",
                    0,
                    "must be at least 1 (0 would allow no replica anywhere once one runs)",
                ));
            }
            if let SpreadDomain::Label(key) = &spread.across {
                check_label_key(key).map_err(|rule| {
                    FieldError::new(
                        "spread.across",
                        key,
                        format!("node, device, or a node label key: {rule}"),
                    )
                })?;
            }
        }
        for (k, v) in &self.node_selector {
            check_label_key(k).map_err(|rule| FieldError::new("node_selector", k, rule))?;
            check_label_value(v)
                .map_err(|rule| FieldError::new(format!("node_selector.{k}"), v, rule))?;
        }
        for (i, term) in self.node_affinity.iter().enumerate() {
            let at = format!("node_affinity[{i}]");
            if term.match_expressions.is_empty() && term.match_fields.is_empty() {
                return Err(FieldError::new(
                    at,
                    "{}",
                    "a term needs match_expressions or match_fields (an empty term matches no node)",
                ));
            }
            for (j, r) in term.match_expressions.iter().enumerate() {
                r.validate(false)
                    .map_err(|e| e.within(&format!("{at}.match_expressions[{j}]")))?;
            }
            for (j, r) in term.match_fields.iter().enumerate() {
                r.validate(true)
                    .map_err(|e| e.within(&format!("{at}.match_fields[{j}]")))?;
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            t.validate()
                .map_err(|e| e.within(&format!("tolerations[{i}]")))?;
        }
        Ok(())
    }
}

/// Marks excluded, in `cluster`, where one more replica of `service` would break `spread`: among the nodes not
/// already excluded (by node rules), each node (or GPU, or node with the label value `label_of(node, key)`
/// gives) whose domain would hold more than `spread.max_skew` replicas above the emptiest such domain; for a label, also the
/// nodes without it. Replicas are counted from the GPUs' residents (a replica on several GPUs of one node
/// counts once for the node and once per GPU). Returns how many nodes or GPUs it marked; the caller places and
/// then clears the marks ([`Cluster::clear_excluded`]). The ledger and the simulator both place through it.
pub fn exclude_for_spread(
    cluster: &mut Cluster,
    service: &str,
    spread: &Spread,
    label_of: &dyn Fn(usize, &str) -> Option<String>,
) -> usize {
    let nodes = cluster.nodes();
    let allowed: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].excluded).collect();
    fn mine<'a>(g: &'a GpuState, service: &'a str) -> impl Iterator<Item = &'a Resident> {
        g.residents
            .iter()
            .filter(move |r| r.service.as_deref() == Some(service))
    }
    let per_device = |i: usize| {
        nodes[i]
            .gpus
            .iter()
            .map(|g| mine(g, service).count() as u32)
    };
    // A replica on several GPUs of one node counts once for the node.
    let per_node = |i: usize| {
        let ids: BTreeSet<u64> = nodes[i]
            .gpus
            .iter()
            .flat_map(|g| mine(g, service).map(|r| r.instance))
            .collect();
        ids.len() as u32
    };
    let over = |count: u32, min: u32| count + 1 - min > spread.max_skew;
    let mut nodes_out = Vec::new();
    let mut gpus_out = Vec::new();
    match &spread.across {
        SpreadDomain::Node => {
            let counts: Vec<u32> = allowed.iter().map(|&i| per_node(i)).collect();
            let min = counts.iter().copied().min().unwrap_or(0);
            for (k, &i) in allowed.iter().enumerate() {
                if over(counts[k], min) {
                    nodes_out.push(i);
                }
            }
        }
        SpreadDomain::Device => {
            let counts: Vec<Vec<u32>> = allowed.iter().map(|&i| per_device(i).collect()).collect();
            let min = counts.iter().flatten().copied().min().unwrap_or(0);
            for (k, &i) in allowed.iter().enumerate() {
                for (g, &count) in counts[k].iter().enumerate() {
                    if over(count, min) {
                        gpus_out.push((i, g));
                    }
                }
            }
        }
        SpreadDomain::Label(key) => {
            let domains: Vec<Option<String>> = allowed.iter().map(|&i| label_of(i, key)).collect();
            let mut per_domain: BTreeMap<&String, u32> = BTreeMap::new();
            for (k, &i) in allowed.iter().enumerate() {
                if let Some(value) = &domains[k] {
                    *per_domain.entry(value).or_default() += per_node(i);
                }
            }
            let min = per_domain.values().copied().min().unwrap_or(0);
            for (k, &i) in allowed.iter().enumerate() {
                let keep = domains[k]
                    .as_ref()
                    .is_some_and(|v| !over(per_domain[v], min));
                if !keep {
                    nodes_out.push(i);
                }
            }
        }
    }
    for &i in &nodes_out {
        cluster.set_excluded(i, true);
    }
    for &(i, g) in &gpus_out {
        cluster.set_gpu_excluded(i, g, true);
    }
    nodes_out.len() + gpus_out.len()
}

/// The labels Kubernetes' kubelet puts on every node, for a node that is not a Kubernetes Node (the one
/// `dilu up` runs): `kubernetes.io/hostname` (its name), `kubernetes.io/os` and `kubernetes.io/arch` (Go's
/// names: `amd64`, `arm64`), so that a spec written for a cluster selects the same way on one machine.
pub fn well_known_labels(node: &str) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    [
        ("kubernetes.io/hostname", node),
        ("kubernetes.io/os", std::env::consts::OS),
        ("kubernetes.io/arch", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A label key as Kubernetes allows it: an optional DNS-subdomain prefix (at most 253 characters) and `/`,
/// then a name of 1–63 characters of `[A-Za-z0-9._-]` starting and ending with a letter or digit.
fn check_label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(
                "a key's prefix must be a DNS subdomain (lower-case letters, digits, '-' and '.')",
            );
        }
    }
    if name.is_empty() || check_label_value(name).is_err() {
        return Err(
            "a key's name must be 1-63 characters of [A-Za-z0-9._-], starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// A label value as Kubernetes allows it: empty, or 1–63 characters of `[A-Za-z0-9._-]` starting and ending
/// with a letter or digit.
fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if value.len() > 63
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !edge(value.chars().next())
        || !edge(value.chars().last())
    {
        return Err(
            "must be at most 63 characters of [A-Za-z0-9._-], starting and ending with a letter or digit",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[Taint]) -> NodeInventory {
        NodeInventory {
            name: name.into(),
            devices: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints: taints.to_vec(),
        }
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn tolerations_follow_kubernetes_matching() {
        use TaintEffect::*;
        let t = taint("dedicated", "ml", NoSchedule);
        let tol = |key: &str, op, value: &str, effect| Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
        };
        use TolerationOperator::{Equal, Exists};
        assert!(tol("dedicated", Equal, "ml", Some(NoSchedule)).tolerates(&t));
        assert!(
            tol("dedicated", Equal, "ml", None).tolerates(&t),
            "no effect: every effect"
        );
        assert!(
            !tol("dedicated", Equal, "web", None).tolerates(&t),
            "another value"
        );
        assert!(
            !tol("dedicated", Equal, "ml", Some(NoExecute)).tolerates(&t),
            "another effect"
        );
        assert!(
            tol("dedicated", Exists, "", None).tolerates(&t),
            "Exists ignores the value"
        );
        assert!(!tol("other", Exists, "", None).tolerates(&t), "another key");
        assert!(
            tol("", Exists, "", None).tolerates(&t),
            "no key with Exists: everything"
        );
        assert!(
            !tol("", Exists, "", Some(NoExecute)).tolerates(&t),
            "…of that effect only"
        );
        let empty_value = taint("gpu", "", NoSchedule);
        assert!(tol("gpu", Equal, "", None).tolerates(&empty_value));
    }

    #[test]
    fn taints_forbid_unless_tolerated_and_prefer_no_schedule_never_forbids() {
        let n = node(
            "n",
            &[],
            &[
                taint("soft", "", TaintEffect::PreferNoSchedule),
                taint("gpu", "h100", TaintEffect::NoSchedule),
                taint("drain", "", TaintEffect::NoExecute),
            ],
        );
        let mut c = PlacementRules::default();
        assert_eq!(
            c.check(&n),
            Err(NodeMismatch::Taint(taint(
                "gpu",
                "h100",
                TaintEffect::NoSchedule
            )))
        );
        c.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            ..Default::default()
        });
        assert_eq!(
            c.check(&n),
            Err(NodeMismatch::Taint(taint(
                "drain",
                "",
                TaintEffect::NoExecute
            ))),
            "every forbidding taint must be tolerated"
        );
        c.tolerations.push(Toleration {
            key: "drain".into(),
            effect: Some(TaintEffect::NoExecute),
            ..Default::default()
        });
        assert_eq!(
            c.check(&n),
            Ok(()),
            "the PreferNoSchedule taint does not forbid"
        );
        assert_eq!(
            PlacementRules::default().check(&node("clean", &[], &[])),
            Ok(()),
            "the default allows an untainted node"
        );
        assert_eq!(
            NodeMismatch::Taint(taint("gpu", "h100", TaintEffect::NoSchedule)).to_string(),
            "had the taint gpu=h100:NoSchedule, not tolerated"
        );
    }

    #[test]
    fn selector_needs_every_label_with_its_value() {
        let n = node("n", &[("zone", "a"), ("gpu", "h100")], &[]);
        let mut c = PlacementRules::default();
        c.node_selector.insert("zone".into(), "a".into());
        assert_eq!(c.check(&n), Ok(()));
        c.node_selector.insert("gpu".into(), "a100".into());
        assert_eq!(c.check(&n), Err(NodeMismatch::Selector));
        c.node_selector.insert("gpu".into(), "h100".into());
        c.node_selector.insert("rack".into(), "1".into());
        assert_eq!(c.check(&n), Err(NodeMismatch::Selector), "a missing label");
    }

    #[test]
    fn affinity_terms_are_ored_and_their_requirements_anded() {
        use SelectorOperator::*;
        let n = node("node-7", &[("zone", "a"), ("gpus", "8")], &[]);
        let term = |exprs: Vec<Requirement>, fields: Vec<Requirement>| NodeSelectorTerm {
            match_expressions: exprs,
            match_fields: fields,
        };
        let holds = |r: Requirement| term(vec![r], vec![]).matches(&n);
        assert!(holds(req("zone", In, &["a", "b"])));
        assert!(!holds(req("zone", In, &["b"])));
        assert!(!holds(req("rack", In, &["a"])), "In needs the label");
        assert!(holds(req("zone", NotIn, &["b"])));
        assert!(!holds(req("zone", NotIn, &["a"])));
        assert!(
            holds(req("rack", NotIn, &["a"])),
            "NotIn holds without the label"
        );
        assert!(holds(req("zone", Exists, &[])));
        assert!(!holds(req("rack", Exists, &[])));
        assert!(holds(req("rack", DoesNotExist, &[])));
        assert!(!holds(req("zone", DoesNotExist, &[])));
        assert!(holds(req("gpus", Gt, &["4"])));
        assert!(!holds(req("gpus", Gt, &["8"])), "strictly greater");
        assert!(holds(req("gpus", Lt, &["9"])));
        assert!(!holds(req("zone", Gt, &["1"])), "a non-integer label");
        assert!(!holds(req("rack", Lt, &["1"])), "an absent label");
        assert!(term(vec![], vec![req("metadata.name", In, &["node-7"])]).matches(&n));
        assert!(!term(vec![], vec![req("metadata.name", NotIn, &["node-7"])]).matches(&n));
        assert!(
            !term(vec![], vec![]).matches(&n),
            "an empty term matches nothing"
        );
        assert!(
            !term(
                vec![req("zone", In, &["a"])],
                vec![req("metadata.name", In, &["node-8"])]
            )
            .matches(&n),
            "expressions and fields are anded"
        );
        let mut c = PlacementRules {
            node_affinity: vec![term(vec![req("zone", In, &["b"])], vec![])],
            ..Default::default()
        };
        assert_eq!(c.check(&n), Err(NodeMismatch::Affinity));
        c.node_affinity
            .push(term(vec![req("gpus", Gt, &["2"])], vec![]));
        assert_eq!(c.check(&n), Ok(()), "any term suffices");
    }

    #[test]
    fn validation_names_the_field_the_value_and_the_rule() {
        use SelectorOperator::*;
        let check = |c: PlacementRules| c.validate().unwrap_err();
        let mut c = PlacementRules::default();
        c.node_selector.insert("bad key!".into(), "x".into());
        let e = check(c);
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("node_selector", "bad key!")
        );
        let mut c = PlacementRules::default();
        c.node_selector
            .insert("example.com/zone".into(), "-a".into());
        let e = check(c);
        assert_eq!(e.field, "node_selector.example.com/zone");
        assert!(e.rule.contains("63 characters"), "{e}");
        let e = check(PlacementRules {
            node_affinity: vec![NodeSelectorTerm {
                match_expressions: vec![req("zone", In, &[])],
                match_fields: vec![],
            }],
            ..Default::default()
        });
        assert_eq!(e.field, "node_affinity[0].match_expressions[0].values");
        assert!(e.rule.contains("at least one"), "{e}");
        let e = check(PlacementRules {
            node_affinity: vec![NodeSelectorTerm {
                match_expressions: vec![req("gpus", Gt, &["many"])],
                match_fields: vec![],
            }],
            ..Default::default()
        });
        assert_eq!(e.value, "[\"many\"]");
        let e = check(PlacementRules {
            node_affinity: vec![NodeSelectorTerm {
                match_expressions: vec![],
                match_fields: vec![req("metadata.labels", In, &["x"])],
            }],
            ..Default::default()
        });
        assert_eq!(e.field, "node_affinity[0].match_fields[0].key");
        let e = check(PlacementRules {
            node_affinity: vec![NodeSelectorTerm::default()],
            ..Default::default()
        });
        assert_eq!(e.field, "node_affinity[0]");
        let e = check(PlacementRules {
            tolerations: vec![Toleration {
                value: "x".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(e.field, "tolerations[0].operator", "no key needs Exists");
        let e = check(PlacementRules {
            tolerations: vec![Toleration {
                key: "k".into(),
                operator: TolerationOperator::Exists,
                value: "v".into(),
                effect: None,
            }],
            ..Default::default()
        });
        assert_eq!(e.field, "tolerations[0].value");
        let ok = PlacementRules {
            node_selector: [("kubernetes.io/hostname".to_string(), "node-1".to_string())].into(),
            node_affinity: vec![NodeSelectorTerm {
                match_expressions: vec![req(
                    "nvidia.com/gpu.product",
                    In,
                    &["NVIDIA-H100-80GB-HBM3"],
                )],
                match_fields: vec![req("metadata.name", NotIn, &["node-2"])],
            }],
            tolerations: vec![Toleration {
                key: "nvidia.com/gpu".into(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect: Some(TaintEffect::NoSchedule),
            }],
            spread: Some(Spread {
                across: SpreadDomain::Node,
                max_skew: 2,
                required: true,
            }),
        };
        assert_eq!(ok.validate(), Ok(()));
        let e = PlacementRules {
            spread: Some(Spread {
                max_skew: 0,
                ..ok.spread.unwrap()
            }),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("spread.max_skew", "0")
        );
    }

    #[test]
    fn reads_the_spec_form() {
        let c: PlacementRules = serde_json::from_str(
            r#"{"node_selector":{"zone":"a"},
                "node_affinity":[{"match_expressions":[{"key":"gpus","operator":"Gt","values":["2"]}]}],
                "tolerations":[{"key":"gpu","operator":"Exists","effect":"NoSchedule"}],
                "spread":{"across":"device"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.node_affinity[0].match_expressions[0].operator,
            SelectorOperator::Gt
        );
        assert_eq!(c.tolerations[0].effect, Some(TaintEffect::NoSchedule));
        assert_eq!(
            c.spread,
            Some(Spread {
                across: SpreadDomain::Device,
                max_skew: 1,
                required: false
            }),
            "max_skew 1 and preferred by default"
        );
        let e = serde_json::from_str::<PlacementRules>(
            r#"{"tolerations":[{"key":"a","effect":"Never"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Never"), "{e}");
    }
}
