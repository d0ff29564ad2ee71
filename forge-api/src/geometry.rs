use serde::{Deserialize, Serialize};

/// The kinds of prunable units (the plugin ABI's `FORGE_UNIT_*`). Each kind has its own counts,
/// scores and mask entries, with the same shape of rule: a unit serves through a shared group (a KV
/// head of attention, a key head of Gated DeltaNet), and the group goes when all its units go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// A full-attention query head (its query and gate rows of `q_proj`, its `o_proj` columns);
    /// its group is a key/value head. Mask key `pruned`.
    QueryHead,
    /// A linear-attention (Gated DeltaNet) value head (its value slice of `in_proj_qkv` and
    /// `conv1d`, its rows of `in_proj_z/b/a`, `dt_bias` and `A_log`, its `out_proj` columns); its
    /// group is the key head that serves it. Mask key `pruned_linear_heads`.
    LinearHead,
    /// An MLP channel (its `gate_proj` and `up_proj` rows and its `down_proj` column); each is its
    /// own group. Mask key `pruned_mlp_channels`.
    MlpChannel,
    /// A whole decoder layer (one unit per layer): removed, the residual stream passes it unchanged.
    /// Mask key `pruned_layers`, a list of layers.
    Layer,
}

impl UnitKind {
    /// Every kind, query heads first (the order of the plugin ABI's buffers).
    pub const ALL: [UnitKind; 4] =
        [UnitKind::QueryHead, UnitKind::LinearHead, UnitKind::MlpChannel, UnitKind::Layer];

    /// The mask file's key for heads of this kind.
    pub fn mask_key(self) -> &'static str {
        match self {
            UnitKind::QueryHead => "pruned",
            UnitKind::LinearHead => "pruned_linear_heads",
            UnitKind::MlpChannel => "pruned_mlp_channels",
            UnitKind::Layer => "pruned_layers",
        }
    }

    /// How messages name a head of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            UnitKind::QueryHead => "query head",
            UnitKind::LinearHead => "linear-attention value head",
            UnitKind::MlpChannel => "MLP channel",
            UnitKind::Layer => "layer",
        }
    }
}

/// The shape of a decoder's heads, which is what head scores and head masks are laid out over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelGeometry {
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads of each layer (equal in a standard model, different after per-layer pruning; 0 in
    /// a layer without attention, such as Qwen3.5's linear-attention layers).
    pub heads: Vec<usize>,
    /// Key/value heads of each layer; query heads share them in groups (GQA). 0 where `heads` is.
    pub kv_heads: Vec<usize>,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Linear-attention value heads of each layer (0 in a layer without linear attention; empty in a
    /// model without any).
    #[serde(default)]
    pub linear_heads: Vec<usize>,
    /// Linear-attention key heads of each layer; each serves a consecutive group of value heads.
    #[serde(default)]
    pub linear_key_heads: Vec<usize>,
    /// MLP channels (intermediate width) of each layer; empty when not described.
    #[serde(default)]
    pub mlp_channels: Vec<usize>,
    /// What removing each unit saves, for parameter targets; None where the host did not count.
    #[serde(default)]
    pub costs: Option<UnitCosts>,
}

/// Parameters each unit owns, as a compact model saves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCosts {
    /// The whole model's parameters.
    pub parameters: u64,
    /// Per kind, in [`UnitKind::ALL`] order: what one unit owns (0 for layers, see `layers`).
    pub unit: Vec<u64>,
    /// Per kind: what one group owns beside its units (a KV head's k and v rows; a key head's q and
    /// k slices; 0 where a unit is its own group).
    pub group: Vec<u64>,
    /// Each layer's parameters.
    pub layers: Vec<u64>,
}

impl ModelGeometry {
    /// A model with the same number of heads in every layer.
    pub fn uniform(layers: usize, heads: usize, kv_heads: usize, head_dim: usize, hidden: usize) -> Self {
        ModelGeometry {
            layers,
            heads: vec![heads; layers],
            kv_heads: vec![kv_heads; layers],
            head_dim,
            hidden,
            linear_heads: Vec::new(),
            linear_key_heads: Vec::new(),
            mlp_channels: Vec::new(),
            costs: None,
        }
    }

    /// Units of `kind` in each layer and their groups (KV heads, key heads; an MLP channel is its own
    /// group); all 0 for a kind the model lacks.
    pub fn of(&self, kind: UnitKind) -> (Vec<usize>, Vec<usize>) {
        let per_layer = |v: &[usize]| (0..self.layers).map(|l| v.get(l).copied().unwrap_or(0)).collect();
        match kind {
            UnitKind::QueryHead => (self.heads.clone(), self.kv_heads.clone()),
            UnitKind::LinearHead => (per_layer(&self.linear_heads), per_layer(&self.linear_key_heads)),
            UnitKind::MlpChannel => (per_layer(&self.mlp_channels), per_layer(&self.mlp_channels)),
            UnitKind::Layer => (vec![1; self.layers], vec![1; self.layers]),
        }
    }

    /// The layers with query heads (all but a hybrid's linear-attention layers), in order.
    pub fn attending_layers(&self) -> Vec<usize> {
        (0..self.layers).filter(|&l| self.heads[l] > 0).collect()
    }

    /// Query heads summed over layers.
    pub fn total_heads(&self) -> usize {
        self.heads.iter().sum()
    }

    /// Linear-attention value heads summed over layers.
    pub fn total_linear_heads(&self) -> usize {
        self.linear_heads.iter().sum()
    }

    /// Units of `kind` summed over layers.
    pub fn total(&self, kind: UnitKind) -> usize {
        self.of(kind).0.iter().sum()
    }
}
