//! Built-in optimizers, one per file, as flat-buffer kernels (see [`forge_api::Optimizer`]) that also
//! step on the device ([`TrainOptimizer`]).
mod adamw;
mod adamw8bit;
pub mod checks;
mod on_device;
mod quant_map;

pub use on_device::{HostOnly, TrainOptimizer};

use forge_api::{OptionKind, OptionSpec, Options, StateData, StateTensor, StrategyError};

/// Adam's hyper-parameters, shared by both variants (defaults are PyTorch's `AdamW`'s).
#[derive(Clone, Copy, Debug)]
struct AdamConfig {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamConfig {
    fn options() -> Vec<OptionSpec> {
        vec![
            OptionSpec::new("beta1", OptionKind::Float, 0.9, "decay of the first moment"),
            OptionSpec::new("beta2", OptionKind::Float, 0.999, "decay of the second moment"),
            OptionSpec::new("eps", OptionKind::Float, 1e-8, "added to the root of the second moment"),
            OptionSpec::new("weight-decay", OptionKind::Float, 0.01, "decoupled weight decay (AdamW)"),
        ]
    }

    fn from_options(o: &Options) -> Result<Self, StrategyError> {
        let c = AdamConfig {
            beta1: o.float("beta1"),
            beta2: o.float("beta2"),
            eps: o.float("eps"),
            weight_decay: o.float("weight-decay"),
        };
        for (name, v) in [("beta1", c.beta1), ("beta2", c.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(StrategyError::bad_input(format!(
                    "option `{name}` is {v}; it must be in [0, 1)"
                )));
            }
        }
        Ok(c)
    }

    /// One AdamW step for one value given its (dequantized) moments; returns the new moments.
    #[inline]
    fn step(&self, p: &mut f32, g: f32, m: f32, v: f32, lr: f64, t: u64) -> (f32, f32) {
        let m = self.beta1 as f32 * m + (1.0 - self.beta1 as f32) * g;
        let v = self.beta2 as f32 * v + (1.0 - self.beta2 as f32) * g * g;
        let m_hat = m as f64 / (1.0 - self.beta1.powi(t as i32));
        let v_hat = v as f64 / (1.0 - self.beta2.powi(t as i32));
        let decayed = *p as f64 * (1.0 - lr * self.weight_decay);
        *p = (decayed - lr * m_hat / (v_hat.sqrt() + self.eps)) as f32;
        (m, v)
    }
}

impl AdamConfig {
    /// The device kernel's constants for a step at `lr` (its step number `t` set by the caller).
    fn device_step(&self, lr: f64, t: u64) -> forge_kernels::adam::AdamStep {
        let AdamConfig { beta1, beta2, eps, weight_decay } = *self;
        forge_kernels::adam::AdamStep { beta1, beta2, eps, weight_decay, lr, t }
    }
}

/// Reads a state tensor of the expected kind, or says what is wrong with the state file.
fn take<'a>(state: &'a [StateTensor], name: &str) -> Result<&'a StateData, StrategyError> {
    state.iter().find(|s| s.name == name).map(|s| &s.data).ok_or_else(|| {
        StrategyError::bad_input(format!(
            "optimizer state lacks `{name}`; was it saved by another optimizer?"
        ))
    })
}
