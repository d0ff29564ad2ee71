//! `adamw`: Adam with decoupled weight decay (Loshchilov & Hutter 2019), f32 moments, bias-corrected.
use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use forge_api::{Optimizer, StateData, StateTensor, StrategyError};

use super::on_device::{steps_on_device, Placed, TrainOptimizer};
use super::{take, AdamConfig};
use crate::strategies::{Builtin, Factory};

/// One parameter's moments, `m` then `v` in one buffer (the device kernel's layout), and its steps.
struct Moments {
    mv: Placed<Vec<f32>>,
    t: u64,
}

pub(super) struct AdamW {
    config: AdamConfig,
    moments: BTreeMap<usize, Moments>,
}

impl AdamW {
    pub(super) fn new(config: AdamConfig) -> Self {
        AdamW { config, moments: BTreeMap::new() }
    }

    /// Parameter `id`'s moments, zero before its first step, their step count advanced.
    fn advance(&mut self, id: usize, n: usize) -> &mut Moments {
        let s = self
            .moments
            .entry(id)
            .or_insert_with(|| Moments { mv: Placed::host_state(n, vec![0.0; 2 * n]), t: 0 });
        s.t += 1;
        s
    }
}

impl Optimizer for AdamW {
    fn update(&mut self, id: usize, params: &mut [f32], grads: &[f32], lr: f64) -> Result<(), StrategyError> {
        let config = self.config;
        let s = self.advance(id, params.len());
        let t = s.t;
        let (m, v) = s.mv.host()?.split_at_mut(params.len());
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            (*m, *v) = config.step(p, g, *m, *v, lr, t);
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.moments.values().map(|s| s.mv.bytes() + 8).sum()
    }

    fn state(&self) -> Result<Vec<StateTensor>, StrategyError> {
        let mut out = Vec::new();
        for (id, s) in &self.moments {
            let mut m = s.mv.to_host()?.into_owned();
            let v = m.split_off(m.len() / 2);
            out.extend([
                StateTensor { name: format!("{id}.m"), data: StateData::F32(m) },
                StateTensor { name: format!("{id}.v"), data: StateData::F32(v) },
                StateTensor { name: format!("{id}.t"), data: StateData::U64(vec![s.t]) },
            ]);
        }
        Ok(out)
    }

    fn load_state(&mut self, state: Vec<StateTensor>) -> Result<(), StrategyError> {
        self.moments.clear();
        let ids: Vec<usize> = state.iter().filter_map(|s| s.name.strip_suffix(".t")?.parse().ok()).collect();
        for id in ids {
            let (StateData::F32(m), StateData::F32(v), StateData::U64(t)) = (
                take(&state, &format!("{id}.m"))?,
                take(&state, &format!("{id}.v"))?,
                take(&state, &format!("{id}.t"))?,
            ) else {
                return Err(StrategyError::bad_input(format!(
                    "optimizer state of parameter {id} has the wrong types"
                )));
            };
            let mv = m.iter().chain(v).copied().collect();
            self.moments.insert(id, Moments { mv: Placed::host_state(m.len(), mv), t: t[0] });
        }
        Ok(())
    }
}

impl TrainOptimizer for AdamW {
    fn update_on_device(
        &mut self,
        id: usize,
        param: &Var,
        grad: &Tensor,
        lr: f64,
    ) -> Result<bool, StrategyError> {
        if !steps_on_device(param) {
            return Ok(false);
        }
        let config = self.config;
        let s = self.advance(id, param.elem_count());
        let step = config.device_step(lr, s.t);
        s.mv.step_on_device(param, |p, state| forge_kernels::adam::adamw_step(p, grad, state, &step))?;
        Ok(true)
    }
}

inventory::submit! {
    Builtin {
        name: "adamw",
        description: "AdamW with f32 moments, bias correction and decoupled weight decay",
        options: AdamConfig::options,
        factory: Factory::Optimizer(|o| Ok(Box::new(AdamW::new(AdamConfig::from_options(o)?)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_the_textbook_formula() {
        let config = AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW { config, moments: BTreeMap::new() };
        let (lr, mut p) = (0.01, vec![1.0f32, -2.0]);
        let grads = [[0.5f32, -1.0], [0.25, 3.0]];
        let (mut m, mut v, mut want) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for (t, g) in grads.iter().enumerate() {
            opt.update(0, &mut p, g, lr).unwrap();
            let t = (t + 1) as i32;
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 0.1 * g[i] as f64;
                v[i] = 0.999 * v[i] + 0.001 * (g[i] as f64).powi(2);
                let (m_hat, v_hat) = (m[i] / (1.0 - 0.9f64.powi(t)), v[i] / (1.0 - 0.999f64.powi(t)));
                want[i] = want[i] * (1.0 - lr * 0.1) - lr * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        for i in 0..2 {
            assert!((p[i] as f64 - want[i]).abs() < 1e-6, "value {i}: {} vs {}", p[i], want[i]);
        }
    }

    #[test]
    fn state_round_trips() {
        let config = AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut a = AdamW { config, moments: BTreeMap::new() };
        let mut p = vec![0.5f32; 3];
        a.update(7, &mut p, &[0.1, 0.2, 0.3], 0.1).unwrap();
        let mut b = AdamW { config, moments: BTreeMap::new() };
        b.load_state(a.state().unwrap()).unwrap();
        let (mut pa, mut pb) = (p.clone(), p.clone());
        a.update(7, &mut pa, &[0.3, -0.2, 0.1], 0.1).unwrap();
        b.update(7, &mut pb, &[0.3, -0.2, 0.1], 0.1).unwrap();
        assert_eq!(pa, pb);
    }
}
