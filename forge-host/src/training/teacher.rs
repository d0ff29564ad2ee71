//! The teacher a distilling run learns from (`--teacher`, `train.teacher`).
use std::path::Path;

use candle_core::{DType, Device};

use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::{bad_input, Result};

/// The teacher `name` names for `model` (loaded from folder `current`): `base` is the unpruned model
/// of folder `base` — when that is `model`'s own, a clone without its masks, sharing its weights (no
/// second copy), else loaded beside it; any other name is a model folder to load.
pub fn load_teacher(
    name: &str,
    model: &CausalLm,
    (current, base): (&Path, &Path),
    (dtype, device): (DType, &Device),
) -> Result<CausalLm> {
    let teacher = match name {
        "base" if current == base => {
            let mut own = model.clone();
            own.apply_head_mask(&forge_api::HeadMask::default())?;
            own
        }
        "base" => CausalLm::load(&ModelFolder::open(base)?, dtype, device)?,
        dir => CausalLm::load(&ModelFolder::open(Path::new(dir))?, dtype, device)?,
    };
    if teacher.config().vocab != model.config().vocab {
        return Err(bad_input!(
            "the teacher `{name}` has a vocabulary of {} tokens and the model {}; distillation needs the same",
            teacher.config().vocab,
            model.config().vocab
        ));
    }
    Ok(teacher)
}
