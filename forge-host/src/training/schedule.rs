//! Linear warm-up, then cosine decay to zero at the last step.

/// The learning rate of step `step` (0-based) of `steps`, peaking at `peak` after `warmup` steps.
pub fn learning_rate(step: usize, steps: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_by_cosine() {
        assert_eq!(learning_rate(0, 100, 10, 1.0), 0.1);
        assert_eq!(learning_rate(9, 100, 10, 1.0), 1.0);
        assert_eq!(learning_rate(10, 100, 10, 1.0), 1.0);
        assert!((learning_rate(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(99, 100, 10, 1.0) < 0.001);
    }
}
