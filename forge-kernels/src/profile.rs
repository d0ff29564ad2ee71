//! Where the time goes, by named section: with `FORGE_PROFILE=1` each section synchronizes the device
//! before and after it and adds its wall time to a total printed (one JSON line) when forge exits.
//! Off, a section costs one branch. Synchronizing changes the timing it measures (no overlap between
//! sections), so profiles answer "what share", never "how fast".
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use candle_core::Device;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("FORGE_PROFILE").is_some_and(|v| v != "0"));
static TOTALS: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

/// Runs `work` as section `name`.
pub fn section<T>(
    name: &'static str,
    device: &Device,
    work: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    if !*ENABLED {
        return work();
    }
    device.synchronize()?;
    let started = Instant::now();
    let out = work()?;
    device.synchronize()?;
    let mut totals = TOTALS.lock().expect("no panic while holding the profile");
    let entry = totals.entry(name).or_default();
    entry.0 += started.elapsed().as_secs_f64();
    entry.1 += 1;
    Ok(out)
}

/// Forgets the totals so far: work after a warm-up is then profiled alone (first passes pay for
/// library set-up and kernel loading, which would otherwise land in whichever section came first).
pub fn reset() {
    TOTALS.lock().expect("no panic while holding the profile").clear();
}

/// The totals as one JSON object `{"profile": {section: {"seconds", "calls"}}}`, if profiling is on.
pub fn report() -> Option<String> {
    if !*ENABLED {
        return None;
    }
    let totals = TOTALS.lock().expect("no panic while holding the profile");
    let sections: serde_json::Map<String, serde_json::Value> = totals
        .iter()
        .map(|(name, (seconds, calls))| {
            (name.to_string(), serde_json::json!({"seconds": seconds, "calls": calls}))
        })
        .collect();
    Some(serde_json::json!({ "profile": sections }).to_string())
}
