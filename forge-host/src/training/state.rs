//! An optimizer's state on disk (`optimizer_state.safetensors`, one tensor per state piece): written
//! beside every adapter `forge train` saves, and by `forge run` when a training phase is interrupted,
//! so that `--resume` continues that phase with its moments rather than from fresh ones (AdamW
//! restarted from zero moments takes a few large steps: not the run that was interrupted).
use std::collections::BTreeMap;
use std::path::Path;

use forge_api::{StateData, StateTensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::outputs::write_atomic;
use crate::{bad_input, Error, Result};

/// The state file's name.
pub const OPTIMIZER_STATE_FILE: &str = "optimizer_state.safetensors";

/// Writes an optimizer's state, atomically.
pub fn save_optimizer_state(path: &std::path::Path, state: &[forge_api::StateTensor]) -> Result<()> {
    let bytes: Vec<(String, Dtype, Vec<u8>)> = state
        .iter()
        .map(|s| match &s.data {
            StateData::F32(v) => {
                (s.name.clone(), Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            StateData::U8(v) => (s.name.clone(), Dtype::U8, v.clone()),
            StateData::U64(v) => {
                (s.name.clone(), Dtype::U64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        })
        .collect();
    let views: BTreeMap<String, TensorView> = bytes
        .iter()
        .map(|(name, dtype, data)| {
            let len = data.len() * 8 / dtype.bitsize();
            Ok((
                name.clone(),
                TensorView::new(*dtype, vec![len], data)
                    .map_err(|e| bad_input!("optimizer state `{name}`: {e}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(&views, None, tmp)
            .map_err(|e| bad_input!("cannot write {}: {e}", tmp.display()))
    })
}

/// Reads a state written by [`save_optimizer_state`], in file order.
pub fn load_optimizer_state(path: &Path) -> Result<Vec<StateTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad_input!("{} is not an optimizer state: {e}", path.display()))?;
    let mut pieces: Vec<StateTensor> = Vec::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let words = |n: usize| data.chunks_exact(n);
        let data = match view.dtype() {
            Dtype::F32 => {
                StateData::F32(words(4).map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes"))).collect())
            }
            Dtype::U8 => StateData::U8(data.to_vec()),
            Dtype::U64 => {
                StateData::U64(words(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect())
            }
            other => return Err(bad_input!("{}: state piece `{name}` has dtype {other:?}", path.display())),
        };
        pieces.push(StateTensor { name, data });
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OPTIMIZER_STATE_FILE);
        let state = vec![
            StateTensor { name: "0.m".into(), data: StateData::F32(vec![1.5, -2.0]) },
            StateTensor { name: "0.step".into(), data: StateData::U64(vec![7]) },
            StateTensor { name: "1.m.codes".into(), data: StateData::U8(vec![3, 250]) },
        ];
        save_optimizer_state(&path, &state).unwrap();
        let mut back = load_optimizer_state(&path).unwrap();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, state);
    }
}
