//! Label scheduling (Ray 2.x's label selectors): nodes carry labels from their config
//! (`labels = { zone = "a", gpu = "h100" }`, `fleet raylet --label zone=a`); a task or
//! actor may require some (hard: only matching nodes are considered, none matching is an
//! error that names the labels each node has) and prefer others (soft: matching nodes are
//! preferred while one of them can ever fit the request).

use std::collections::BTreeMap;

use fleet_proto::runtime::{label_constraint::Op as WireOp, LabelConstraint as WireConstraint};

/// How a label's value is tested.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabelOp {
    /// The label has one of these values.
    In(Vec<String>),
    /// The label is absent or has none of these values.
    NotIn(Vec<String>),
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One condition on one label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelConstraint {
    /// The label's key.
    pub key: String,
    /// The test.
    pub op: LabelOp,
    /// Preferred rather than required.
    pub soft: bool,
}

impl LabelConstraint {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            LabelOp::In(values) => value.is_some_and(|v| values.contains(v)),
            LabelOp::NotIn(values) => !value.is_some_and(|v| values.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }
}

impl std::fmt::Display for LabelConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = &self.key;
        match &self.op {
            LabelOp::In(values) if values.len() == 1 => write!(f, "{key}={}", values[0]),
            LabelOp::In(values) => write!(f, "{key} in ({})", values.join(",")),
            LabelOp::NotIn(values) if values.len() == 1 => write!(f, "{key}!={}", values[0]),
            LabelOp::NotIn(values) => write!(f, "{key} not in ({})", values.join(",")),
            LabelOp::Exists => write!(f, "{key} exists"),
            LabelOp::DoesNotExist => write!(f, "no {key}"),
        }
    }
}

/// The labels a task or actor requires (hard) and prefers (soft); empty: any node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    constraints: Vec<LabelConstraint>,
}

impl LabelSelector {
    /// Any node.
    pub fn new() -> Self {
        LabelSelector::default()
    }

    fn with(mut self, key: impl Into<String>, op: LabelOp, soft: bool) -> Self {
        self.constraints.push(LabelConstraint {
            key: key.into(),
            op,
            soft,
        });
        self
    }

    /// Only nodes whose label `key` is `value`.
    pub fn require(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with(key, LabelOp::In(vec![value.into()]), false)
    }

    /// Only nodes whose label `key` is one of `values`.
    pub fn require_in<V: Into<String>>(
        self,
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = values.into_iter().map(Into::into).collect();
        self.with(key, LabelOp::In(values), false)
    }

    /// Only nodes whose label `key` is not `value` (or that have no such label).
    pub fn require_not(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with(key, LabelOp::NotIn(vec![value.into()]), false)
    }

    /// Only nodes that have the label `key`.
    pub fn require_exists(self, key: impl Into<String>) -> Self {
        self.with(key, LabelOp::Exists, false)
    }

    /// Only nodes without the label `key`.
    pub fn require_absent(self, key: impl Into<String>) -> Self {
        self.with(key, LabelOp::DoesNotExist, false)
    }

    /// Nodes whose label `key` is `value` are preferred, others still allowed.
    pub fn prefer(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with(key, LabelOp::In(vec![value.into()]), true)
    }

    /// Nodes whose label `key` is not `value` are preferred, others still allowed.
    pub fn prefer_not(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with(key, LabelOp::NotIn(vec![value.into()]), true)
    }

    /// Whether it constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    /// Whether a node with `labels` may run it.
    pub fn allows(&self, labels: &BTreeMap<String, String>) -> bool {
        self.constraints
            .iter()
            .filter(|c| !c.soft)
            .all(|c| c.matches(labels))
    }

    /// Whether a node with `labels` is one it prefers (every soft constraint holds).
    pub fn prefers(&self, labels: &BTreeMap<String, String>) -> bool {
        self.constraints
            .iter()
            .filter(|c| c.soft)
            .all(|c| c.matches(labels))
    }

    /// Whether it has soft constraints.
    pub fn has_preferences(&self) -> bool {
        self.constraints.iter().any(|c| c.soft)
    }

    /// The hard constraints, for messages: `zone=b, gpu in (a100,h100)`.
    pub fn describe_required(&self) -> String {
        let parts: Vec<String> = self
            .constraints
            .iter()
            .filter(|c| !c.soft)
            .map(ToString::to_string)
            .collect();
        parts.join(", ")
    }

    /// For the wire (`SchedulingStrategy.labels`).
    pub fn to_wire(&self) -> Vec<WireConstraint> {
        self.constraints
            .iter()
            .map(|c| {
                let (op, values) = match &c.op {
                    LabelOp::In(values) => (WireOp::In, values.clone()),
                    LabelOp::NotIn(values) => (WireOp::NotIn, values.clone()),
                    LabelOp::Exists => (WireOp::Exists, Vec::new()),
                    LabelOp::DoesNotExist => (WireOp::DoesNotExist, Vec::new()),
                };
                WireConstraint {
                    key: c.key.clone(),
                    op: op as i32,
                    values,
                    soft: c.soft,
                }
            })
            .collect()
    }

    /// From the wire; a constraint that cannot be read is refused with the reason.
    pub fn from_wire(wire: &[WireConstraint]) -> Result<Self, String> {
        let mut selector = LabelSelector::new();
        for c in wire {
            if c.key.is_empty() {
                return Err("a label constraint has an empty key".into());
            }
            let op = match WireOp::try_from(c.op) {
                Ok(WireOp::In) if !c.values.is_empty() => LabelOp::In(c.values.clone()),
                Ok(WireOp::NotIn) if !c.values.is_empty() => LabelOp::NotIn(c.values.clone()),
                Ok(WireOp::Exists) => LabelOp::Exists,
                Ok(WireOp::DoesNotExist) => LabelOp::DoesNotExist,
                Ok(WireOp::In | WireOp::NotIn) => {
                    return Err(format!(
                        "the constraint on label '{}' lists no values",
                        c.key
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "the constraint on label '{}' has an unknown test ({})",
                        c.key, c.op
                    ))
                }
            };
            selector = selector.with(c.key.clone(), op, c.soft);
        }
        Ok(selector)
    }
}

/// `{zone: a, gpu: h100}` (or `no labels`).
pub fn describe_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "no labels".into();
    }
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hard_constraints_filter_and_soft_ones_only_rank() {
        let selector = LabelSelector::new()
            .require("zone", "b")
            .require_in("gpu", ["a100", "h100"])
            .require_not("spot", "true")
            .prefer("rack", "r1");
        assert!(selector.allows(&labels(&[("zone", "b"), ("gpu", "h100")])));
        assert!(!selector.allows(&labels(&[("zone", "a"), ("gpu", "h100")])));
        assert!(!selector.allows(&labels(&[("zone", "b"), ("gpu", "t4")])));
        assert!(!selector.allows(&labels(&[("zone", "b"), ("gpu", "a100"), ("spot", "true")])));
        // The soft one does not decide what is allowed, only what is preferred.
        let node = labels(&[("zone", "b"), ("gpu", "a100"), ("rack", "r2")]);
        assert!(selector.allows(&node) && !selector.prefers(&node));
        assert!(LabelSelector::new()
            .require_exists("gpu")
            .allows(&labels(&[("gpu", "x")])));
        assert!(!LabelSelector::new()
            .require_absent("gpu")
            .allows(&labels(&[("gpu", "x")])));
        assert_eq!(
            selector.describe_required(),
            "zone=b, gpu in (a100,h100), spot!=true"
        );
    }

    #[test]
    fn selectors_survive_the_wire_and_bad_ones_are_refused() {
        let selector = LabelSelector::new()
            .require("zone", "b")
            .require_absent("spot")
            .prefer_not("rack", "r9");
        assert_eq!(
            LabelSelector::from_wire(&selector.to_wire()).as_ref(),
            Ok(&selector)
        );
        let empty_in = WireConstraint {
            key: "zone".into(),
            op: WireOp::In as i32,
            values: Vec::new(),
            soft: false,
        };
        assert!(matches!(
            LabelSelector::from_wire(&[empty_in]),
            Err(reason) if reason.contains("zone")
        ));
        let unknown = WireConstraint {
            key: "zone".into(),
            op: 99,
            values: vec!["a".into()],
            soft: false,
        };
        assert!(LabelSelector::from_wire(&[unknown]).is_err());
    }
}
