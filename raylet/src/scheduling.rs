//! Where a lease should be granted: the cluster-level half of scheduling, as a pure function
//! of the request, the strategy and the raylet's view of the cluster (tested without I/O).
//!
//! A raylet asked for a lease either grants it itself (waiting for its own resources when
//! needed) or answers with a *spillback*: the address of a node the requester should ask
//! instead, with `grant_or_reject` set so the lease never bounces twice.
//!
//! Policies, as in Ray:
//! - hybrid (default): stay on this node while it fits now and is under half used (packs
//!   small work, keeps data local); otherwise the least used node where it fits now; if it
//!   fits nowhere now, queue here when it can ever fit here, else on the least used node
//!   where it can ever fit.
//! - spread: the least used node where it fits now, round-robin among equals.
//! - node affinity: that node; when soft, hybrid if that node is dead or can never fit it.

use std::collections::BTreeMap;

/// What this raylet knows of one node (itself included).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// The node's id.
    pub node_id: String,
    /// Its raylet's address.
    pub address: String,
    /// Everything it has.
    pub total: BTreeMap<String, f64>,
    /// What was free at the last report.
    pub available: BTreeMap<String, f64>,
}

impl NodeView {
    /// Whether `wanted` can ever fit this node.
    pub fn feasible(&self, wanted: &BTreeMap<String, f64>) -> bool {
        fits(&self.total, wanted)
    }

    /// Whether `wanted` fits what is free now.
    pub fn fits_now(&self, wanted: &BTreeMap<String, f64>) -> bool {
        fits(&self.available, wanted)
    }

    /// The most used fraction over the node's resources (CPU, GPU, memory, custom), in
    /// [0, 1]: how busy the node is for placement decisions.
    pub fn utilization(&self) -> f64 {
        self.total
            .iter()
            .filter(|(_, total)| **total > 0.0)
            .map(|(name, total)| {
                let free = self.available.get(name).copied().unwrap_or(0.0);
                ((total - free) / total).clamp(0.0, 1.0)
            })
            .fold(0.0, f64::max)
    }
}

/// Tolerance for fractional amounts (resources count in 1/10 000 units).
const EPSILON: f64 = 1e-6;

fn fits(have: &BTreeMap<String, f64>, wanted: &BTreeMap<String, f64>) -> bool {
    wanted
        .iter()
        .filter(|(_, amount)| **amount > 0.0)
        .all(|(name, amount)| have.get(name).copied().unwrap_or(0.0) + EPSILON >= *amount)
}

/// A placement policy (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Pack on this node until half used, then spread.
    Hybrid,
    /// Least used node, round-robin among equals.
    Spread,
    /// A given node; `soft` falls back to hybrid when it is dead or can never fit.
    NodeAffinity {
        /// The node.
        node_id: String,
        /// Fall back instead of failing.
        soft: bool,
    },
}

/// What to do with a lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Grant it here (waiting for resources when busy).
    Local,
    /// Ask this node instead.
    Spill {
        /// The node.
        node_id: String,
        /// Its raylet.
        address: String,
    },
    /// No node can ever run it; the reason says why and what to change.
    Infeasible(String),
}

/// Hybrid's threshold: above this utilization work spreads to other nodes.
pub const SPREAD_THRESHOLD: f64 = 0.5;

/// Decides where `wanted` runs. `local` is this node; `others` are the other live nodes.
/// `round_robin` is a counter the caller increments per spread decision.
pub fn decide(
    strategy: &Strategy,
    wanted: &BTreeMap<String, f64>,
    local: &NodeView,
    others: &[NodeView],
    round_robin: usize,
) -> Decision {
    match strategy {
        Strategy::NodeAffinity { node_id, soft } => {
            let target = std::iter::once(local)
                .chain(others)
                .find(|n| &n.node_id == node_id);
            match target {
                Some(node) if node.feasible(wanted) => {
                    if node.node_id == local.node_id {
                        Decision::Local
                    } else {
                        spill(node)
                    }
                }
                Some(node) if !soft => Decision::Infeasible(format!(
                    "node {node_id} (required by node affinity) only has {}; make the affinity soft or lower the request",
                    describe(&node.total)
                )),
                None if !soft => Decision::Infeasible(format!(
                    "node {node_id} (required by node affinity) is dead or unknown; make the affinity soft to run elsewhere"
                )),
                _ => hybrid(wanted, local, others, round_robin),
            }
        }
        Strategy::Hybrid => hybrid(wanted, local, others, round_robin),
        Strategy::Spread => {
            let mut now: Vec<&NodeView> = std::iter::once(local)
                .chain(others)
                .filter(|n| n.fits_now(wanted))
                .collect();
            if now.is_empty() {
                return hybrid(wanted, local, others, round_robin);
            }
            now.sort_by(|a, b| {
                a.utilization()
                    .total_cmp(&b.utilization())
                    .then_with(|| a.node_id.cmp(&b.node_id))
            });
            let least = now[0].utilization();
            let equals: Vec<&NodeView> = now
                .into_iter()
                .filter(|n| n.utilization() <= least + EPSILON)
                .collect();
            let chosen = equals[round_robin % equals.len()];
            if chosen.node_id == local.node_id {
                Decision::Local
            } else {
                spill(chosen)
            }
        }
    }
}

fn hybrid(
    wanted: &BTreeMap<String, f64>,
    local: &NodeView,
    others: &[NodeView],
    round_robin: usize,
) -> Decision {
    if local.fits_now(wanted) && local.utilization() < SPREAD_THRESHOLD {
        return Decision::Local;
    }
    // Where it fits now; this node wins ties (its data is here).
    let now: Vec<&NodeView> = std::iter::once(local)
        .chain(others)
        .filter(|n| n.fits_now(wanted))
        .collect();
    if local.fits_now(wanted)
        && now
            .iter()
            .all(|n| local.utilization() <= n.utilization() + EPSILON)
    {
        return Decision::Local;
    }
    // Round-robin among the equally least used, so a burst decided on one stale view does
    // not herd onto one node.
    if let Some(least) = least_used(now.clone()) {
        let floor = least.utilization();
        let equals: Vec<&NodeView> = now
            .into_iter()
            .filter(|n| n.utilization() <= floor + EPSILON)
            .collect();
        let node = equals[round_robin % equals.len()];
        return if node.node_id == local.node_id {
            Decision::Local
        } else {
            spill(node)
        };
    }
    if local.feasible(wanted) {
        return Decision::Local;
    }
    match least_used(others.iter().filter(|n| n.feasible(wanted)).collect()) {
        Some(node) => spill(node),
        None => {
            let mut nodes: Vec<String> = std::iter::once(local)
                .chain(others)
                .map(|n| format!("{} has {}", n.node_id, describe(&n.total)))
                .collect();
            nodes.sort();
            Decision::Infeasible(format!(
                "no live node can ever fit {} ({}); lower the request or add a node that has it",
                describe(wanted),
                nodes.join("; ")
            ))
        }
    }
}

fn least_used(candidates: Vec<&NodeView>) -> Option<&NodeView> {
    candidates.into_iter().min_by(|a, b| {
        a.utilization()
            .total_cmp(&b.utilization())
            .then_with(|| a.node_id.cmp(&b.node_id))
    })
}

fn spill(node: &NodeView) -> Decision {
    Decision::Spill {
        node_id: node.node_id.clone(),
        address: node.address.clone(),
    }
}

/// `{CPU: 2, GPU: 1}`.
pub fn describe(resources: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = resources
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, total: &[(&str, f64)], used: &[(&str, f64)]) -> NodeView {
        let total: BTreeMap<String, f64> = total.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut available = total.clone();
        for (k, v) in used {
            *available.entry(k.to_string()).or_default() -= v;
        }
        NodeView {
            node_id: id.into(),
            address: format!("{id}:1"),
            total,
            available,
        }
    }

    fn want(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn hybrid_packs_locally_until_half_used_then_spreads() {
        let others = [node("b", &[("CPU", 4.0)], &[])];
        let idle = node("a", &[("CPU", 4.0)], &[("CPU", 1.0)]);
        assert_eq!(
            decide(&Strategy::Hybrid, &want(&[("CPU", 1.0)]), &idle, &others, 0),
            Decision::Local
        );
        let busy = node("a", &[("CPU", 4.0)], &[("CPU", 3.0)]);
        assert_eq!(
            decide(&Strategy::Hybrid, &want(&[("CPU", 1.0)]), &busy, &others, 0),
            Decision::Spill {
                node_id: "b".into(),
                address: "b:1".into()
            }
        );
    }

    #[test]
    fn hybrid_queues_locally_when_nothing_fits_now_but_here_can() {
        let full = node("a", &[("CPU", 2.0)], &[("CPU", 2.0)]);
        let others = [node("b", &[("CPU", 2.0)], &[("CPU", 2.0)])];
        assert_eq!(
            decide(&Strategy::Hybrid, &want(&[("CPU", 1.0)]), &full, &others, 0),
            Decision::Local
        );
    }

    #[test]
    fn work_this_node_can_never_run_goes_where_it_can() {
        let local = node("a", &[("CPU", 2.0)], &[]);
        let others = [
            node("b", &[("CPU", 2.0), ("GPU", 2.0)], &[("GPU", 2.0)]),
            node("c", &[("CPU", 2.0)], &[]),
        ];
        assert_eq!(
            decide(
                &Strategy::Hybrid,
                &want(&[("GPU", 1.0)]),
                &local,
                &others,
                0
            ),
            Decision::Spill {
                node_id: "b".into(),
                address: "b:1".into()
            }
        );
    }

    #[test]
    fn infeasible_everywhere_names_every_node() {
        let local = node("a", &[("CPU", 2.0)], &[]);
        let others = [node("b", &[("CPU", 2.0)], &[])];
        match decide(
            &Strategy::Hybrid,
            &want(&[("GPU", 1.0)]),
            &local,
            &others,
            0,
        ) {
            Decision::Infeasible(reason) => {
                assert!(reason.contains("a has {CPU: 2}"), "{reason}");
                assert!(reason.contains("b has {CPU: 2}"), "{reason}");
                assert!(reason.contains("GPU: 1"), "{reason}");
            }
            other => panic!("expected infeasible, got {other:?}"),
        }
    }

    #[test]
    fn spread_round_robins_among_equally_used_nodes() {
        let local = node("a", &[("CPU", 2.0)], &[]);
        let others = [
            node("b", &[("CPU", 2.0)], &[]),
            node("c", &[("CPU", 2.0)], &[]),
        ];
        let picks: Vec<Decision> = (0..3)
            .map(|i| {
                decide(
                    &Strategy::Spread,
                    &want(&[("CPU", 1.0)]),
                    &local,
                    &others,
                    i,
                )
            })
            .collect();
        assert_eq!(picks[0], Decision::Local);
        assert!(matches!(&picks[1], Decision::Spill { node_id, .. } if node_id == "b"));
        assert!(matches!(&picks[2], Decision::Spill { node_id, .. } if node_id == "c"));
    }

    #[test]
    fn spread_prefers_the_least_used_node() {
        let local = node("a", &[("CPU", 4.0)], &[("CPU", 1.0)]);
        let others = [node("b", &[("CPU", 4.0)], &[])];
        assert!(matches!(
            decide(&Strategy::Spread, &want(&[("CPU", 1.0)]), &local, &others, 0),
            Decision::Spill { node_id, .. } if node_id == "b"
        ));
    }

    #[test]
    fn node_affinity_hard_and_soft() {
        let local = node("a", &[("CPU", 2.0)], &[]);
        let others = [node("b", &[("CPU", 2.0)], &[("CPU", 2.0)])];
        let to_b = Strategy::NodeAffinity {
            node_id: "b".into(),
            soft: false,
        };
        // Busy but feasible: go there and wait.
        assert!(matches!(
            decide(&to_b, &want(&[("CPU", 1.0)]), &local, &others, 0),
            Decision::Spill { node_id, .. } if node_id == "b"
        ));
        let to_dead = Strategy::NodeAffinity {
            node_id: "gone".into(),
            soft: false,
        };
        assert!(matches!(
            decide(&to_dead, &want(&[("CPU", 1.0)]), &local, &others, 0),
            Decision::Infeasible(reason) if reason.contains("gone") && reason.contains("soft")
        ));
        let soft = Strategy::NodeAffinity {
            node_id: "gone".into(),
            soft: true,
        };
        assert_eq!(
            decide(&soft, &want(&[("CPU", 1.0)]), &local, &others, 0),
            Decision::Local
        );
    }

    #[test]
    fn utilization_is_the_most_used_resource() {
        let n = node(
            "a",
            &[("CPU", 4.0), ("GPU", 2.0)],
            &[("CPU", 1.0), ("GPU", 2.0)],
        );
        assert!((n.utilization() - 1.0).abs() < 1e-9);
        let empty = node("e", &[("CPU", 0.0)], &[]);
        assert_eq!(empty.utilization(), 0.0);
    }
}
