//! forge's gradient tape: the training step's backward without candle's graph.
//!
//! candle's autograd gives every node of the graph a gradient made as zeros and then added to, so each
//! op of a layer costs its backward a fill and an add of the op's output size beside the op's own
//! backward: on a checkpointed qwen3.5-9b step, 137 adds of 145 µs in 4 layers (11% of the step, ncu,
//! H200), about 0.16 s of 1.2 s at 32 layers. Every op a decoder layer runs has a hand-written
//! backward already (forge's fused ops, the joined products, attention, the delta rule); the tape
//! records them as the forward runs and replays them in reverse, like llm.c: a gradient arriving at a
//! tensor is kept as it is, and only a tensor read by two ops (the residual stream, a norm's output
//! read by several projections) pays an add.
//!
//! While a tape records ([`record_with`]), an op whose input is on it (a leaf given there, a trainable
//! `Var`, or an earlier op's output) records its backward with [`record`] instead of joining candle's
//! graph. An op the tape does not know breaks the chain: in strict mode (tests, `forge kernels`) every
//! output is made a variable, so such an op builds a graph node, and the next op that records refuses
//! it by name instead of losing the gradient. Elementary paths (the CPU's) join the tape as one entry
//! each through [`through_graph`], differentiated by candle's graph inside.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::{CustomOp1, CustomOp2, CustomOp3, DType, Tensor, TensorId, Var};

/// The gradients of an entry's inputs given its output's, `None` for an input that takes none.
type Backward = Box<dyn FnOnce(&Tensor) -> candle_core::Result<Vec<Option<Tensor>>>>;

struct Entry {
    /// The inputs that were on the tape (the others take no gradient).
    inputs: Vec<Option<TensorId>>,
    output: TensorId,
    backward: Backward,
}

struct Recording {
    entries: Vec<Entry>,
    on_tape: HashSet<TensorId>,
    strict: bool,
}

thread_local! {
    static TAPE: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Whether a tape records on this thread.
pub fn recording() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// Whether a recording tape knows `id` (a leaf or an output of its entries).
fn on_tape(id: TensorId) -> bool {
    TAPE.with(|tape| tape.borrow().as_ref().is_some_and(|r| r.on_tape.contains(&id)))
}

/// Whether `t` takes a gradient: it is on candle's graph (or a variable), or on the recording tape.
pub fn tracked(t: &Tensor) -> bool {
    t.track_op() || on_tape(t.id())
}

/// Whether an op on `inputs` should record onto the tape: one records and an input is on it.
pub fn records(inputs: &[&Tensor]) -> bool {
    recording() && inputs.iter().any(|t| tracked(t))
}

/// Records `output`, computed from `inputs` outside any graph, with `backward` (the gradients of the
/// inputs, in their order, given the output's); returns the output as the tape knows it. Refuses an
/// input computed by an op that joined candle's graph instead, naming `name`.
pub fn record(
    name: &str,
    inputs: &[&Tensor],
    output: Tensor,
    backward: impl FnOnce(&Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + 'static,
) -> candle_core::Result<Tensor> {
    TAPE.with(|tape| {
        let mut tape = tape.borrow_mut();
        let Some(rec) = tape.as_mut() else { candle_core::bail!("{name}: recorded while no tape records") };
        let known = |t: &Tensor| t.is_variable() || rec.on_tape.contains(&t.id());
        if inputs.iter().any(|t| t.track_op() && !known(t)) {
            candle_core::bail!(
                "{name}: an input comes from an op that joined candle's graph, not forge's tape, so its \
                 gradient would be lost; that op needs a tape entry (forge_kernels::tape)"
            );
        }
        if rec.on_tape.contains(&output.id()) && inputs.iter().all(|t| t.id() != output.id()) {
            candle_core::bail!(
                "{name}: its output is on the tape already: its forward recorded ops of its own \
                 (compute it from inputs taken off the tape with forge_kernels::tape::detach)"
            );
        }
        let ids = inputs.iter().map(|t| known(t).then(|| t.id())).collect();
        // An output sharing an input's id (an op that returned its input) gets an id of its own.
        let output = if inputs.iter().any(|t| t.id() == output.id()) {
            output.reshape(output.shape())?
        } else {
            output
        };
        let output = if rec.strict { Var::from_tensor(&output)?.into_inner() } else { output };
        rec.on_tape.insert(output.id());
        rec.entries.push(Entry { inputs: ids, output: output.id(), backward: Box::new(backward) });
        Ok(output)
    })
}

/// What a recorded forward pass leaves: its entries, to replay backwards.
pub struct Tape {
    entries: Vec<Entry>,
    leaves: HashSet<TensorId>,
}

/// Runs `f` with a tape recording, `leaves` on it from the start (a checkpointed layer's input, whose
/// gradient the caller wants); `strict` makes every output a variable (a copy each), so an op the tape
/// does not know fails loudly (see the module header). One tape at a time on a thread.
pub fn record_with<T>(
    leaves: &[&Tensor],
    strict: bool,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<(T, Tape)> {
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            TAPE.with(|t| t.borrow_mut().take());
        }
    }
    TAPE.with(|tape| {
        let mut tape = tape.borrow_mut();
        if tape.is_some() {
            candle_core::bail!("a tape is already recording on this thread");
        }
        let on_tape = leaves.iter().map(|t| t.id()).collect();
        *tape = Some(Recording { entries: Vec::new(), on_tape, strict });
        Ok(())
    })?;
    let close = Close;
    let value = f()?;
    let entries = TAPE.with(|t| t.borrow_mut().take()).map(|r| r.entries).unwrap_or_default();
    drop(close);
    Ok((value, Tape { entries, leaves: leaves.iter().map(|t| t.id()).collect() }))
}

/// `t` outside every graph and off the tape: `t.detach()`, under a new id where `t` is on the tape (a
/// plain tensor's `detach` keeps its id, and an op given it would record as if it took a gradient).
/// Ops compute their forward from this before recording. No copy for a contiguous `t`.
pub fn detach(t: &Tensor) -> candle_core::Result<Tensor> {
    let d = t.detach();
    if on_tape(d.id()) {
        d.reshape(d.shape())
    } else {
        Ok(d)
    }
}

/// Runs `f` with the tape (if any) set aside: ops inside join candle's graph as they would without one.
pub fn paused<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Recording>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let rec = self.0.take();
            TAPE.with(|t| *t.borrow_mut() = rec);
        }
    }
    let _restore = Restore(TAPE.with(|t| t.borrow_mut().take()));
    f()
}

/// The gradients a replay left: of the leaves and of every variable the recorded ops read.
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    /// The gradient of `t`, if one reached it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
}

impl Tape {
    /// Replays the entries backwards from `grad`, the gradient arriving at `output` (a recorded
    /// output): each entry's backward runs once its output's gradient is complete (reverse recording
    /// order is a reverse topological order) and is dropped with what it kept right after. `output`
    /// may be a leaf (a removed layer returns its input): the gradient then passes as it is. `sum` adds
    /// two gradients of a tensor read twice (training passes forge's `residual_add`: eight values a
    /// thread, where candle's add took ~150 µs against ~45 at qwen3.5-9b's hidden width, H200).
    pub fn backward(
        self,
        output: &Tensor,
        grad: Tensor,
        sum: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Gradients> {
        let id = output.id();
        if !self.leaves.contains(&id) && !self.entries.iter().any(|e| e.output == id) {
            candle_core::bail!("the tape's backward starts from a tensor it did not record");
        }
        let mut grads = HashMap::from([(output.id(), grad)]);
        for entry in self.entries.into_iter().rev() {
            let Some(grad) = grads.remove(&entry.output) else { continue };
            let inputs = (entry.backward)(&grad)?;
            drop(grad);
            if inputs.len() != entry.inputs.len() {
                candle_core::bail!(
                    "a tape entry gave {} gradients for {} inputs",
                    inputs.len(),
                    entry.inputs.len()
                );
            }
            for (id, g) in entry.inputs.into_iter().zip(inputs) {
                let (Some(id), Some(g)) = (id, g) else { continue };
                // A gradient computed by candle's graph (an elementary entry's) carries that graph;
                // kept, it would keep every layer's activations alive through the gradients below it.
                let g = g.detach();
                let total = match grads.remove(&id) {
                    Some(earlier) => sum(&earlier, &g)?,
                    None => g,
                };
                grads.insert(id, total);
            }
        }
        Ok(Gradients(grads))
    }
}

/// `f` on `inputs` as one entry of the tape, differentiated by candle's graph inside: for the
/// elementary paths (the CPU's) of ops that have no backward of their own. Each input on the tape is
/// made a variable for the graph (a copy, where it is not one already); `f` also returns what needs no
/// gradient (a cache's tail). Without a tape, or with no input on it, just `f`.
pub fn through_graph<E>(
    name: &str,
    inputs: &[&Tensor],
    f: impl FnOnce(&[Tensor]) -> candle_core::Result<(Tensor, E)>,
) -> candle_core::Result<(Tensor, E)> {
    if !records(inputs) {
        return f(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    let vars = inputs
        .iter()
        .map(|t| if tracked(t) { Ok(Var::from_tensor(t)?.into_inner()) } else { Ok((*t).clone()) })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let (out, extra) = paused(|| f(&vars))?;
    let detached = out.detach();
    let output = record(name, inputs, detached, move |grad| {
        let weighted = (out.to_dtype(DType::F32)? * grad.to_dtype(DType::F32)?)?;
        let store = weighted.sum_all()?.backward()?;
        Ok(vars.iter().map(|v| store.get(v).cloned()).collect())
    })?;
    Ok((output, extra))
}

/// `op` on `a` with its backward: an entry of the tape while one records and `a` is on it, else a
/// node of candle's graph (or no graph). The same three for two and three inputs follow.
pub(crate) fn apply_op1<O: CustomOp1 + Send + Sync + 'static>(
    a: &Tensor,
    op: O,
) -> candle_core::Result<Tensor> {
    if !records(&[a]) {
        return a.apply_op1(op);
    }
    let out = a.apply_op1_no_bwd(&op)?;
    let (a0, res) = (a.detach(), out.clone());
    record(op.name(), &[a], out, move |g| Ok(vec![op.bwd(&a0, &res, g)?]))
}

pub(crate) fn apply_op2<O: CustomOp2 + Send + Sync + 'static>(
    a: &Tensor,
    b: &Tensor,
    op: O,
) -> candle_core::Result<Tensor> {
    if !records(&[a, b]) {
        return a.apply_op2(b, op);
    }
    let out = a.apply_op2_no_bwd(b, &op)?;
    let (a0, b0, res) = (a.detach(), b.detach(), out.clone());
    record(op.name(), &[a, b], out, move |g| {
        let (da, db) = op.bwd(&a0, &b0, &res, g)?;
        Ok(vec![da, db])
    })
}

pub(crate) fn apply_op3<O: CustomOp3 + Send + Sync + 'static>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: O,
) -> candle_core::Result<Tensor> {
    if !records(&[a, b, c]) {
        return a.apply_op3(b, c, op);
    }
    let out = a.apply_op3_no_bwd(b, c, &op)?;
    let (a0, b0, c0, res) = (a.detach(), b.detach(), c.detach(), out.clone());
    record(op.name(), &[a, b, c], out, move |g| {
        let (da, db, dc) = op.bwd(&a0, &b0, &c0, &res, g)?;
        Ok(vec![da, db, dc])
    })
}

/// `x` contiguous: itself if it is, else a copy, on the tape (the gradient passes as it is).
pub fn contiguous(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.is_contiguous() || !records(&[x]) {
        return x.contiguous();
    }
    record("contiguous", &[x], x.detach().contiguous()?, |g| Ok(vec![Some(g.clone())]))
}

/// `x.reshape(shape)` on the tape (the gradient is reshaped back), or candle's reshape off it.
pub fn reshape<S: candle_core::shape::ShapeWithOneHole>(x: &Tensor, shape: S) -> candle_core::Result<Tensor> {
    if !records(&[x]) {
        return x.reshape(shape);
    }
    let dims = x.shape().clone();
    record("reshape", &[x], x.detach().reshape(shape)?, move |g| Ok(vec![Some(g.reshape(&dims)?)]))
}

/// `x · mask`, a constant `mask` broadcast over `x` (pruned heads or channels: 1 keeps, 0 removes), on
/// the tape (the gradient is masked the same way), or on candle's graph off it and for a trainable
/// mask (scorers differentiate through one; no tape records then).
pub fn mask(x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    if !records(&[x]) || mask.track_op() {
        return x.broadcast_mul(mask);
    }
    let m = mask.clone();
    record("mask", &[x], x.detach().broadcast_mul(mask)?, move |g| Ok(vec![Some(g.broadcast_mul(&m)?)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, k: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * k % 13) as f32 - 6.0) / 5.0).collect()
    }

    /// `y = mask(reshape(x) · w) + reshape(x)` by the tape (x read twice, one elementary entry) and by
    /// candle's graph: the same gradient for x and for the variable w.
    #[test]
    fn a_replay_gives_the_graphs_gradients_and_adds_where_a_tensor_is_read_twice() -> candle_core::Result<()>
    {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(values(12, 5), (3, 4), &dev)?;
        let w = Var::from_tensor(&Tensor::from_vec(values(6, 7), (2, 3), &dev)?)?;
        let m = Tensor::new(&[[1f32, 0.0, 1.0]], &dev)?;
        let g = Tensor::from_vec(values(12, 3), (2, 6), &dev)?;
        // Every op goes through the tape's entries, so the same forward runs on the tape and on the graph.
        let add = |a: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
            if !records(&[a, b]) {
                return a + b;
            }
            record("add", &[a, b], (a.detach() + b.detach())?, |g| Ok(vec![Some(g.clone()), Some(g.clone())]))
        };
        let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
            let r = reshape(x, (2, 6))?;
            let (scaled, ()) = through_graph("scale", &[&r, w.as_tensor()], |v| {
                Ok((v[0].reshape((2, 2, 3))?.broadcast_mul(&v[1].unsqueeze(1)?)?.reshape((2, 6))?, ()))
            })?;
            let masked = reshape(&mask(&reshape(&scaled, (2, 2, 3))?, &m)?, (2, 6))?;
            add(&masked, &r)
        };
        for strict in [false, true] {
            let (y, tape) = record_with(&[&x], strict, || forward(&x))?;
            let grads = tape.backward(&y, g.clone(), |a, b| a + b)?;
            let xv = Var::from_tensor(&x)?;
            let store = (forward(xv.as_tensor())? * &g)?.sum_all()?.backward()?;
            for (a, b) in [
                (grads.get(&x), store.get(xv.as_tensor())),
                (grads.get(w.as_tensor()), store.get(w.as_tensor())),
            ] {
                let (a, b) = (a.expect("the tape reached it"), b.expect("the graph reached it"));
                assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }

    #[test]
    fn a_strict_tape_refuses_an_op_that_joined_candles_graph() -> candle_core::Result<()> {
        let x = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        let failed = record_with(&[&x], true, || {
            let y = reshape(&x, (3, 1))?;
            let off_tape = y.exp()?;
            record("next", &[&off_tape], off_tape.detach(), |g| Ok(vec![Some(g.clone())]))
        });
        let message = failed.err().expect("refused").to_string();
        assert!(message.contains("next") && message.contains("candle's graph"), "{message}");
        assert!(!recording(), "the tape closes on an error");
        Ok(())
    }
}
