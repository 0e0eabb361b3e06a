//! The core worker linked into every driver and worker process: task submission,
//! ownership and reference counting, execution.
//!
//! Empty on purpose: the single-node runtime issue builds it.
