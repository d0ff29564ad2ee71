//! What a run records: each finished cycle (`cycles/N/cycle.json`, the resume point) and the whole
//! run (`report.json`).
use std::collections::BTreeMap;

use forge_api::{HeadMask, Metrics};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::budget::Estimate;
use super::recipe::Recipe;

/// One finished cycle, as `cycles/N/cycle.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CycleRecord {
    pub cycle: usize,
    pub heads_removed: usize,
    pub heads_left: usize,
    /// Linear-attention value heads removed so far (a hybrid's; 0 elsewhere).
    #[serde(default)]
    pub linear_heads_removed: usize,
    pub parameters_compact: usize,
    pub mask: HeadMask,
    pub scores: Vec<Vec<f32>>,
    /// Metrics of the pruned model before training.
    pub pruned: Metrics,
    /// Metrics of the trained, merged, saved and reloaded model.
    pub trained: Metrics,
    pub train: Value,
    /// Whether the guard kept the cycle.
    pub accepted: bool,
    /// Which guard rolled it back, and why (none when accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    pub seconds: f64,
    /// Phase → peak bytes (see [`PeakMemory`](crate::runtime::PeakMemory)).
    pub peak_memory_bytes: BTreeMap<String, u64>,
}

/// Everything a run did.
#[derive(Serialize)]
pub struct RunReport {
    pub forge_version: String,
    pub recipe: Recipe,
    /// Plugin libraries whose strategies the run could choose (their hashes go to the provenance).
    pub plugins: Vec<String>,
    pub guard_metric: String,
    pub baseline: Metrics,
    pub cycles: Vec<CycleRecord>,
    #[serde(rename = "final")]
    pub final_metrics: Metrics,
    pub base_parameters: usize,
    pub final_parameters: usize,
    pub heads_before: usize,
    pub heads_after: usize,
    pub mask: HeadMask,
    pub estimates: Vec<Estimate>,
    pub budget: Option<u64>,
    pub peak_memory_bytes: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Output file → sha256.
    pub outputs: BTreeMap<String, String>,
}
