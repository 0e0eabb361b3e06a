//! One server shard: a contiguous range of slots with their values and optimizer state,
//! the workers' clocks, and the actor that serves pulls and pushes.
//!
//! A shard's methods take `&self` and the actor runs many calls at once
//! (`max_concurrency`), so a pull that waits for slow workers (BSP, SSP) does not hold up
//! the pushes it waits for. The state sits behind a mutex never held across an await; a
//! push wakes the waiting pulls.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::{mix, PsConfig};

/// A shard's data and clocks (no I/O; the actor wraps it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardState {
    config: PsConfig,
    slots: Range<u64>,
    /// Per slot, `width` values: the weights (SGD, Adagrad) or FTRL's `z`.
    values: Vec<f32>,
    /// Per value, the sum of squared gradients (Adagrad, FTRL).
    squares: Vec<f32>,
    /// Per worker, how many clocks it has pushed (a push of clock `c` makes it `c + 1`).
    pushed: Vec<u64>,
    /// Per worker, pushes applied here.
    applied: Vec<u64>,
}

impl ShardState {
    /// Shard `index` of `config`, its weights drawn from `seed`.
    pub fn new(config: PsConfig, index: usize, seed: u64) -> Self {
        let slots = config.shard_slots(index);
        let width = config.width;
        let len = (slots.end - slots.start) as usize * width;
        let scale = config.init_scale;
        let values = (0..len)
            .map(|i| {
                if scale == 0.0 {
                    return 0.0;
                }
                let bits = mix(seed ^ mix(slots.start * width as u64 + i as u64));
                ((bits >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        ShardState {
            slots,
            values,
            squares: vec![0.0; len],
            pushed: vec![0; config.workers],
            applied: vec![0; config.workers],
            config,
        }
    }

    fn offset(&self, slot: u64) -> Result<usize, String> {
        if !self.slots.contains(&slot) {
            return Err(format!(
                "slot {slot} is not on this shard (slots {}..{}): the worker's shard map is stale",
                self.slots.start, self.slots.end
            ));
        }
        Ok((slot - self.slots.start) as usize * self.config.width)
    }

    fn check_worker(&self, worker: usize) -> Result<(), String> {
        if worker >= self.config.workers {
            return Err(format!(
                "worker {worker} is not one of the server's {} workers",
                self.config.workers
            ));
        }
        Ok(())
    }

    /// The weights of `slots` (`width` each, in order).
    pub fn read(&self, slots: &[u64]) -> Result<Vec<f32>, String> {
        let width = self.config.width;
        let mut out = Vec::with_capacity(slots.len() * width);
        for slot in slots {
            let at = self.offset(*slot)?;
            for i in at..at + width {
                out.push(
                    self.config
                        .optimizer
                        .weight(self.values[i], self.squares[i]),
                );
            }
        }
        Ok(out)
    }

    /// Applies `worker`'s gradients of clock `clock` (`width` per slot) and advances its
    /// clock. Nothing is applied when anything in the push is wrong.
    pub fn apply(
        &mut self,
        worker: usize,
        clock: u64,
        slots: &[u64],
        grads: &[f32],
    ) -> Result<(), String> {
        self.check_worker(worker)?;
        let width = self.config.width;
        if grads.len() != slots.len() * width {
            return Err(format!(
                "{} gradient values for {} keys of width {width}: expected {}",
                grads.len(),
                slots.len(),
                slots.len() * width
            ));
        }
        if let Some(bad) = grads.iter().find(|g| !g.is_finite()) {
            return Err(format!("a gradient value is {bad}: not applied"));
        }
        let offsets = slots
            .iter()
            .map(|s| self.offset(*s))
            .collect::<Result<Vec<_>, _>>()?;
        let optimizer = self.config.optimizer;
        for (k, at) in offsets.into_iter().enumerate() {
            for j in 0..width {
                let i = at + j;
                optimizer.apply(
                    &mut self.values[i],
                    &mut self.squares[i],
                    grads[k * width + j],
                );
            }
        }
        self.pushed[worker] = self.pushed[worker].max(clock + 1);
        self.applied[worker] += 1;
        Ok(())
    }

    /// Whether a pull of `clock` may read now.
    pub fn readable(&self, clock: u64) -> bool {
        match self.config.consistency.required(clock) {
            None => true,
            Some(needed) => self.pushed.iter().all(|p| *p >= needed),
        }
    }

    /// The workers a pull of `clock` waits for.
    pub fn lagging(&self, clock: u64) -> Vec<usize> {
        let needed = self.config.consistency.required(clock).unwrap_or(0);
        (0..self.pushed.len())
            .filter(|w| self.pushed[*w] < needed)
            .collect()
    }

    /// Clocks pushed, per worker.
    pub fn pushed(&self) -> &[u64] {
        &self.pushed
    }

    /// Pushes applied, per worker.
    pub fn applied(&self) -> &[u64] {
        &self.applied
    }
}

/// One shard of a parameter server (see the module docs).
#[fleet::actor]
pub struct PsShard {
    index: usize,
    state: Mutex<ShardState>,
    changed: tokio::sync::Notify,
}

impl PsShard {
    fn with_state<T>(&self, f: impl FnOnce(&mut ShardState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }
}

#[fleet::actor]
impl PsShard {
    pub fn new(config: PsConfig, index: usize, seed: u64) -> Self {
        PsShard {
            index,
            state: Mutex::new(ShardState::new(config, index, seed)),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The weights of `slots`, once the consistency model allows worker `worker` to read
    /// at `clock` (an error naming the slow workers after the wait timeout).
    pub async fn pull(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
    ) -> Result<Vec<f32>, String> {
        let timeout = self.with_state(|s| s.config.wait_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ready = self.with_state(|s| {
                s.check_worker(worker)?;
                Ok::<_, String>(s.readable(clock).then(|| s.read(&slots)))
            })?;
            if let Some(values) = ready {
                return values;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let lagging = self.with_state(|s| s.lagging(clock));
                return Err(format!(
                    "shard {}: worker {worker}'s pull at clock {clock} waited {timeout:?} for worker(s) {lagging:?} to push (are they alive? the consistency model waits for every worker)",
                    self.index
                ));
            }
        }
    }

    /// Applies worker `worker`'s gradients of clock `clock`; answers the pushes applied
    /// from it so far. An empty push only advances its clock.
    pub fn push(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
        grads: Vec<f32>,
    ) -> Result<u64, String> {
        let applied = self.with_state(|s| {
            s.apply(worker, clock, &slots, &grads)
                .map(|()| s.applied()[worker])
        });
        self.changed.notify_waiters();
        applied.map_err(|e| format!("shard {}: {e}", self.index))
    }

    /// Clocks pushed per worker, and pushes applied per worker.
    pub fn clocks(&self) -> (Vec<u64>, Vec<u64>) {
        self.with_state(|s| (s.pushed().to_vec(), s.applied().to_vec()))
    }

    /// The weights of `slots`, without waiting.
    pub fn read(&self, slots: Vec<u64>) -> Result<Vec<f32>, String> {
        self.with_state(|s| s.read(&slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Consistency, KeySpace, Optimizer};

    fn state(consistency: Consistency) -> ShardState {
        let config = PsConfig {
            key_space: KeySpace::Dense { keys: 10 },
            width: 2,
            optimizer: Optimizer::Sgd { lr: 0.5 },
            consistency,
            workers: 2,
            shards: 2,
            wait_timeout: std::time::Duration::from_secs(1),
            init_scale: 0.0,
        };
        ShardState::new(config, 1, 7)
    }

    #[test]
    fn a_push_applies_to_its_slots_and_advances_the_workers_clock() {
        let mut s = state(Consistency::Bsp);
        s.apply(0, 0, &[5, 9], &[1.0, 2.0, 3.0, 4.0])
            .expect("applies");
        assert_eq!(
            s.read(&[9, 5]).expect("reads"),
            vec![-1.5, -2.0, -0.5, -1.0]
        );
        assert_eq!(s.pushed(), &[1, 0]);
        assert_eq!(s.applied(), &[1, 0]);
    }

    #[test]
    fn bsp_and_ssp_pulls_wait_for_the_slowest_worker_and_asp_never() {
        let mut s = state(Consistency::Bsp);
        assert!(s.readable(0));
        s.apply(0, 0, &[], &[]).expect("applies");
        assert!(!s.readable(1));
        assert_eq!(s.lagging(1), vec![1]);
        s.apply(1, 0, &[], &[]).expect("applies");
        assert!(s.readable(1));
        let mut s = state(Consistency::Ssp(2));
        for clock in 0..3 {
            s.apply(0, clock, &[], &[]).expect("applies");
        }
        // Worker 0 is 3 clocks ahead of worker 1, which has pushed nothing.
        assert!(s.readable(2) && !s.readable(3));
        assert!(state(Consistency::Asp).readable(1_000));
    }

    #[test]
    fn a_wrong_push_is_refused_whole() {
        let mut s = state(Consistency::Asp);
        assert!(s
            .apply(0, 0, &[5], &[1.0])
            .expect_err("refused")
            .contains("expected 2"));
        assert!(s
            .apply(0, 0, &[2], &[1.0, 1.0])
            .expect_err("refused")
            .contains("not on this shard"));
        assert!(s
            .apply(3, 0, &[5], &[1.0, 1.0])
            .expect_err("refused")
            .contains("worker 3"));
        assert!(s
            .apply(0, 0, &[5, 6], &[1.0, 1.0, f32::NAN, 1.0])
            .expect_err("refused")
            .contains("NaN"));
        assert_eq!(s.read(&[5, 6]).expect("reads"), vec![0.0; 4]);
        assert_eq!(s.applied(), &[0, 0]);
    }
}
