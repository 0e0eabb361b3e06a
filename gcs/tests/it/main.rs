//! fleet-gcs integration tests (one binary): the deterministic simulation of a 3-replica
//! group under crashes, restarts and partitions, with the client history checked
//! linearizable.

mod simulation;
