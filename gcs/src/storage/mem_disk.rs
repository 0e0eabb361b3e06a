//! An in-memory [`RaftDisk`] for simulation: clones share one state, so a test that keeps a
//! clone across a simulated crash restarts the replica with everything it had written.

use std::sync::{Arc, Mutex};

use super::{DiskBatch, DiskState, RaftDisk};
use crate::error::Result;

/// Shared in-memory disk.
#[derive(Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<DiskState>>,
}

impl MemDisk {
    /// Loses everything, as a wiped data dir would (the simulation's lost disk).
    pub fn wipe(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = DiskState::default();
    }
}

impl RaftDisk for MemDisk {
    fn load(&self) -> Result<DiskState> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn write(&mut self, batch: DiskBatch) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(identity) = batch.identity {
            state.identity = Some(identity);
        }
        if !batch.remove_entries.is_empty() {
            state
                .entries
                .retain(|e| !batch.remove_entries.contains(&e.index));
        }
        if let Some(first) = batch.entries.first() {
            let first = first.index;
            state.entries.retain(|e| e.index < first);
            state.entries.extend(batch.entries);
        }
        if let Some(hard_state) = batch.hard_state {
            state.hard_state = hard_state;
        }
        if let Some(conf_state) = batch.conf_state {
            state.conf_state = conf_state;
        }
        if let Some(snapshot) = batch.snapshot {
            state.snapshot = snapshot;
        }
        if let Some(catching_up) = batch.catching_up {
            state.catching_up = catching_up;
        }
        Ok(())
    }
}
