//! `l2`: the norm of the weights a head owns. For query head h of a layer with group size G this is
//! `sqrt(‖W_q[h]‖² + ‖W_o[:, h]‖² + (‖W_k[g]‖² + ‖W_v[g]‖²) / G)`: its query rows and output columns,
//! plus its share of the key and value rows of its KV group g (shared by G heads). Data-free. A head
//! of Qwen3.5's gated attention owns `2 · head_dim` rows of `q_proj` (its query and its gate).
//!
//! A linear-attention value head v, served by key head g with r value heads per key head, scores the
//! same way: `sqrt(‖its in_proj_qkv v rows, in_proj_z/b/a rows‖² + ‖W_out[:, v]‖² + (‖its key head's
//! q and k rows‖²) / r)`. An MLP channel: its `gate_proj` and `up_proj` rows and `down_proj` column.
//! A layer: the root of the sum of its units' squared scores.
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

/// Scores of layer `layer`'s linear-attention value heads (`heads` of them over `key_heads`).
fn linear_row(
    ctx: &dyn ScoringContext,
    layer: usize,
    heads: usize,
    key_heads: usize,
) -> Result<Vec<f32>, StrategyError> {
    let get = |p: &str| ctx.tensor(&format!("model.layers.{layer}.linear_attn.{p}.weight"));
    let (qkv, z, b, a, out) =
        (get("in_proj_qkv")?, get("in_proj_z")?, get("in_proj_b")?, get("in_proj_a")?, get("out_proj")?);
    let (dv, r) = (z.shape[0] / heads, heads / key_heads);
    let dk = (qkv.shape[0] - heads * dv) / (2 * key_heads);
    let cols = qkv.shape[1];
    Ok((0..heads)
        .map(|v| {
            let key = v / r;
            let values = 2 * key_heads * dk;
            let own = rows_sq(&qkv.data, cols, values + v * dv..values + (v + 1) * dv)
                + rows_sq(&z.data, cols, v * dv..(v + 1) * dv)
                + rows_sq(&b.data, cols, v..v + 1)
                + rows_sq(&a.data, cols, v..v + 1)
                + cols_sq(&out.data, out.shape[1], v * dv..(v + 1) * dv);
            let shared = rows_sq(&qkv.data, cols, key * dk..(key + 1) * dk)
                + rows_sq(&qkv.data, cols, (key_heads + key) * dk..(key_heads + key + 1) * dk);
            (own + shared / r as f64).sqrt() as f32
        })
        .collect())
}

/// Scores of layer `layer`'s MLP channels: `sqrt(‖W_gate[c]‖² + ‖W_up[c]‖² + ‖W_down[:, c]‖²)`.
fn mlp_row(ctx: &dyn ScoringContext, layer: usize) -> Result<Vec<f32>, StrategyError> {
    let get = |p: &str| ctx.tensor(&format!("model.layers.{layer}.mlp.{p}.weight"));
    let (gate, up, down) = (get("gate_proj")?, get("up_proj")?, get("down_proj")?);
    let (channels, cols) = (gate.shape[0], gate.shape[1]);
    Ok((0..channels)
        .map(|c| {
            let sq = rows_sq(&gate.data, cols, c..c + 1)
                + rows_sq(&up.data, cols, c..c + 1)
                + cols_sq(&down.data, down.shape[1], c..c + 1);
            sq.sqrt() as f32
        })
        .collect())
}

impl ImportanceScorer for L2 {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let g = ctx.geometry().clone();
        let d = g.head_dim;
        let (linear_heads, linear_keys) = g.of(forge_api::UnitKind::LinearHead);
        let linear = match g.total_linear_heads() {
            0 => Vec::new(),
            _ => (0..g.layers)
                .map(|l| match linear_heads[l] {
                    0 => Ok(Vec::new()),
                    n => linear_row(ctx, l, n, linear_keys[l]),
                })
                .collect::<Result<_, _>>()?,
        };
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
        let mlp: Vec<Vec<f32>> = (0..g.layers).map(|l| mlp_row(ctx, l)).collect::<Result<_, _>>()?;
        // A layer: the norm of every unit's weights in it (each unit's own plus its share of a group).
        let layers = (0..g.layers)
            .map(|l| {
                let rows = [scores.get(l), linear.get(l), mlp.get(l)];
                vec![rows.iter().flatten().flat_map(|r| r.iter()).map(|&v| v * v).sum::<f32>().sqrt()]
            })
            .collect();
        Ok(HeadScores { scores, linear, mlp, layers })
    }
}

inventory::submit! {
    Builtin {
        name: "l2",
        description: "norm of the weights each head owns and its share of its group's (no data needed)",
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
