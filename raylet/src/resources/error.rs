//! Errors of resource accounting: each names the resource and says what to do.

use super::amount::{Amount, AmountProblem};

/// A resource set could not be built from what was given (a config file, a flag, a task's
/// options).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ResourceError {
    /// The name is empty or has leading or trailing whitespace.
    #[error("resource name {resource:?} is empty or has surrounding whitespace; use a name such as \"CPU\", \"memory\" or \"my_accelerator\"")]
    InvalidName {
        /// The name as given.
        resource: String,
    },
    /// The same name appears twice in one list.
    #[error("resource `{resource}` is listed more than once; list each resource once")]
    DuplicateName {
        /// The repeated name.
        resource: String,
    },
    /// The amount is negative, NaN, infinite, too precise or too large.
    #[error("resource `{resource}` has invalid amount {value}: {problem}")]
    InvalidAmount {
        /// The resource.
        resource: String,
        /// The amount as given.
        value: f64,
        /// What is wrong with it, and the fix.
        problem: AmountProblem,
    },
}

/// Why a request was not granted now.
///
/// The three kinds call for different reactions, which [`AllocateError::is_retryable`]
/// tells apart: wait ([`Insufficient`](AllocateError::Insufficient)), or report to the user
/// because waiting cannot help ([`Infeasible`](AllocateError::Infeasible),
/// [`InvalidGpuRequest`](AllocateError::InvalidGpuRequest)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// The request fits this node's total but not what is free now; it will fit once
    /// running work releases enough.
    ///
    /// For `GPU`, `available` is what a request of this shape can use: the number of
    /// fully free GPUs for a whole-GPU request, or the largest free share of a single GPU
    /// for a fractional one (free shares on different GPUs cannot be combined).
    #[error("the request needs {requested} of `{resource}` but only {available} is free now; it fits this node, so it can run once running work releases enough")]
    Insufficient {
        /// The first resource (in name order) that is short.
        resource: String,
        /// How much the request asks for.
        requested: Amount,
        /// How much a request of this shape can use now.
        available: Amount,
    },
    /// The request asks for more than this node has in total, so waiting cannot help.
    #[error("the request needs {requested} of `{resource}` but this node has only {total} in total, so it can never run here; lower the request or run it on a node that has enough")]
    Infeasible {
        /// The first resource (in name order) that the node lacks.
        resource: String,
        /// How much the request asks for.
        requested: Amount,
        /// The node's total.
        total: Amount,
    },
    /// A request of one GPU or more that is not a whole number (e.g. 1.5): one task cannot
    /// hold one GPU whole and share another.
    #[error("a request for {requested} GPUs is invalid: requests of 1 GPU or more must be whole numbers; ask for a whole number such as 1 or 2, or for less than 1 to share a GPU")]
    InvalidGpuRequest {
        /// The amount asked for.
        requested: Amount,
    },
}

impl AllocateError {
    /// Whether the same request may succeed later on this node without being changed.
    pub fn is_retryable(&self) -> bool {
        // No `_` arm: a new variant must decide.
        match self {
            AllocateError::Insufficient { .. } => true,
            AllocateError::Infeasible { .. } | AllocateError::InvalidGpuRequest { .. } => false,
        }
    }
}
