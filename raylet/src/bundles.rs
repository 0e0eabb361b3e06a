//! Placement-group bundles reserved on this node: the raylet's half of two-phase commit,
//! as pure bookkeeping over the node's [`NodeResources`] (no I/O; time is passed in).
//!
//! - *Prepare* takes a group's bundles out of the node's free pool, all or nothing, and is
//!   idempotent per (group, bundle index). A prepared bundle that is not committed within
//!   the timeout is released by [`Bundles::expire`], so a coordinator that dies between the
//!   phases leaks nothing.
//! - *Commit* makes prepared bundles permanent.
//! - *Cancel* gives a bundle back to the node (prepared or committed); the caller ends the
//!   leases that were inside it.
//!
//! Leases inside a committed bundle allocate from the bundle's own pool (a
//! [`NodeResources`] holding exactly what was reserved, GPUs included), never from the
//! node's free pool; the node's `available` already excludes the whole reservation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::resources::{AllocateError, Allocation, Amount, NodeResources, ResourceSet};

/// How long a prepared bundle waits for its commit before it is released.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bundle: its group and its index in the group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleKey {
    /// The placement group's id.
    pub group: String,
    /// The bundle's index in the group.
    pub index: u32,
}

impl std::fmt::Display for BundleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bundle {} of placement group {}", self.index, self.group)
    }
}

/// One bundle to prepare.
#[derive(Clone, Debug)]
pub struct BundleRequest {
    /// Which bundle.
    pub key: BundleKey,
    /// What it reserves.
    pub resources: ResourceSet,
    /// The job that created the group.
    pub job_id: String,
}

/// Why a lease cannot be granted from a bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle is not reserved (and committed) on this node.
    #[error("{key} is not reserved on this node (it was removed, or never placed here)")]
    NotHere {
        /// The bundle.
        key: BundleKey,
    },
    /// The request is larger than the whole bundle: it can never be granted.
    #[error("the request {requested} can never fit {key}, which reserves {reserved}; lower the request or make the bundle larger")]
    TooLarge {
        /// The bundle.
        key: BundleKey,
        /// The request.
        requested: String,
        /// What the bundle reserves.
        reserved: String,
    },
    /// The request fits the bundle but not what is free in it now: wait.
    #[error("{key} is busy")]
    Busy {
        /// The bundle.
        key: BundleKey,
    },
    /// A malformed request (e.g. 1.5 GPUs).
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug)]
struct Bundle {
    /// What it took from the node's free pool.
    reservation: Allocation,
    /// What the leases inside it draw from.
    pool: NodeResources,
    /// The node's GPU id of each of the pool's GPUs.
    gpu_ids: Vec<u32>,
    job_id: String,
    /// Prepared and not committed: released at this instant. `None` once committed.
    expires: Option<Instant>,
}

/// The bundles reserved on one node.
#[derive(Debug)]
pub struct Bundles {
    bundles: BTreeMap<BundleKey, Bundle>,
    timeout: Duration,
}

impl Default for Bundles {
    fn default() -> Self {
        Bundles::new(PREPARE_TIMEOUT)
    }
}

impl Bundles {
    /// No bundles; prepared ones expire after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Bundles {
            bundles: BTreeMap::new(),
            timeout,
        }
    }

    /// How many bundles are reserved (prepared or committed).
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// Whether `key` is reserved and committed here.
    pub fn is_committed(&self, key: &BundleKey) -> bool {
        self.bundles.get(key).is_some_and(|b| b.expires.is_none())
    }

    /// Reserves `requests` out of `node`, all or nothing. Bundles already reserved here are
    /// left as they are (a retried prepare), and prepared ones get a fresh deadline. On
    /// error nothing changed; the message names the bundle that did not fit and why.
    pub fn prepare(
        &mut self,
        node: &mut NodeResources,
        requests: &[BundleRequest],
        now: Instant,
    ) -> Result<(), String> {
        let mut taken: Vec<(BundleKey, Bundle)> = Vec::new();
        for request in requests {
            if let Some(existing) = self.bundles.get_mut(&request.key) {
                if existing.expires.is_some() {
                    existing.expires = Some(now + self.timeout);
                }
                continue;
            }
            if taken.iter().any(|(key, _)| *key == request.key) {
                continue;
            }
            match node.try_allocate(&request.resources) {
                Ok(reservation) => {
                    let shares: Vec<Amount> = reservation
                        .gpu_shares()
                        .iter()
                        .map(|share| share.amount)
                        .collect();
                    let pool = NodeResources::from_gpu_shares(request.resources.clone(), &shares);
                    let gpu_ids = reservation.gpu_ids.clone();
                    taken.push((
                        request.key.clone(),
                        Bundle {
                            reservation,
                            pool,
                            gpu_ids,
                            job_id: request.job_id.clone(),
                            expires: Some(now + self.timeout),
                        },
                    ));
                }
                Err(error) => {
                    for (_, bundle) in &taken {
                        node.release(&bundle.reservation);
                    }
                    return Err(format!("{} {}: {error}", request.key, request.resources));
                }
            }
        }
        self.bundles.extend(taken);
        Ok(())
    }

    /// Commits prepared bundles of `group` (all of them when `indexes` is empty). Fails,
    /// changing nothing, when one of them is not reserved here (its prepare expired).
    pub fn commit(&mut self, group: &str, indexes: &[u32]) -> Result<(), BundleError> {
        let keys = self.keys(group, indexes);
        if let Some(missing) = keys.iter().find(|k| !self.bundles.contains_key(k)) {
            return Err(BundleError::NotHere {
                key: missing.clone(),
            });
        }
        for key in keys {
            if let Some(bundle) = self.bundles.get_mut(&key) {
                bundle.expires = None;
            }
        }
        Ok(())
    }

    /// Releases bundles of `group` (all of them here when `indexes` is empty) back to
    /// `node`; returns those that were reserved, whose leases the caller ends.
    pub fn cancel(
        &mut self,
        node: &mut NodeResources,
        group: &str,
        indexes: &[u32],
    ) -> Vec<BundleKey> {
        let keys = self.keys(group, indexes);
        self.remove(node, keys)
    }

    /// Releases prepared bundles whose commit did not come in time.
    pub fn expire(&mut self, node: &mut NodeResources, now: Instant) -> Vec<BundleKey> {
        let keys: Vec<BundleKey> = self
            .bundles
            .iter()
            .filter(|(_, b)| b.expires.is_some_and(|deadline| deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        self.remove(node, keys)
    }

    /// Releases every bundle of the groups `job_id` created (the job ended).
    pub fn release_job(&mut self, node: &mut NodeResources, job_id: &str) -> Vec<BundleKey> {
        let keys: Vec<BundleKey> = self
            .bundles
            .iter()
            .filter(|(_, b)| b.job_id == job_id)
            .map(|(k, _)| k.clone())
            .collect();
        self.remove(node, keys)
    }

    /// A committed bundle of `group` here for `request` when any bundle will do: one where
    /// it fits now, else one where it can ever fit (to wait on), lowest index first.
    pub fn pick(&self, group: &str, request: &ResourceSet) -> Option<BundleKey> {
        let committed = || {
            self.bundles
                .iter()
                .filter(move |(k, b)| k.group == group && b.expires.is_none())
        };
        committed()
            .find(|(_, b)| b.pool.clone().try_allocate(request).is_ok())
            .or_else(|| committed().find(|(_, b)| b.pool.is_feasible(request).is_ok()))
            .map(|(k, _)| k.clone())
    }

    /// Grants `request` from the committed bundle `key`; returns the allocation (give it
    /// back with [`Bundles::release`]) and the node's ids of the GPUs it got.
    pub fn allocate(
        &mut self,
        key: &BundleKey,
        request: &ResourceSet,
    ) -> Result<(Allocation, Vec<u32>), BundleError> {
        let bundle = self
            .bundles
            .get_mut(key)
            .filter(|b| b.expires.is_none())
            .ok_or_else(|| BundleError::NotHere { key: key.clone() })?;
        match bundle.pool.try_allocate(request) {
            Ok(allocation) => {
                let gpu_ids = allocation
                    .gpu_ids
                    .iter()
                    .filter_map(|i| bundle.gpu_ids.get(*i as usize).copied())
                    .collect();
                Ok((allocation, gpu_ids))
            }
            Err(AllocateError::Insufficient { .. }) => Err(BundleError::Busy { key: key.clone() }),
            Err(AllocateError::Infeasible { .. }) => Err(BundleError::TooLarge {
                key: key.clone(),
                requested: request.to_string(),
                reserved: bundle.reservation.resources.to_string(),
            }),
            Err(other) => Err(BundleError::Invalid(other.to_string())),
        }
    }

    /// Gives back a lease's allocation to its bundle; `false` when the bundle is gone (its
    /// resources went back to the node with it) or the allocation is not from it.
    pub fn release(&mut self, key: &BundleKey, allocation: &Allocation) -> bool {
        self.bundles
            .get_mut(key)
            .is_some_and(|b| b.pool.release(allocation))
    }

    /// What is free in bundle `key` now.
    pub fn available(&self, key: &BundleKey) -> Option<&ResourceSet> {
        self.bundles.get(key).map(|b| b.pool.available())
    }

    fn keys(&self, group: &str, indexes: &[u32]) -> Vec<BundleKey> {
        if indexes.is_empty() {
            self.bundles
                .keys()
                .filter(|k| k.group == group)
                .cloned()
                .collect()
        } else {
            indexes
                .iter()
                .map(|index| BundleKey {
                    group: group.to_string(),
                    index: *index,
                })
                .collect()
        }
    }

    fn remove(&mut self, node: &mut NodeResources, keys: Vec<BundleKey>) -> Vec<BundleKey> {
        let mut removed = Vec::new();
        for key in keys {
            if let Some(bundle) = self.bundles.remove(&key) {
                node.release(&bundle.reservation);
                removed.push(key);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests;
