//! `l2`: the norm of the weights a head owns. For query head h of a layer with group size G this is
//! `sqrt(‖W_q[h]‖² + ‖W_o[:, h]‖² + (‖W_k[g]‖² + ‖W_v[g]‖²) / G)`: its query rows and output columns,
//! plus its share of the key and value rows of its KV group g (shared by G heads). Data-free. A head
//! of Qwen3.5's gated attention owns `2 · head_dim` rows of `q_proj` (its query and its gate); a layer
//! without attention (a hybrid's linear-attention layer) has no heads to score.
use forge_api::{HeadScores, ImportanceScorer, ScoringContext, StrategyError};

use crate::strategies::{Builtin, Factory};

struct L2;

/// Sum of squares of rows `rows` of a row-major `(_, cols)` matrix.
fn rows_sq(data: &[f32], cols: usize, rows: std::ops::Range<usize>) -> f64 {
    data[rows.start * cols..rows.end * cols].iter().map(|&v| (v as f64).powi(2)).sum()
}

/// Sum of squares of columns `cols` of a row-major `(rows, width)` matrix.
fn cols_sq(data: &[f32], width: usize, cols: std::ops::Range<usize>) -> f64 {
    data.chunks(width).map(|row| row[cols.clone()].iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).sum()
}

impl ImportanceScorer for L2 {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let g = ctx.geometry().clone();
        let d = g.head_dim;
        let mut scores = Vec::with_capacity(g.layers);
        for layer in 0..g.layers {
            if g.heads[layer] == 0 {
                scores.push(Vec::new());
                continue;
            }
            let get = |p: &str| ctx.tensor(&format!("model.layers.{layer}.self_attn.{p}.weight"));
            let (q, k, v, o) = (get("q_proj")?, get("k_proj")?, get("v_proj")?, get("o_proj")?);
            let group = g.heads[layer] / g.kv_heads[layer];
            let q_rows = q.shape[0] / g.heads[layer];
            let row: Vec<f32> = (0..g.heads[layer])
                .map(|h| {
                    let kv = h / group;
                    let own = rows_sq(&q.data, q.shape[1], h * q_rows..(h + 1) * q_rows)
                        + cols_sq(&o.data, o.shape[1], h * d..(h + 1) * d);
                    let shared = rows_sq(&k.data, k.shape[1], kv * d..(kv + 1) * d)
                        + rows_sq(&v.data, v.shape[1], kv * d..(kv + 1) * d);
                    (own + shared / group as f64).sqrt() as f32
                })
                .collect();
            scores.push(row);
        }
        Ok(HeadScores { scores })
    }
}

inventory::submit! {
    Builtin {
        name: "l2",
        description: "norm of each head's q rows, o_proj columns and share of its KV group's k/v rows (no data needed)",
        options: Vec::new,
        factory: Factory::Scorer(|_| Ok(Box::new(L2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_and_column_norms_pick_the_right_blocks() {
        // A 2 × 3 matrix: rows [1 2 3], [4 5 6].
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(rows_sq(&m, 3, 1..2), 16.0 + 25.0 + 36.0);
        assert_eq!(cols_sq(&m, 3, 1..3), 4.0 + 9.0 + 25.0 + 36.0);
    }
}
