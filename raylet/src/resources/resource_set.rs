//! Named resource amounts: `{CPU: 2, GPU: 0.5, memory: 1073741824, my_accelerator: 1}`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::error::ResourceError;

/// Named resource amounts, e.g. what a task asks for or what a node has.
///
/// Names are case-sensitive: [`CPU`](super::CPU), [`GPU`](super::GPU),
/// [`MEMORY`](super::MEMORY) (in bytes) and any custom name. A name that is absent has
/// amount zero, and setting an amount to zero removes the name, so two sets that mean the
/// same thing compare equal.
///
/// On the wire and in config files a set is a map from name to number
/// (`{"CPU": 1.0, "GPU": 0.5}`); deserializing validates every amount the same way
/// [`ResourceSet::from_pairs`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, f64>", into = "BTreeMap<String, f64>")]
pub struct ResourceSet {
    // BTreeMap so that iteration, `Display` and error reports follow one stable order.
    amounts: BTreeMap<String, Amount>,
}

impl ResourceSet {
    /// The empty set (asks for, or has, nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A set from `(name, amount)` pairs, e.g. `[("CPU", 0.5), ("GPU", 1.0)]`.
    ///
    /// Rejects an empty name, a name given twice, and any amount that
    /// [`Amount::from_f64`] rejects (negative, NaN, more than four decimal places); the
    /// error names the resource.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<Self, ResourceError> {
        let mut set = ResourceSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for (resource, value) in pairs {
            if !seen.insert(resource) {
                return Err(ResourceError::DuplicateName {
                    resource: resource.to_string(),
                });
            }
            set.insert(resource, value)?;
        }
        Ok(set)
    }

    /// A set from a name → amount map, the form config files and the raylet's RPCs use;
    /// validates like [`ResourceSet::from_pairs`].
    pub fn try_from_map(map: &BTreeMap<String, f64>) -> Result<Self, ResourceError> {
        let mut set = ResourceSet::new();
        for (resource, value) in map {
            set.insert(resource, *value)?;
        }
        Ok(set)
    }

    /// This set as a name → amount map (see [`Amount::to_f64`] for exactness).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.iter()
            .map(|(name, amount)| (name.to_string(), amount.to_f64()))
            .collect()
    }

    /// Sets `resource` to `value` (replacing any previous amount), validating both.
    pub fn insert(&mut self, resource: &str, value: f64) -> Result<(), ResourceError> {
        check_name(resource)?;
        let amount = Amount::from_f64(value).map_err(|problem| ResourceError::InvalidAmount {
            resource: resource.to_string(),
            value,
            problem,
        })?;
        self.set(resource, amount);
        Ok(())
    }

    /// Sets `resource` to an exact `amount` (e.g. `Amount::whole(bytes)` for memory, which
    /// stays exact where an `f64` would round).
    pub fn insert_amount(&mut self, resource: &str, amount: Amount) -> Result<(), ResourceError> {
        check_name(resource)?;
        self.set(resource, amount);
        Ok(())
    }

    /// The amount of `resource`; zero when absent.
    pub fn get(&self, resource: &str) -> Amount {
        self.amounts.get(resource).copied().unwrap_or(Amount::ZERO)
    }

    /// Every non-zero `(name, amount)`, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Amount)> + '_ {
        self.amounts
            .iter()
            .map(|(name, amount)| (name.as_str(), *amount))
    }

    /// Whether every amount is zero.
    pub fn is_empty(&self) -> bool {
        self.amounts.is_empty()
    }

    /// How many names have a non-zero amount.
    pub fn len(&self) -> usize {
        self.amounts.len()
    }

    /// Sets an amount for a name already known to be valid; zero removes the name so that
    /// equal sets compare equal.
    pub(super) fn set(&mut self, resource: &str, amount: Amount) {
        if amount.is_zero() {
            self.amounts.remove(resource);
        } else {
            self.amounts.insert(resource.to_string(), amount);
        }
    }
}

/// A name is usable if it is non-empty and has no surrounding whitespace: `" CPU"` would
/// silently be a different resource from `"CPU"`, and nothing would ever provide it.
fn check_name(resource: &str) -> Result<(), ResourceError> {
    if resource.is_empty() || resource.trim() != resource {
        return Err(ResourceError::InvalidName {
            resource: resource.to_string(),
        });
    }
    Ok(())
}

impl TryFrom<BTreeMap<String, f64>> for ResourceSet {
    type Error = ResourceError;

    /// The form config files and the wire use; validates like [`ResourceSet::from_pairs`].
    fn try_from(map: BTreeMap<String, f64>) -> Result<Self, Self::Error> {
        ResourceSet::try_from_map(&map)
    }
}

impl From<ResourceSet> for BTreeMap<String, f64> {
    fn from(set: ResourceSet) -> Self {
        set.to_map()
    }
}

/// `{CPU: 1, GPU: 0.5}`; `{}` when empty.
impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (index, (name, amount)) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: {amount}")?;
        }
        f.write_str("}")
    }
}
