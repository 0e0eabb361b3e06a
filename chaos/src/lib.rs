//! The chaos harness: a cluster of real processes, fault injectors, invariant checkers.
//!
//! Empty on purpose: the chaos issue builds it. The GCS's linearizability checker it will
//! use lives in `fleet_gcs::linearizability`.
