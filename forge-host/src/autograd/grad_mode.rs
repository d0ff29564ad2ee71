//! A thread-local "no gradient" switch, like `torch.no_grad()`: trainable parameters read inside
//! [`no_grad`] are detached, so the forward pass builds no graph and keeps no activations. Gradient
//! checkpointing runs its first pass this way.
use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether trainable parameters should join the graph.
pub fn grad_enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Runs `f` with gradients off, restoring the previous mode after (also on early return).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENABLED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(ENABLED.with(|e| e.replace(false)));
    f()
}
