//! Where the time goes, by named section: with `FORGE_PROFILE=1` each section synchronizes the device
//! before and after it and adds its wall time to a total printed (one JSON line) when forge exits.
//! Off, a section costs one branch. Synchronizing changes the timing it measures (no overlap between
//! sections), so profiles answer "what share", never "how fast".
//!
//! Where the memory goes, too, given a probe of the device's memory ([`set_memory_probe`]): a section
//! inside which the device's high-water mark rose reports the highest mark it set and what was in use
//! when it began. The innermost such section holding the run's peak is where the peak happened, and
//! the difference is what that section's work added on top of what it found.
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("FORGE_PROFILE").is_some_and(|v| v != "0"));
static TOTALS: Mutex<BTreeMap<&'static str, Totals>> = Mutex::new(BTreeMap::new());

/// Bytes in use now and the high-water mark of a device's memory.
pub type MemoryProbe = fn(&Device) -> Option<(u64, u64)>;
static PROBE: OnceLock<MemoryProbe> = OnceLock::new();

#[derive(Default)]
struct Totals {
    seconds: f64,
    calls: u64,
    /// The highest high-water mark set inside the section, and the bytes in use when it began.
    peak: Option<(u64, u64)>,
}

/// Lets sections report memory (forge-host knows the device's pool; this crate does not).
pub fn set_memory_probe(probe: MemoryProbe) {
    let _ = PROBE.set(probe);
}

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
    let before = PROBE.get().and_then(|probe| probe(device));
    let started = Instant::now();
    let out = work()?;
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    let after = PROBE.get().and_then(|probe| probe(device));
    let mut totals = TOTALS.lock().expect("no panic while holding the profile");
    let entry = totals.entry(name).or_default();
    entry.seconds += seconds;
    entry.calls += 1;
    if let (Some((in_use, high_before)), Some((_, high_after))) = (before, after) {
        if high_after > high_before && entry.peak.is_none_or(|(peak, _)| high_after > peak) {
            entry.peak = Some((high_after, in_use));
        }
    }
    Ok(out)
}

/// Forgets the totals so far: work after a warm-up is then profiled alone (first passes pay for
/// library set-up and kernel loading, which would otherwise land in whichever section came first).
pub fn reset() {
    TOTALS.lock().expect("no panic while holding the profile").clear();
}

/// The totals as one JSON object `{"profile": {section: {"seconds", "calls"}}}`, if profiling is on;
/// sections that raised the memory's high-water mark also give `peak_gib` and `in_use_at_start_gib`.
pub fn report() -> Option<String> {
    if !*ENABLED {
        return None;
    }
    let totals = TOTALS.lock().expect("no panic while holding the profile");
    let sections: serde_json::Map<String, serde_json::Value> = totals
        .iter()
        .map(|(name, t)| {
            let mut entry = serde_json::json!({"seconds": t.seconds, "calls": t.calls});
            if let Some((peak, in_use)) = t.peak {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                entry["peak_gib"] = gib(peak).into();
                entry["in_use_at_start_gib"] = gib(in_use).into();
            }
            (name.to_string(), entry)
        })
        .collect();
    Some(serde_json::json!({ "profile": sections }).to_string())
}
