//! Both sides of the ABI in one process: Rust strategies exported through the SDK, read back as the
//! host reads a plugin, and run against mock host contexts.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::abi::*;
use super::*;
use crate::*;

struct Scaled(f32);
impl Export for Scaled {
    const NAME: &'static str = "scaled";
    const DESCRIPTION: &'static str = "entropy times a factor, plus the first q_proj value of each layer";
    fn options() -> Vec<OptionSpec> {
        vec![OptionSpec::new("factor", OptionKind::Float, 2.0, "multiplies the entropy")]
    }
    fn new(options: &Options) -> Result<Self, StrategyError> {
        Ok(Scaled(options.float("factor") as f32))
    }
}
impl ImportanceScorer for Scaled {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let entropy = ctx.attention_entropy()?;
        let mut scores = Vec::new();
        for (layer, row) in entropy.iter().enumerate() {
            let q = ctx.tensor(&format!("q{layer}"))?;
            scores.push(row.iter().map(|e| e * self.0 + q.data[1] + ctx.seed() as f32).collect());
        }
        Ok(HeadScores::attention(scores))
    }
}

struct Panics;
impl Export for Panics {
    const NAME: &'static str = "panics";
    const DESCRIPTION: &'static str = "panics";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Panics)
    }
}
impl ImportanceScorer for Panics {
    fn score(&self, _: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        panic!("scorer exploded")
    }
}

struct Lowest;
impl Export for Lowest {
    const NAME: &'static str = "lowest";
    const DESCRIPTION: &'static str = "removes the lowest-scored heads";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Lowest)
    }
}
impl Pruner for Lowest {
    fn prune(&self, s: &HeadScores, g: &ModelGeometry, t: PruneTarget) -> Result<HeadMask, StrategyError> {
        let mut all: Vec<(f32, usize, usize)> = s
            .scores
            .iter()
            .enumerate()
            .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (v, l, h)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut mask = HeadMask::default();
        for &(_, l, h) in &all[..t.heads(g.total_heads())] {
            mask.pruned.entry(l).or_default().push(h);
        }
        mask.pruned.values_mut().for_each(|v| v.sort());
        // Where linear-attention heads are scored, the single lowest of them goes too.
        let lowest_linear = s
            .linear
            .iter()
            .enumerate()
            .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (v, l, h)));
        if let Some((_, l, h)) = lowest_linear.min_by(|a, b| a.0.total_cmp(&b.0)) {
            mask.pruned_linear_heads.insert(l, vec![h]);
        }
        Ok(mask)
    }
}

struct Both;
impl Export for Both {
    const NAME: &'static str = "both";
    const DESCRIPTION: &'static str = "entropy for query heads, output norms for linear-attention heads";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Both)
    }
}
impl ImportanceScorer for Both {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let scores = ctx.attention_entropy()?;
        let linear = match ctx.geometry().total_linear_heads() {
            0 => Vec::new(),
            _ => ctx.linear_head_output_norms()?,
        };
        Ok(HeadScores { scores, linear, ..HeadScores::default() })
    }
}

struct Probe;
impl Export for Probe {
    const NAME: &'static str = "probe";
    const DESCRIPTION: &'static str = "uses every evaluation callback";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Probe)
    }
}
impl Evaluator for Probe {
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let ids = ctx.encode("abc")?;
        let text = ctx.decode(&ids)?;
        let windows = ctx.windows()?;
        let logprobs = ctx.next_token_logprobs(&[vec![1, 2, 3], vec![4, 5]])?;
        let generated = ctx.generate(&[7], 3)?;
        Ok(Metrics::from([
            ("ids".into(), serde_json::json!(ids)),
            ("text".into(), text.into()),
            ("windows".into(), serde_json::json!(windows)),
            ("logprobs".into(), serde_json::json!(logprobs)),
            ("generated".into(), serde_json::json!(generated)),
        ]))
    }
}

struct Sgd(BTreeMap<usize, u64>);
impl Export for Sgd {
    const NAME: &'static str = "sgd";
    const DESCRIPTION: &'static str = "plain gradient descent that counts its steps";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Sgd(BTreeMap::new()))
    }
}
impl Optimizer for Sgd {
    fn update(&mut self, id: usize, p: &mut [f32], g: &[f32], lr: f64) -> Result<(), StrategyError> {
        p.iter_mut().zip(g).for_each(|(p, g)| *p -= lr as f32 * g);
        *self.0.entry(id).or_default() += 1;
        Ok(())
    }
    fn state_bytes(&self) -> usize {
        self.0.len() * 8
    }
    fn state(&self) -> Result<Vec<StateTensor>, StrategyError> {
        Ok(self
            .0
            .iter()
            .map(|(id, n)| StateTensor { name: format!("{id}.t"), data: StateData::U64(vec![*n]) })
            .collect())
    }
    fn load_state(&mut self, state: Vec<StateTensor>) -> Result<(), StrategyError> {
        for s in state {
            let StateData::U64(n) = s.data else { return Err(StrategyError::bad_input("steps are u64")) };
            self.0.insert(s.name.trim_end_matches(".t").parse().unwrap(), n[0]);
        }
        Ok(())
    }
}

/// `y = x Pᵀ` with `P` `(out, in)`, on `q_proj` only.
struct Dense;
impl Export for Dense {
    const NAME: &'static str = "dense";
    const DESCRIPTION: &'static str = "a full-rank weight delta";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Dense)
    }
}
impl AdapterKernel for Dense {
    fn param_count(&self, module: &str, in_dim: usize, out_dim: usize) -> usize {
        if module == "q_proj" {
            in_dim * out_dim
        } else {
            0
        }
    }
    fn init(&self, _: &str, _: LinearDims, seed: u64, p: &mut [f32]) -> Result<(), StrategyError> {
        p.iter_mut().enumerate().for_each(|(i, v)| *v = (seed as usize + i) as f32);
        Ok(())
    }
    fn forward(&self, d: LinearDims, x: &[f32], p: &[f32], y: &mut [f32]) -> Result<(), StrategyError> {
        for (r, row) in y.chunks_mut(d.out_dim).enumerate() {
            for (o, v) in row.iter_mut().enumerate() {
                *v = (0..d.in_dim).map(|i| x[r * d.in_dim + i] * p[o * d.in_dim + i]).sum();
            }
        }
        Ok(())
    }
    fn backward(
        &self,
        d: LinearDims,
        x: &[f32],
        p: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dp: &mut [f32],
    ) -> Result<(), StrategyError> {
        dx.fill(0.0);
        dp.fill(0.0);
        for r in 0..d.rows {
            for o in 0..d.out_dim {
                for i in 0..d.in_dim {
                    dx[r * d.in_dim + i] += dy[r * d.out_dim + o] * p[o * d.in_dim + i];
                    dp[o * d.in_dim + i] += dy[r * d.out_dim + o] * x[r * d.in_dim + i];
                }
            }
        }
        Ok(())
    }
    fn delta_weight(&self, _: LinearDims, p: &[f32], dw: &mut [f32]) -> Result<(), StrategyError> {
        dw.copy_from_slice(p);
        Ok(())
    }
}

fn strategies() -> Vec<ForgeStrategy> {
    vec![
        export::scorer::<Scaled>(),
        export::scorer::<Panics>(),
        export::scorer::<Both>(),
        export::pruner::<Lowest>(),
        export::evaluator::<Probe>(),
        export::optimizer::<Sgd>(),
        export::adapter::<Dense>(),
    ]
}

fn plugin() -> PluginContents {
    static TABLE: OnceLock<PluginTable> = OnceLock::new();
    unsafe { read_plugin(entry(&TABLE, "toy", "1.2.3", strategies), "toy.so").unwrap() }
}

fn find(contents: &PluginContents, name: &str) -> (PluginStrategy, Options) {
    let s = contents.strategies.iter().find(|s| s.info.name == name).unwrap();
    let options = Options::resolve(name, &s.info.options, &BTreeMap::new()).unwrap();
    (s.clone(), options)
}

struct MockScoring(ModelGeometry);
impl ScoringContext for MockScoring {
    fn geometry(&self) -> &ModelGeometry {
        &self.0
    }
    fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError> {
        let layer: f32 = name
            .trim_start_matches('q')
            .parse()
            .map_err(|_| StrategyError::bad_input(format!("no tensor `{name}`")))?;
        Ok(HostTensor { shape: vec![2, 3], data: vec![0.0, 10.0 * layer, 0.0, 0.0, 0.0, 0.0] })
    }
    fn seed(&self) -> u64 {
        100
    }
    fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::failed("not used"))
    }
    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::failed("not used"))
    }
    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Ok(vec![vec![1.0, 2.0], vec![3.0, 4.0, 5.0]])
    }
}

fn geometry() -> ModelGeometry {
    ModelGeometry { heads: vec![2, 3], kv_heads: vec![1, 1], ..ModelGeometry::uniform(2, 0, 0, 4, 8) }
}

#[test]
fn the_table_describes_every_strategy_with_its_options() {
    let contents = plugin();
    assert_eq!((contents.name.as_str(), contents.version.as_str()), ("toy", "1.2.3"));
    let kinds: Vec<_> = contents.strategies.iter().map(|s| (s.info.kind, s.info.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (StrategyKind::Scorer, "scaled"),
            (StrategyKind::Scorer, "panics"),
            (StrategyKind::Scorer, "both"),
            (StrategyKind::Pruner, "lowest"),
            (StrategyKind::Evaluator, "probe"),
            (StrategyKind::Optimizer, "sgd"),
            (StrategyKind::Adapter, "dense")
        ]
    );
    assert_eq!(contents.strategies[0].info.options, Scaled::options());
}

#[test]
fn a_scorer_reaches_options_probes_tensors_and_seed_through_the_host_table() {
    let (scaled, _) = find(&plugin(), "scaled");
    let options =
        Options::resolve("scaled", &scaled.info.options, &BTreeMap::from([("factor".into(), 3.0.into())]))
            .unwrap();
    let scores = scaled.scorer(&options).unwrap().score(&mut MockScoring(geometry())).unwrap();
    assert_eq!(scores.scores, vec![vec![103.0, 106.0], vec![119.0, 122.0, 125.0]]);
}

#[test]
fn a_host_error_returns_to_the_host_with_its_kind_and_message() {
    struct NoTensors(MockScoring);
    impl ScoringContext for NoTensors {
        fn geometry(&self) -> &ModelGeometry {
            self.0.geometry()
        }
        fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError> {
            Err(StrategyError::bad_input(format!("no tensor `{name}`")))
        }
        fn seed(&self) -> u64 {
            0
        }
        fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
            self.0.head_output_norms()
        }
        fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
            self.0.head_mask_gradients()
        }
        fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
            self.0.attention_entropy()
        }
    }
    let (scaled, options) = find(&plugin(), "scaled");
    let err = scaled.scorer(&options).unwrap().score(&mut NoTensors(MockScoring(geometry()))).unwrap_err();
    assert_eq!(err, StrategyError::bad_input("scorer `scaled` of plugin toy.so: no tensor `q0`"));
}

#[test]
fn a_panic_in_a_plugin_comes_back_as_an_error() {
    let (panics, options) = find(&plugin(), "panics");
    let err = panics.scorer(&options).unwrap().score(&mut MockScoring(geometry())).unwrap_err();
    assert_eq!(err, StrategyError::bad_input("scorer `panics` of plugin toy.so: panicked: scorer exploded"));
}

#[test]
fn a_pruner_answers_with_a_mask() {
    let (lowest, options) = find(&plugin(), "lowest");
    let scores = HeadScores::attention(vec![vec![5.0, 1.0], vec![0.5, 9.0, 2.0]]);
    let mask = lowest.pruner(&options).unwrap().prune(&scores, &geometry(), PruneTarget::Count(3)).unwrap();
    assert_eq!(mask.pruned, BTreeMap::from([(0, vec![1]), (1, vec![0, 2])]));
}

/// Layer 0 attends (2 query heads), layer 1 is Gated DeltaNet (4 value heads over 2 key heads).
struct MockHybrid;
impl ScoringContext for MockHybrid {
    fn geometry(&self) -> &ModelGeometry {
        static G: OnceLock<ModelGeometry> = OnceLock::new();
        G.get_or_init(|| ModelGeometry {
            heads: vec![2, 0],
            kv_heads: vec![1, 0],
            linear_heads: vec![0, 4],
            linear_key_heads: vec![0, 2],
            ..ModelGeometry::uniform(2, 0, 0, 4, 8)
        })
    }
    fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError> {
        Err(StrategyError::bad_input(format!("no tensor `{name}`")))
    }
    fn seed(&self) -> u64 {
        0
    }
    fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::failed("not used"))
    }
    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Err(StrategyError::failed("not used"))
    }
    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Ok(vec![vec![1.0, 2.0], vec![]])
    }
    fn linear_head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        Ok(vec![vec![], vec![0.4, 0.1, 0.3, 0.2]])
    }
}

#[test]
fn linear_attention_heads_cross_the_boundary_both_ways_from_abi_1_1() {
    let (both, options) = find(&plugin(), "both");
    let scores = both.scorer(&options).unwrap().score(&mut MockHybrid).unwrap();
    assert_eq!(scores.linear, vec![vec![], vec![0.4, 0.1, 0.3, 0.2]]);
    let (lowest, options) = find(&plugin(), "lowest");
    let mask = lowest
        .pruner(&options)
        .unwrap()
        .prune(&scores, MockHybrid.geometry(), PruneTarget::Count(1))
        .unwrap();
    assert_eq!(mask.pruned, BTreeMap::from([(0, vec![0])]));
    assert_eq!(mask.pruned_linear_heads, BTreeMap::from([(1, vec![1])]));
}

#[test]
fn a_plugin_of_abi_1_0_is_told_of_query_heads_alone() {
    let ((mut both, options), (mut lowest, _)) = (find(&plugin(), "both"), find(&plugin(), "lowest"));
    (both.abi_minor, lowest.abi_minor) = (0, 0);
    let scores = both.scorer(&options).unwrap().score(&mut MockHybrid).unwrap();
    assert_eq!((scores.scores.clone(), scores.linear.len()), (vec![vec![1.0, 2.0], vec![]], 0));
    let all = HeadScores { linear: vec![vec![], vec![0.4, 0.1, 0.3, 0.2]], ..scores };
    let mask =
        lowest.pruner(&options).unwrap().prune(&all, MockHybrid.geometry(), PruneTarget::Count(1)).unwrap();
    assert_eq!((mask.count(), mask.pruned_linear_heads.len()), (1, 0));
}

#[test]
fn an_evaluator_uses_every_callback() {
    struct MockEval;
    impl EvalContext for MockEval {
        fn encode(&self, text: &str) -> Result<Vec<u32>, StrategyError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String, StrategyError> {
            Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
        }
        fn windows(&mut self) -> Result<Vec<Vec<u32>>, StrategyError> {
            Ok(vec![vec![1, 2], vec![3, 4]])
        }
        fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError> {
            Ok(ids.iter().map(|s| s[1..].iter().map(|&t| -(t as f32)).collect()).collect())
        }
        fn generate(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>, StrategyError> {
            Ok(vec![prompt[0] + 1; n])
        }
    }
    let (probe, options) = find(&plugin(), "probe");
    let metrics = probe.evaluator(&options).unwrap().evaluate(&mut MockEval).unwrap();
    assert_eq!(
        serde_json::to_value(&metrics).unwrap(),
        serde_json::json!({"ids": [97, 98, 99], "text": "abc", "windows": [[1, 2], [3, 4]],
            "logprobs": [[-2.0, -3.0], [-5.0]], "generated": [8, 8, 8]})
    );
}

#[test]
fn an_optimizer_updates_in_place_and_round_trips_its_state() {
    let (sgd, options) = find(&plugin(), "sgd");
    let mut opt = sgd.optimizer(&options).unwrap();
    let mut p = vec![1.0, 2.0];
    opt.update(4, &mut p, &[1.0, -1.0], 0.5).unwrap();
    opt.update(4, &mut p, &[1.0, -1.0], 0.5).unwrap();
    assert_eq!(p, [0.0, 3.0]);
    assert_eq!(opt.state_bytes(), 8);
    let state = opt.state().unwrap();
    assert_eq!(state, [StateTensor { name: "4.t".into(), data: StateData::U64(vec![2]) }]);
    let mut fresh = sgd.optimizer(&options).unwrap();
    fresh.load_state(state.clone()).unwrap();
    assert_eq!(fresh.state().unwrap(), state);
}

#[test]
fn a_plugin_of_another_major_is_refused_naming_both_versions() {
    let table = ForgePlugin {
        abi_major: ABI_MAJOR + 1,
        abi_minor: 0,
        name: ForgeStr::new("future"),
        version: ForgeStr::new("9"),
        strategies: std::ptr::null(),
        count: 0,
    };
    let err = unsafe { read_plugin(&table, "future.so") }.err().unwrap();
    assert!(
        err.to_string().contains("built for forge plugin ABI 2.0, and this forge speaks ABI 1.1"),
        "{err}"
    );
}

#[test]
fn an_adapter_kernel_gives_the_same_buffers_through_the_boundary() {
    let (dense, options) = find(&plugin(), "dense");
    let kernel = dense.adapter(&options).unwrap();
    assert_eq!((kernel.param_count("q_proj", 3, 2), kernel.param_count("k_proj", 3, 2)), (6, 0));
    let dims = LinearDims { in_dim: 3, out_dim: 2, rows: 2 };
    let mut p = vec![0.0; 6];
    kernel.init("q_proj", dims, 10, &mut p).unwrap();
    assert_eq!(p, [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
    let x = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
    let (mut ours, mut theirs) = (vec![0.0; 4], vec![0.0; 4]);
    kernel.forward(dims, &x, &p, &mut ours).unwrap();
    Dense.forward(dims, &x, &p, &mut theirs).unwrap();
    assert_eq!(ours, theirs);
    let dy = [1.0, 2.0, 3.0, 4.0];
    let (mut dx, mut dp, mut dx2, mut dp2) = (vec![0.0; 6], vec![0.0; 6], vec![0.0; 6], vec![0.0; 6]);
    kernel.backward(dims, &x, &p, &dy, &mut dx, &mut dp).unwrap();
    Dense.backward(dims, &x, &p, &dy, &mut dx2, &mut dp2).unwrap();
    assert_eq!((dx, dp), (dx2, dp2));
    let mut dw = vec![0.0; 6];
    kernel.delta_weight(dims, &p, &mut dw).unwrap();
    assert_eq!(dw, p);
    let mut short = vec![0.0; 3];
    let err = kernel.forward(dims, &x, &p, &mut short).unwrap_err();
    assert!(err.to_string().contains("the output has 3 values where 4 are needed"), "{err}");
}
