//! Fleet's public API (`init`, `#[actor]`, `#[remote]`, `ObjectRef`, `get/put/wait`).
//!
//! Empty on purpose: the single-node runtime issue builds it. Until then the control store
//! is used directly through `fleet_gcs::GcsClient`.
