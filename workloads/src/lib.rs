//! Workload libraries on Fleet's primitives: parameter server, collectives and
//! data-parallel training, streams, batch.
//!
//! Empty on purpose: later issues build each library.
