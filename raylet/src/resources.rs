//! A node's resource accounting: what it has, what is free, and which GPUs a grant gets.
//!
//! Pure bookkeeping with no I/O, so the scheduler can call it under a lock and tests can
//! drive it directly.
//!
//! - [`Amount`]: a fixed-point amount (units of 1/10_000), so repeated grants and releases
//!   never drift.
//! - [`ResourceSet`]: named amounts (`CPU`, `GPU`, `memory` in bytes, custom names).
//! - [`NodeResources`]: a node's totals and free amounts; [`NodeResources::try_allocate`]
//!   grants an [`Allocation`] or says whether to wait ([`AllocateError::Insufficient`]) or
//!   give up ([`AllocateError::Infeasible`], [`AllocateError::InvalidGpuRequest`]).
//!
//! GPUs follow Ray's rules. A request of one GPU or more must be a whole number `n` and
//! gets `n` distinct GPUs that nobody else uses. A request below one gets a share of a
//! single GPU that has at least that much free; among those it picks the most used, so
//! fractional users pack together and whole GPUs stay free for whole-GPU requests.

mod amount;
mod error;
mod resource_set;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use amount::{Amount, AmountProblem};
pub use error::{AllocateError, ResourceError};
pub use resource_set::ResourceSet;

/// Name of the CPU resource.
pub const CPU: &str = "CPU";
/// Name of the GPU resource; its total is the node's number of GPUs.
pub const GPU: &str = "GPU";
/// Name of the memory resource, in bytes.
pub const MEMORY: &str = "memory";

/// Part of one GPU held by an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuShare {
    /// The GPU's id on this node (0-based, as in `CUDA_VISIBLE_DEVICES`).
    pub id: u32,
    /// How much of it: [`Amount::ONE`] for the whole GPU, less for a share.
    pub amount: Amount,
}

/// What a successful [`NodeResources::try_allocate`] granted; give it back with
/// [`NodeResources::release`].
///
/// The node keeps its own record of every grant and releases from that record, so editing
/// the public fields cannot make a release give back more than was taken (an edited
/// `resources` makes [`NodeResources::release`] refuse the allocation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The resources granted (exactly what was requested).
    pub resources: ResourceSet,
    /// The GPUs granted, in ascending order; empty when no GPU was requested.
    pub gpu_ids: Vec<u32>,
    id: u64,
    gpu_shares: Vec<GpuShare>,
}

impl Allocation {
    /// This grant's id, unique among the grants of the [`NodeResources`] that made it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How much of each granted GPU this allocation holds, in ascending id order
    /// ([`Amount::ONE`] per GPU for whole-GPU grants, the requested share otherwise).
    pub fn gpu_shares(&self) -> &[GpuShare] {
        &self.gpu_shares
    }
}

/// The value of `CUDA_VISIBLE_DEVICES` for a worker holding `allocation`: its GPU ids
/// joined by commas (`"0,1"`), or `""` when it holds none, which hides every GPU.
pub fn cuda_visible_devices(allocation: &Allocation) -> String {
    allocation
        .gpu_ids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What one grant took, kept by the node so release does not trust the caller's copy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    resources: ResourceSet,
    gpu_shares: Vec<GpuShare>,
}

/// A node's resources: totals, what is free now, and how much of each GPU is free.
///
/// Invariants: for every resource `available <= total`; `available[GPU]` equals the sum of
/// the per-GPU free shares; and total minus available is exactly the sum of the
/// outstanding grants.
#[derive(Clone, Debug)]
pub struct NodeResources {
    total: ResourceSet,
    available: ResourceSet,
    /// Free share of each GPU, indexed by id; [`Amount::ONE`] means fully free.
    gpu_free: Vec<Amount>,
    /// Grants not yet released, by allocation id.
    outstanding: BTreeMap<u64, Grant>,
    next_allocation_id: u64,
}

impl NodeResources {
    /// A node offering `total`, with GPUs `0..num_gpus`.
    ///
    /// `num_gpus` is authoritative: the `GPU` entry of `total`, if any, is replaced by
    /// `num_gpus`, because GPU ids and the GPU total must agree.
    pub fn new(mut total: ResourceSet, num_gpus: u32) -> Self {
        // u32::MAX * 10_000 is far below u64::MAX, so this cannot overflow.
        let gpus = Amount::from_units(u64::from(num_gpus) * Amount::UNITS_PER_WHOLE);
        total.set(GPU, gpus);
        NodeResources {
            available: total.clone(),
            total,
            gpu_free: vec![Amount::ONE; num_gpus as usize],
            outstanding: BTreeMap::new(),
            next_allocation_id: 0,
        }
    }

    /// A pool offering `total` whose GPUs are the given shares (index `i` holds
    /// `gpu_shares[i]` of one GPU): what a placement-group bundle reserved out of a node
    /// offers the leases inside it. The `GPU` total is the sum of the shares.
    pub fn from_gpu_shares(mut total: ResourceSet, gpu_shares: &[Amount]) -> Self {
        let gpus = gpu_shares
            .iter()
            .fold(Amount::ZERO, |sum, share| sum.saturating_add(*share));
        total.set(GPU, gpus);
        NodeResources {
            available: total.clone(),
            total,
            gpu_free: gpu_shares.iter().map(|s| (*s).min(Amount::ONE)).collect(),
            outstanding: BTreeMap::new(),
            next_allocation_id: 0,
        }
    }

    /// Everything this node has.
    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    /// What is free now (for `GPU`, the sum of free shares across GPUs).
    pub fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// How many GPUs this node has.
    pub fn num_gpus(&self) -> u32 {
        // Built from a u32 in `new`, so it always fits.
        u32::try_from(self.gpu_free.len()).unwrap_or(u32::MAX)
    }

    /// How much of GPU `id` is free, or `None` if there is no such GPU.
    pub fn gpu_free(&self, id: u32) -> Option<Amount> {
        self.gpu_free.get(id as usize).copied()
    }

    /// How many grants have not been released.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether `request` could ever be granted on this node (ignoring what is in use now).
    ///
    /// Errors with [`AllocateError::InvalidGpuRequest`] for a non-whole GPU request of one
    /// or more, and with [`AllocateError::Infeasible`] naming the first resource (in name
    /// order) the node has too little of in total, including resources it lacks entirely.
    pub fn is_feasible(&self, request: &ResourceSet) -> Result<(), AllocateError> {
        let gpus = request.get(GPU);
        if gpus >= Amount::ONE && !gpus.is_whole() {
            return Err(AllocateError::InvalidGpuRequest { requested: gpus });
        }
        for (resource, requested) in request.iter() {
            let total = self.total.get(resource);
            if requested > total {
                return Err(AllocateError::Infeasible {
                    resource: resource.to_string(),
                    requested,
                    total,
                });
            }
        }
        Ok(())
    }

    /// Grants `request` if every amount in it is free now, choosing GPUs by the rules in
    /// the module docs. On error nothing changes.
    ///
    /// Checks in this order, so the caller learns the most useful thing first: an invalid
    /// GPU request, then anything infeasible (never wait for it), then anything
    /// insufficient now (wait and retry).
    pub fn try_allocate(&mut self, request: &ResourceSet) -> Result<Allocation, AllocateError> {
        self.is_feasible(request)?;

        let mut gpu_shares = Vec::new();
        for (resource, requested) in request.iter() {
            if resource == GPU {
                gpu_shares = choose_gpus(&self.gpu_free, requested).map_err(|available| {
                    AllocateError::Insufficient {
                        resource: resource.to_string(),
                        requested,
                        available,
                    }
                })?;
                continue;
            }
            let available = self.available.get(resource);
            if requested > available {
                return Err(AllocateError::Insufficient {
                    resource: resource.to_string(),
                    requested,
                    available,
                });
            }
        }

        // Everything fits: commit. Each subtraction was checked above, so saturation
        // never actually happens; it only avoids a panic path.
        for (resource, requested) in request.iter() {
            let left = self.available.get(resource).saturating_sub(requested);
            self.available.set(resource, left);
        }
        for share in &gpu_shares {
            if let Some(free) = self.gpu_free.get_mut(share.id as usize) {
                *free = free.saturating_sub(share.amount);
            }
        }

        let id = self.next_allocation_id;
        self.next_allocation_id += 1;
        let grant = Grant {
            resources: request.clone(),
            gpu_shares,
        };
        self.outstanding.insert(id, grant.clone());
        Ok(Allocation {
            id,
            gpu_ids: grant.gpu_shares.iter().map(|share| share.id).collect(),
            resources: grant.resources,
            gpu_shares: grant.gpu_shares,
        })
    }

    /// Gives back what `allocation` took. Returns `false`, changing nothing, if it was
    /// already released or was not made by this node, so a repeated release cannot free
    /// resources that another grant is using.
    pub fn release(&mut self, allocation: &Allocation) -> bool {
        let matches = self.outstanding.get(&allocation.id).is_some_and(|grant| {
            grant.resources == allocation.resources && grant.gpu_shares == allocation.gpu_shares
        });
        if !matches {
            return false;
        }
        let Some(grant) = self.outstanding.remove(&allocation.id) else {
            return false;
        };
        for (resource, amount) in grant.resources.iter() {
            // Capped at the total so that the invariant `available <= total` holds even if
            // the bookkeeping were wrong; with the grant record it never needs to be.
            let back = self
                .available
                .get(resource)
                .saturating_add(amount)
                .min(self.total.get(resource));
            self.available.set(resource, back);
        }
        for share in &grant.gpu_shares {
            if let Some(free) = self.gpu_free.get_mut(share.id as usize) {
                *free = free.saturating_add(share.amount).min(Amount::ONE);
            }
        }
        true
    }
}

/// Which GPUs a request for `requested` GPUs takes now, given each GPU's free share.
///
/// - Zero: none.
/// - Below one: one GPU with at least `requested` free, the most used such GPU (least
///   free; lowest id on ties), so fractional users pack together.
/// - One or more (whole, checked by the caller): the lowest-numbered fully free GPUs.
///
/// When nothing fits, returns what a request of this shape could use now: the largest free
/// share for a fractional request, the number of fully free GPUs for a whole one.
fn choose_gpus(gpu_free: &[Amount], requested: Amount) -> Result<Vec<GpuShare>, Amount> {
    if requested.is_zero() {
        return Ok(Vec::new());
    }
    let ids = (0u32..).zip(gpu_free.iter().copied());
    if requested < Amount::ONE {
        let best = ids
            .clone()
            .filter(|&(_, free)| free >= requested)
            .min_by_key(|&(id, free)| (free, id));
        return match best {
            Some((id, _)) => Ok(vec![GpuShare {
                id,
                amount: requested,
            }]),
            None => Err(ids.map(|(_, free)| free).max().unwrap_or(Amount::ZERO)),
        };
    }
    let wanted = usize::try_from(requested.whole_part()).unwrap_or(usize::MAX);
    let free_ids: Vec<u32> = ids
        .filter(|&(_, free)| free == Amount::ONE)
        .map(|(id, _)| id)
        .collect();
    if free_ids.len() < wanted {
        return Err(Amount::from_units(
            free_ids.len() as u64 * Amount::UNITS_PER_WHOLE,
        ));
    }
    Ok(free_ids
        .into_iter()
        .take(wanted)
        .map(|id| GpuShare {
            id,
            amount: Amount::ONE,
        })
        .collect())
}
