//! Greedy decoding's pick on the device: the first index of each row's largest logit, as the host's
//! argmax over the same bf16 logits gives, so that a captured decoding step (which cannot hand the
//! logits to the host) and the host loop choose the same tokens, ties included.
/// The first index of the largest value of each row of `logits` `(rows, vocab)`, bf16 on CUDA, as
/// `(rows)` u32.
#[cfg(feature = "cuda")]
pub fn argmax_rows(logits: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    use crate::launch::{launch_on_tensors, Grid, Scalar};
    let (rows, vocab) = logits.dims2()?;
    if !crate::on_kernel(&[logits]) {
        candle_core::bail!("argmax_rows takes bf16 logits on a CUDA device");
    }
    launch_on_tensors::<u32>(
        "argmax_rows_bf16",
        &[logits],
        rows,
        Grid::PerRow { rows, threads: 1024 },
        &[Scalar::I32(vocab as i32)],
    )
}

/// The same pick on the host, the reference of [`argmax_rows`]: the first index of the largest value.
pub fn first_argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::first_argmax;

    #[test]
    fn the_first_of_tied_maxima_wins() {
        assert_eq!(first_argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(first_argmax(&[-2.0, -1.0]), 1);
        assert_eq!(first_argmax(&[3.0]), 0);
    }
}
