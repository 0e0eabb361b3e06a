//! The per-node daemon (raylet): resources, the local scheduler, the worker pool, the
//! shared-memory object store and transfer between nodes.
//!
//! Empty on purpose: the single-node runtime issue builds it on the GCS in `fleet-gcs`.
