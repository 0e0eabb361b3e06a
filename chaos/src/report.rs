//! The report of a chaos run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::workloads::Verdict;

/// One fault in the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Milliseconds after the workload started.
    pub at_ms: u64,
    /// What and where.
    pub target: String,
    /// Until the GCS declared the node dead (node kills).
    pub detected_ms: Option<u64>,
    /// Until every lane of the workload had an acknowledged operation again.
    pub recovered_ms: Option<u64>,
}

/// p50 and max of some durations.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Spread {
    /// Median, ms.
    pub p50_ms: Option<u64>,
    /// Worst, ms.
    pub max_ms: Option<u64>,
}

impl Spread {
    /// Of these values.
    pub fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        Spread {
            p50_ms: values.get(values.len() / 2).copied(),
            max_ms: values.last().copied(),
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The schedule's seed.
    pub seed: u64,
    /// The workload.
    pub workload: String,
    /// How long the workload ran, ms.
    pub duration_ms: u64,
    /// Every fault.
    pub faults: Vec<FaultRecord>,
    /// Detection times.
    pub detection: Spread,
    /// Recovery times.
    pub recovery: Spread,
    /// Acknowledged operations.
    pub acknowledged: u64,
    /// Acknowledged operations lost (must be 0).
    pub lost_acknowledged: u64,
    /// Invariants.
    pub invariants: Vec<Verdict>,
    /// Everything held and nothing acknowledged was lost.
    pub passed: bool,
    /// The fault network's traffic (runs with network faults through the proxies).
    #[serde(default)]
    pub network: Option<NetworkSummary>,
}

/// What crossed the fault-injecting proxies.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// Connections tunnelled.
    pub connections: u64,
    /// Connections held unanswered by a partition when they were opened.
    pub held_at_connect: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Chunks charged a retransmission timeout by a loss fault.
    pub lost_chunks: u64,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Report {
    pub(crate) fn duration_ms(d: Duration) -> u64 {
        ms(d)
    }

    /// For people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "chaos scenario '{}' (seed {}): workload {} for {} ms\n",
            self.scenario, self.seed, self.workload, self.duration_ms
        );
        out.push_str("faults:\n");
        for f in &self.faults {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
            out.push_str(&format!(
                "  +{:>6} ms  {:<40} detected {:>9}  recovered {:>9}\n",
                f.at_ms,
                f.target,
                opt(f.detected_ms),
                opt(f.recovered_ms)
            ));
        }
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "detection p50/max: {}/{} ms; recovery p50/max: {}/{} ms\n",
            opt(self.detection.p50_ms),
            opt(self.detection.max_ms),
            opt(self.recovery.p50_ms),
            opt(self.recovery.max_ms)
        ));
        out.push_str("invariants:\n");
        for v in &self.invariants {
            out.push_str(&format!(
                "  [{}] {}: {}\n",
                if v.passed { "PASS" } else { "FAIL" },
                v.invariant,
                v.evidence
            ));
        }
        if let Some(n) = &self.network {
            out.push_str(&format!(
                "network (fault proxies): {} connections ({} held at connect by a partition), {} bytes, {} chunks retransmitted\n",
                n.connections, n.held_at_connect, n.bytes, n.lost_chunks
            ));
        }
        out.push_str(&format!(
            "acknowledged operations: {}, lost: {}\nresult: {}\n",
            self.acknowledged,
            self.lost_acknowledged,
            if self.passed { "PASSED" } else { "FAILED" }
        ));
        out
    }
}
