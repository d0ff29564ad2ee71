//! A thread-local "no gradient" switch, like `torch.no_grad()`: trainable parameters read inside
//! [`no_grad`] are detached, so the forward pass builds no graph and keeps no activations. Gradient
//! checkpointing runs its first pass this way. Beside it, a "keep what the backward would recompute"
//! switch, on while checkpointing runs a layer again (its backward follows at once, and the layer's
//! output is read by nobody).
use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    static KEEP: Cell<bool> = const { Cell::new(false) };
}

/// Whether trainable parameters should join the graph.
pub fn grad_enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Whether ops should keep activations their backward would otherwise recompute (see
/// [`keeping_activations`]).
pub fn keep_activations() -> bool {
    KEEP.with(Cell::get)
}

/// Whether the output of the layer running now is read by nobody: true while a checkpointed layer runs
/// again ([`keeping_activations`]), whose output is only where the gradient from above arrives (the
/// next layer's input was kept by the first pass). A block that makes the layer's output may then
/// leave its values unmade.
pub fn layer_output_unread() -> bool {
    KEEP.with(Cell::get)
}

/// Runs `f` with gradients off, restoring the previous mode after (also on early return).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_switch(&ENABLED, false, f)
}

/// Runs `f` with ops keeping what their backward would recompute. For a forward whose backward comes
/// right after it (a checkpointed layer run again): what is kept would be recomputed at the start of
/// the same backward, so the peak does not grow, and the products are not paid twice. The layer's
/// output is then read by nobody ([`layer_output_unread`]): callers hand it only to the backward, as
/// the place the gradient from above arrives.
pub fn keeping_activations<T>(f: impl FnOnce() -> T) -> T {
    with_switch(&KEEP, true, f)
}

/// Runs `f` with `switch` set to `value`, restoring it after (also on early return).
fn with_switch<T>(
    switch: &'static std::thread::LocalKey<Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|e| e.set(self.1));
        }
    }
    let _restore = Restore(switch, switch.with(|e| e.replace(value)));
    f()
}
