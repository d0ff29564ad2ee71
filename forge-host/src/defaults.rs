//! The one table of defaults that `forge eval`, `score`, `train` and `forge run`'s recipes share, so a
//! number measured one way is measured the same way everywhere. The evaluation window is the
//! reference protocol's (512 tokens, `../shared/fixtures/reference/`).

/// Tokens per evaluation window.
pub const EVAL_SEQ_LEN: usize = 512;
/// Evaluation windows scored when a recipe or `forge train --eval-data` does not say (the reference
/// protocol's 32; `forge eval` scores all windows unless `--max-windows` says otherwise).
pub const EVAL_WINDOWS: usize = 32;
/// Windows per forward pass, in evaluation, calibration and training.
pub const BATCH_SIZE: usize = 4;
/// Calibration windows for scorers that run the model.
pub const CALIB_WINDOWS: usize = 16;
/// Tokens per calibration window.
pub const CALIB_SEQ_LEN: usize = 256;
/// Tokens per training window.
pub const TRAIN_SEQ_LEN: usize = 256;
/// Optimizer steps.
pub const TRAIN_STEPS: usize = 100;
/// Peak learning rate of adapter training.
pub const LR: f64 = 2e-4;
/// Global gradient-norm clip (0 turns it off).
pub const CLIP_NORM: f64 = 1.0;
/// The guard's largest rise of the watched metric, against the previous cycle and against the
/// unpruned baseline.
pub const GUARD_MAX_INCREASE: f64 = 0.10;

/// Distillation's mix of the teacher's KL into the loss (`--distill-alpha`, `train.distill_alpha`).
pub const DISTILL_ALPHA: f64 = 0.5;
/// Distillation's temperature (`--distill-temperature`, `train.distill_temperature`): 2 softens both
/// distributions enough that the teacher's ranking of unlikely tokens carries signal.
pub const DISTILL_TEMPERATURE: f64 = 2.0;
