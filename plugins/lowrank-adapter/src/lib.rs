//! `lowrank`: LoRA written as a plugin kernel, in plain Rust loops — the template for a researcher's
//! own adapter. Each targeted layer owns one flat buffer `[A (r × in) | B (out × r)]` and adds
//! `s · x Aᵀ Bᵀ` (s = alpha / r) to its output; forge keeps the buffers as trainable variables and
//! calls `forward` and `backward` from its autograd graph, and `delta_weight` (s · B A) to merge.
use forge_api::plugin::Export;
use forge_api::{AdapterKernel, LinearDims, OptionKind, OptionSpec, Options, StrategyError};

struct LowRank {
    rank: usize,
    scale: f32,
    targets: Vec<String>,
}

impl Export for LowRank {
    const NAME: &'static str = "lowrank";
    const DESCRIPTION: &'static str =
        "LoRA as a plain-Rust plugin kernel (trains on the CPU; reloads with the plugin)";

    fn options() -> Vec<OptionSpec> {
        vec![
            OptionSpec::new("rank", OptionKind::Int, 8, "rank r"),
            OptionSpec::new("alpha", OptionKind::Float, 16.0, "scale numerator: s = alpha / r"),
            OptionSpec::new(
                "targets",
                OptionKind::String,
                "q_proj,v_proj",
                "linear layers to adapt, comma-separated",
            ),
        ]
    }

    fn new(options: &Options) -> Result<Self, StrategyError> {
        let rank = options.int("rank") as usize;
        if rank == 0 {
            return Err(StrategyError::bad_input("lowrank needs rank ≥ 1"));
        }
        Ok(LowRank {
            rank,
            scale: (options.float("alpha") / rank as f64) as f32,
            targets: options.string("targets").split(',').map(|t| t.trim().to_string()).collect(),
        })
    }
}

/// `out[i][j] = Σ_k a[i][k] · b[j][k]` for row-major `a` (n × k) and `b` (m × k).
fn matmul_t(a: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    let m = b.len() / k;
    a.chunks(k)
        .flat_map(|row| b.chunks(k).map(move |col| row.iter().zip(col).map(|(x, y)| x * y).sum::<f32>()))
        .take(a.len() / k * m)
        .collect()
}

/// The transpose of a row-major `rows × cols` matrix.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| a[r * cols + c])).collect()
}

impl LowRank {
    fn split<'a>(&self, dims: LinearDims, params: &'a [f32]) -> (&'a [f32], &'a [f32]) {
        params.split_at(self.rank * dims.in_dim)
    }
}

impl AdapterKernel for LowRank {
    fn param_count(&self, module: &str, in_dim: usize, out_dim: usize) -> usize {
        if self.targets.iter().any(|t| t == module) {
            self.rank * (in_dim + out_dim)
        } else {
            0
        }
    }

    fn init(&self, _: &str, dims: LinearDims, seed: u64, params: &mut [f32]) -> Result<(), StrategyError> {
        // A ~ U(-1/√in, 1/√in) (PEFT's Kaiming-uniform bound), B = 0: training starts at the base model.
        let mut state = seed;
        let bound = 1.0 / (dims.in_dim as f64).sqrt();
        let (a, b) = params.split_at_mut(self.rank * dims.in_dim);
        for v in a {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let unit = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            *v = ((unit * 2.0 - 1.0) * bound) as f32;
        }
        b.fill(0.0);
        Ok(())
    }

    fn forward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        y: &mut [f32],
    ) -> Result<(), StrategyError> {
        let (a, b) = self.split(dims, params);
        let h = matmul_t(x, a, dims.in_dim); // rows × r
        for (out, v) in y.iter_mut().zip(matmul_t(&h, b, self.rank)) {
            *out = self.scale * v;
        }
        Ok(())
    }

    fn backward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dparams: &mut [f32],
    ) -> Result<(), StrategyError> {
        let (a, b) = self.split(dims, params);
        let (r, rows) = (self.rank, dims.rows);
        let h = matmul_t(x, a, dims.in_dim); // rows × r
        let dys: Vec<f32> = dy.iter().map(|v| v * self.scale).collect();
        // dh = s·dy B (rows × r); dB = s·dyᵀ h (out × r); dA = dhᵀ x (r × in); dx = dh A (rows × in).
        let dh = matmul_t(&dys, &transpose(b, dims.out_dim, r), dims.out_dim);
        let db = matmul_t(&transpose(&dys, rows, dims.out_dim), &transpose(&h, rows, r), rows);
        let da = matmul_t(&transpose(&dh, rows, r), &transpose(x, rows, dims.in_dim), rows);
        dx.copy_from_slice(&matmul_t(&dh, &transpose(a, r, dims.in_dim), r));
        let (dpa, dpb) = dparams.split_at_mut(r * dims.in_dim);
        dpa.copy_from_slice(&da);
        dpb.copy_from_slice(&db);
        Ok(())
    }

    fn delta_weight(&self, dims: LinearDims, params: &[f32], dw: &mut [f32]) -> Result<(), StrategyError> {
        let (a, b) = self.split(dims, params);
        // ΔW = s · B A: (out × r)(r × in).
        for (out, v) in dw.iter_mut().zip(matmul_t(b, &transpose(a, self.rank, dims.in_dim), self.rank)) {
            *out = self.scale * v;
        }
        Ok(())
    }
}

forge_api::export_plugin! {
    name: "lowrank-adapter",
    version: env!("CARGO_PKG_VERSION"),
    strategies: [adapter(LowRank)],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_matches_finite_differences_and_merging_matches_forward() {
        let k = LowRank { rank: 2, scale: 1.5, targets: vec![] };
        let dims = LinearDims { in_dim: 3, out_dim: 4, rows: 2 };
        let x = [0.3, -0.2, 0.5, 0.1, 0.7, -0.4];
        let p: Vec<f32> = (0..14).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
        let w: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 4.0).collect();
        let loss = |x: &[f32], p: &[f32]| {
            let mut y = vec![0.0; 8];
            k.forward(dims, x, p, &mut y).unwrap();
            y.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let (mut dx, mut dp) = (vec![0.0; 6], vec![0.0; 14]);
        k.backward(dims, &x, &p, &w, &mut dx, &mut dp).unwrap();
        let eps = 1e-3;
        for i in 0..6 {
            let (mut hi, mut lo) = (x.to_vec(), x.to_vec());
            hi[i] += eps;
            lo[i] -= eps;
            let fd = (loss(&hi, &p) - loss(&lo, &p)) / (2.0 * eps as f64);
            assert!((fd - dx[i] as f64).abs() < 1e-3, "dx[{i}]: {fd} vs {}", dx[i]);
        }
        for i in 0..14 {
            let (mut hi, mut lo) = (p.clone(), p.clone());
            hi[i] += eps;
            lo[i] -= eps;
            let fd = (loss(&x, &hi) - loss(&x, &lo)) / (2.0 * eps as f64);
            assert!((fd - dp[i] as f64).abs() < 1e-3, "dparams[{i}]: {fd} vs {}", dp[i]);
        }
        let mut dw = vec![0.0; 12];
        k.delta_weight(dims, &p, &mut dw).unwrap();
        let mut y = vec![0.0; 8];
        k.forward(dims, &x, &p, &mut y).unwrap();
        let merged = matmul_t(&x, &dw, 3);
        for (a, b) in y.iter().zip(&merged) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
