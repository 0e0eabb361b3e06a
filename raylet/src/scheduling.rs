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
//! - label selectors (`crate::labels`), with hybrid or spread: only nodes whose labels
//!   match the hard constraints are considered, and among them those matching the soft ones
//!   while one of those can ever fit the request.

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
    /// Its labels (from its config).
    pub labels: BTreeMap<String, String>,
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

/// [`decide`] over the nodes a label selector allows (and prefers). A node left out is never
/// chosen; this node, left out, takes no lease here (it is seen as able to fit nothing).
pub fn decide_with_labels(
    strategy: &Strategy,
    wanted: &BTreeMap<String, f64>,
    selector: &crate::labels::LabelSelector,
    local: &NodeView,
    others: &[NodeView],
    round_robin: usize,
) -> Decision {
    if selector.is_empty() {
        return decide(strategy, wanted, local, others, round_robin);
    }
    let allowed = |n: &&NodeView| selector.allows(&n.labels);
    let mut candidates: Vec<&NodeView> = std::iter::once(local)
        .chain(others)
        .filter(allowed)
        .collect();
    if candidates.is_empty() {
        let mut nodes: Vec<String> = std::iter::once(local)
            .chain(others)
            .map(|n| {
                format!(
                    "{} has {}",
                    n.node_id,
                    crate::labels::describe_labels(&n.labels)
                )
            })
            .collect();
        nodes.sort();
        return Decision::Infeasible(format!(
            "no live node has the labels it requires ({}): {}; change the selector, or give a node those labels (its config's `labels`, `fleet raylet --label key=value`)",
            selector.describe_required(),
            nodes.join("; ")
        ));
    }
    if selector.has_preferences() {
        let preferred: Vec<&NodeView> = candidates
            .iter()
            .copied()
            .filter(|n| selector.prefers(&n.labels) && n.feasible(wanted))
            .collect();
        if !preferred.is_empty() {
            candidates = preferred;
        }
    }
    if !candidates.iter().any(|n| n.feasible(wanted)) {
        let mut nodes: Vec<String> = candidates
            .iter()
            .map(|n| format!("{} has {}", n.node_id, describe(&n.total)))
            .collect();
        nodes.sort();
        return Decision::Infeasible(format!(
            "no live node with the labels it requires ({}) can ever fit {} ({}); lower the request or widen the selector",
            selector.describe_required(),
            describe(wanted),
            nodes.join("; ")
        ));
    }
    let (local_candidate, rest): (Vec<&NodeView>, Vec<&NodeView>) = candidates
        .into_iter()
        .partition(|n| n.node_id == local.node_id);
    let rest: Vec<NodeView> = rest.into_iter().cloned().collect();
    if !local_candidate.is_empty() {
        return decide(strategy, wanted, local, &rest, round_robin);
    }
    // This node is not a candidate: decide from the least used candidate's point of view,
    // and where that says "here", send the lease there.
    let Some(stand_in) = least_used(rest.iter().collect()).cloned() else {
        return Decision::Infeasible("no candidate node".into());
    };
    let others: Vec<NodeView> = rest
        .into_iter()
        .filter(|n| n.node_id != stand_in.node_id)
        .collect();
    match decide(strategy, wanted, &stand_in, &others, round_robin) {
        Decision::Local => spill(&stand_in),
        other => other,
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

/// How a placement group's bundles are spread over nodes (Ray's strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementStrategy {
    /// As few nodes as possible, best effort.
    Pack,
    /// Distinct nodes as far as possible, best effort.
    Spread,
    /// All bundles on one node, or fail.
    StrictPack,
    /// Every bundle on a node of its own, or fail.
    StrictSpread,
}

impl std::fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

/// Why a placement group cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// It can never fit the cluster (judged by the nodes' totals): the message names the
    /// bundle and the nodes.
    Infeasible(String),
    /// It could fit, but not in what is free now: try again later.
    Unavailable(String),
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::Infeasible(m) | PlacementError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Chooses a node for each bundle (the returned vector holds indexes into `nodes`, one
/// per bundle) from what is free on each node now.
///
/// - PACK: all on one node when one fits them all, otherwise fill nodes one at a time
///   (largest bundles first), opening as few nodes as it can.
/// - SPREAD: each bundle on a node no other bundle of the group uses while there is one,
///   then on the node with the fewest of them.
/// - STRICT_PACK: one node that fits the sum of the bundles.
/// - STRICT_SPREAD: a node of its own per bundle (an exact matching, not a greedy guess).
///
/// Among equal choices, less used nodes win, then lower node ids. When nothing fits now,
/// the same question is asked of the nodes' totals to tell [`PlacementError::Infeasible`]
/// (never) from [`PlacementError::Unavailable`] (not now).
pub fn place_bundles(
    strategy: PlacementStrategy,
    bundles: &[BTreeMap<String, f64>],
    nodes: &[NodeView],
) -> Result<Vec<usize>, PlacementError> {
    if bundles.is_empty() {
        return Err(PlacementError::Infeasible(
            "a placement group needs at least one bundle".into(),
        ));
    }
    let free: Vec<BTreeMap<String, f64>> = nodes.iter().map(|n| n.available.clone()).collect();
    match assign(strategy, bundles, nodes, free) {
        Ok(chosen) => Ok(chosen),
        Err(_) => {
            let totals: Vec<BTreeMap<String, f64>> =
                nodes.iter().map(|n| n.total.clone()).collect();
            match assign(strategy, bundles, nodes, totals) {
                Ok(_) => Err(PlacementError::Unavailable(format!(
                    "the {strategy} placement group {} does not fit what is free now ({})",
                    describe_bundles(bundles),
                    describe_nodes(nodes, |n| &n.available, "free")
                ))),
                Err(reason) => Err(PlacementError::Infeasible(format!(
                    "the {strategy} placement group {} can never fit this cluster: {reason} ({}); lower the bundles, change the strategy, or add nodes",
                    describe_bundles(bundles),
                    describe_nodes(nodes, |n| &n.total, "has")
                ))),
            }
        }
    }
}

fn describe_bundles(bundles: &[BTreeMap<String, f64>]) -> String {
    let parts: Vec<String> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| format!("#{i} {}", describe(b)))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn describe_nodes(
    nodes: &[NodeView],
    what: impl Fn(&NodeView) -> &BTreeMap<String, f64>,
    verb: &str,
) -> String {
    if nodes.is_empty() {
        return "no live nodes".into();
    }
    nodes
        .iter()
        .map(|n| format!("{} {verb} {}", n.node_id, describe(what(n))))
        .collect::<Vec<_>>()
        .join("; ")
}

fn take(have: &mut BTreeMap<String, f64>, wanted: &BTreeMap<String, f64>) {
    for (name, amount) in wanted {
        let left = have.entry(name.clone()).or_insert(0.0);
        *left = (*left - amount).max(0.0);
    }
}

/// Node indexes ordered least used first, then by id.
fn by_preference(nodes: &[NodeView]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| {
        nodes[a]
            .utilization()
            .total_cmp(&nodes[b].utilization())
            .then_with(|| nodes[a].node_id.cmp(&nodes[b].node_id))
    });
    order
}

/// Bundle indexes, largest first (by the sum of their amounts), ties by index.
fn largest_first(bundles: &[BTreeMap<String, f64>]) -> Vec<usize> {
    let size = |b: &BTreeMap<String, f64>| b.values().sum::<f64>();
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by(|&a, &b| {
        size(&bundles[b])
            .total_cmp(&size(&bundles[a]))
            .then(a.cmp(&b))
    });
    order
}

/// The assignment against `free` (each node's capacity), or why there is none.
fn assign(
    strategy: PlacementStrategy,
    bundles: &[BTreeMap<String, f64>],
    nodes: &[NodeView],
    mut free: Vec<BTreeMap<String, f64>>,
) -> Result<Vec<usize>, String> {
    let order = by_preference(nodes);
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for bundle in bundles {
        for (name, amount) in bundle {
            *sum.entry(name.clone()).or_default() += amount;
        }
    }
    let one_node = order.iter().copied().find(|&n| fits(&free[n], &sum));
    match strategy {
        PlacementStrategy::StrictPack => {
            one_node.map(|n| vec![n; bundles.len()]).ok_or_else(|| {
                format!(
                    "no node has {} for all of its bundles together",
                    describe(&sum)
                )
            })
        }
        PlacementStrategy::Pack => {
            if let Some(n) = one_node {
                return Ok(vec![n; bundles.len()]);
            }
            let mut chosen = vec![usize::MAX; bundles.len()];
            let mut opened: Vec<usize> = Vec::new();
            for b in largest_first(bundles) {
                let node = opened
                    .iter()
                    .copied()
                    .find(|&n| fits(&free[n], &bundles[b]))
                    .or_else(|| order.iter().copied().find(|&n| fits(&free[n], &bundles[b])))
                    .ok_or_else(|| format!("bundle {b} {} fits no node", describe(&bundles[b])))?;
                if !opened.contains(&node) {
                    opened.push(node);
                }
                take(&mut free[node], &bundles[b]);
                chosen[b] = node;
            }
            Ok(chosen)
        }
        PlacementStrategy::Spread => {
            let mut chosen = vec![usize::MAX; bundles.len()];
            let mut count = vec![0usize; nodes.len()];
            for b in largest_first(bundles) {
                let node = order
                    .iter()
                    .copied()
                    .filter(|&n| fits(&free[n], &bundles[b]))
                    .min_by_key(|&n| count[n])
                    .ok_or_else(|| format!("bundle {b} {} fits no node", describe(&bundles[b])))?;
                count[node] += 1;
                take(&mut free[node], &bundles[b]);
                chosen[b] = node;
            }
            Ok(chosen)
        }
        PlacementStrategy::StrictSpread => {
            if bundles.len() > nodes.len() {
                return Err(format!(
                    "its {} bundles need {} distinct nodes but the cluster has {}",
                    bundles.len(),
                    bundles.len(),
                    nodes.len()
                ));
            }
            // Bipartite matching (Kuhn): a node hosts at most one bundle, so whether a
            // bundle fits a node does not depend on the other bundles.
            let mut owner: Vec<Option<usize>> = vec![None; nodes.len()];
            for b in largest_first(bundles) {
                let mut seen = vec![false; nodes.len()];
                if !augment(b, bundles, &free, &order, &mut owner, &mut seen) {
                    return Err(format!(
                        "bundle {b} {} finds no node of its own among those that fit it",
                        describe(&bundles[b])
                    ));
                }
            }
            let mut chosen = vec![usize::MAX; bundles.len()];
            for (node, bundle) in owner.iter().enumerate() {
                if let Some(b) = bundle {
                    chosen[*b] = node;
                }
            }
            Ok(chosen)
        }
    }
}

fn augment(
    b: usize,
    bundles: &[BTreeMap<String, f64>],
    free: &[BTreeMap<String, f64>],
    order: &[usize],
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for &n in order {
        if seen[n] || !fits(&free[n], &bundles[b]) {
            continue;
        }
        seen[n] = true;
        let free_now = match owner[n] {
            None => true,
            Some(other) => augment(other, bundles, free, order, owner, seen),
        };
        if free_now {
            owner[n] = Some(b);
            return true;
        }
    }
    false
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
            labels: BTreeMap::new(),
        }
    }

    fn labelled(mut node: NodeView, labels: &[(&str, &str)]) -> NodeView {
        node.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node
    }

    #[test]
    fn label_selectors_choose_among_matching_nodes_only() {
        use crate::labels::LabelSelector;
        let cpu = BTreeMap::from([("CPU".to_string(), 1.0)]);
        let local = labelled(node("n0", &[("CPU", 4.0)], &[]), &[("zone", "a")]);
        let b1 = labelled(node("n1", &[("CPU", 4.0)], &[]), &[("zone", "b")]);
        let b2 = labelled(
            node("n2", &[("CPU", 4.0)], &[]),
            &[("zone", "b"), ("gpu", "h100")],
        );
        let others = vec![b1.clone(), b2.clone()];
        // Required zone b: never this (idle, zone a) node.
        let zone_b = LabelSelector::new().require("zone", "b");
        for rr in 0..4 {
            match decide_with_labels(&Strategy::Hybrid, &cpu, &zone_b, &local, &others, rr) {
                Decision::Spill { node_id, .. } => assert!(node_id == "n1" || node_id == "n2"),
                other => panic!("zone b went to {other:?}"),
            }
        }
        // Preferred gpu: the one node that has it, while it can fit.
        let prefer_gpu = zone_b.clone().prefer("gpu", "h100");
        assert_eq!(
            decide_with_labels(&Strategy::Spread, &cpu, &prefer_gpu, &local, &others, 1),
            Decision::Spill {
                node_id: "n2".into(),
                address: "n2:1".into()
            }
        );
        // A preference nobody meets changes nothing; a requirement nobody meets is an error
        // naming every node's labels and the fix.
        let prefer_none = LabelSelector::new().prefer("zone", "z");
        assert_eq!(
            decide_with_labels(&Strategy::Hybrid, &cpu, &prefer_none, &local, &others, 0),
            Decision::Local
        );
        match decide_with_labels(
            &Strategy::Hybrid,
            &cpu,
            &LabelSelector::new().require("zone", "z"),
            &local,
            &others,
            0,
        ) {
            Decision::Infeasible(message) => {
                assert!(
                    message.contains("zone=z") && message.contains("n2 has {gpu: h100, zone: b}")
                );
                assert!(message.contains("--label"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Matching nodes that can never fit it: the error says so.
        let big = BTreeMap::from([("CPU".to_string(), 8.0)]);
        assert!(matches!(
            decide_with_labels(&Strategy::Hybrid, &big, &zone_b, &local, &others, 0),
            Decision::Infeasible(message) if message.contains("can ever fit")
        ));
        // An actor that asks for no resources is still kept off a node the selector
        // forbids (before, an idle local node took it: nothing to fit).
        let nothing = BTreeMap::new();
        for rr in 0..4 {
            assert!(matches!(
                decide_with_labels(&Strategy::Hybrid, &nothing, &zone_b, &local, &others, rr),
                Decision::Spill { ref node_id, .. } if node_id != "n0"
            ));
        }
        // Required zone a: this node, even busy (it queues here rather than spill to b).
        let busy_local = labelled(
            node("n0", &[("CPU", 4.0)], &[("CPU", 4.0)]),
            &[("zone", "a")],
        );
        assert_eq!(
            decide_with_labels(
                &Strategy::Hybrid,
                &cpu,
                &LabelSelector::new().require("zone", "a"),
                &busy_local,
                &others,
                0
            ),
            Decision::Local
        );
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
    fn bundles(n: usize, pairs: &[(&str, f64)]) -> Vec<BTreeMap<String, f64>> {
        (0..n).map(|_| want(pairs)).collect()
    }

    fn cluster() -> Vec<NodeView> {
        vec![
            node("n0", &[("CPU", 2.0)], &[]),
            node("n1", &[("CPU", 2.0), ("GPU", 2.0)], &[]),
            node("n2", &[("CPU", 2.0), ("GPU", 1.0)], &[]),
            node("n3", &[("CPU", 2.0), ("GPU", 1.0)], &[]),
        ]
    }

    fn ids(nodes: &[NodeView], chosen: &[usize]) -> Vec<String> {
        chosen.iter().map(|&i| nodes[i].node_id.clone()).collect()
    }

    #[test]
    fn strict_spread_puts_each_bundle_on_its_own_node() {
        let nodes = cluster();
        let chosen = place_bundles(
            PlacementStrategy::StrictSpread,
            &bundles(3, &[("CPU", 1.0)]),
            &nodes,
        )
        .expect("fits");
        let distinct: std::collections::BTreeSet<usize> = chosen.iter().copied().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn strict_spread_finds_the_matching_a_greedy_pick_would_miss() {
        // The GPU bundle must go to n1, the only GPU node, even though n1 is the least
        // used node and the CPU bundle (larger) would grab it first.
        let nodes = vec![
            node("n0", &[("CPU", 4.0)], &[("CPU", 1.0)]),
            node("n1", &[("CPU", 4.0), ("GPU", 1.0)], &[]),
        ];
        let chosen = place_bundles(
            PlacementStrategy::StrictSpread,
            &[want(&[("CPU", 3.0)]), want(&[("GPU", 1.0)])],
            &nodes,
        )
        .expect("fits");
        assert_eq!(ids(&nodes, &chosen), vec!["n0", "n1"]);
    }

    #[test]
    fn strict_spread_with_more_bundles_than_nodes_is_infeasible() {
        match place_bundles(
            PlacementStrategy::StrictSpread,
            &bundles(5, &[("CPU", 1.0)]),
            &cluster(),
        ) {
            Err(PlacementError::Infeasible(reason)) => {
                assert!(reason.contains("5 distinct nodes"), "{reason}");
                assert!(reason.contains("n3 has {CPU: 2"), "{reason}");
                assert!(reason.contains("STRICT_SPREAD"), "{reason}");
            }
            other => panic!("expected infeasible, got {other:?}"),
        }
    }

    #[test]
    fn strict_pack_needs_one_node_for_everything() {
        let nodes = cluster();
        let chosen = place_bundles(
            PlacementStrategy::StrictPack,
            &bundles(2, &[("GPU", 1.0)]),
            &nodes,
        )
        .expect("fits n1");
        assert_eq!(ids(&nodes, &chosen), vec!["n1", "n1"]);
        match place_bundles(
            PlacementStrategy::StrictPack,
            &bundles(3, &[("GPU", 1.0)]),
            &nodes,
        ) {
            Err(PlacementError::Infeasible(reason)) => {
                assert!(reason.contains("{GPU: 3}"), "{reason}")
            }
            other => panic!("expected infeasible, got {other:?}"),
        }
    }

    #[test]
    fn pack_uses_as_few_nodes_as_it_can() {
        let nodes = cluster();
        let chosen = place_bundles(
            PlacementStrategy::Pack,
            &bundles(2, &[("CPU", 1.0)]),
            &nodes,
        )
        .expect("fits");
        assert_eq!(chosen[0], chosen[1]);
        // 5 CPUs fit no node: two full nodes and one more, three nodes in all.
        let chosen = place_bundles(
            PlacementStrategy::Pack,
            &bundles(5, &[("CPU", 1.0)]),
            &nodes,
        )
        .expect("fits");
        let used: std::collections::BTreeSet<usize> = chosen.iter().copied().collect();
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn spread_is_best_effort() {
        let nodes = cluster();
        let chosen = place_bundles(
            PlacementStrategy::Spread,
            &bundles(4, &[("CPU", 1.0)]),
            &nodes,
        )
        .expect("fits");
        let used: std::collections::BTreeSet<usize> = chosen.iter().copied().collect();
        assert_eq!(used.len(), 4);
        // More bundles than nodes: still placed, two to a node.
        let chosen = place_bundles(
            PlacementStrategy::Spread,
            &bundles(8, &[("CPU", 1.0)]),
            &nodes,
        )
        .expect("fits");
        for n in 0..4 {
            assert_eq!(chosen.iter().filter(|&&c| c == n).count(), 2);
        }
    }

    #[test]
    fn busy_but_feasible_is_unavailable_not_infeasible() {
        let nodes = vec![node("n0", &[("CPU", 2.0)], &[("CPU", 2.0)])];
        for strategy in [
            PlacementStrategy::Pack,
            PlacementStrategy::Spread,
            PlacementStrategy::StrictPack,
            PlacementStrategy::StrictSpread,
        ] {
            assert!(matches!(
                place_bundles(strategy, &bundles(1, &[("CPU", 1.0)]), &nodes),
                Err(PlacementError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn a_resource_no_node_has_is_infeasible_for_every_strategy() {
        for strategy in [
            PlacementStrategy::Pack,
            PlacementStrategy::Spread,
            PlacementStrategy::StrictPack,
            PlacementStrategy::StrictSpread,
        ] {
            match place_bundles(strategy, &bundles(1, &[("TPU", 1.0)]), &cluster()) {
                Err(PlacementError::Infeasible(reason)) => {
                    assert!(reason.contains("#0 {TPU: 1}"), "{reason}")
                }
                other => panic!("{strategy}: expected infeasible, got {other:?}"),
            }
        }
        assert!(matches!(
            place_bundles(PlacementStrategy::Pack, &[], &cluster()),
            Err(PlacementError::Infeasible(_))
        ));
    }
}
