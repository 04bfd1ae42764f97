//! The search space (docs/method.md §1): searchable units, their genes and candidates, and the
//! encoding of a [`Policy`] as a normalized vector in `[0, 1]^dim`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::Channels;
use crate::policy::{Policy, UnitPolicy};
use crate::spec::{LayerKind, NetworkSpec};

/// How residual additions constrain pruning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualPruning {
    /// All layers whose outputs meet at a residual add (transitively) form one unit with one
    /// pruning ratio: the residual stream itself is pruned.
    #[default]
    Tied,
    /// Every conv is its own unit; a conv feeding an add only zeroes (masks) its own output
    /// channels, and the residual stream keeps its full width (layers reading it see
    /// `keep_in = 1`). This is what the SeerNet authors did.
    Masked,
}

impl fmt::Display for ResidualPruning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResidualPruning::Tied => "tied",
            ResidualPruning::Masked => "masked",
        })
    }
}

impl FromStr for ResidualPruning {
    type Err = Error;
    /// `tied` or `masked`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tied" => Ok(ResidualPruning::Tied),
            "masked" => Ok(ResidualPruning::Masked),
            _ => Err(Error::InvalidConfig(format!(
                "residual pruning '{s}': expected 'tied' or 'masked'"
            ))),
        }
    }
}

/// Search-space options (docs/method.md §1). Candidate lists are sorted and de-duplicated by
/// [`SearchSpace::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpaceConfig {
    /// Candidate pruning ratios, each in `[0, 1)`; default {0, 0.25, 0.5, 0.75}.
    pub prune_ratios: Vec<f64>,
    /// Candidate weight bit-widths, each in [`MIN_BITS`]..=[`MAX_BITS`]; default {2, 3, 4, 5, 6, 8}.
    pub wbits: Vec<u32>,
    /// Candidate activation bit-widths, each in [`MIN_BITS`]..=[`MAX_BITS`]; default {2, 3, 4, 5, 6, 8}.
    pub abits: Vec<u32>,
    /// Residual pruning mode; default `tied`.
    pub residual_pruning: ResidualPruning,
    /// One bit-width gene per unit for weights and activations (needs `wbits == abits`).
    pub shared_bits: bool,
    /// Fix the first layer(s) (those reading the image): never pruned, `fixed_bits`.
    pub fix_first: bool,
    /// Fix the classifier (the last weighted layer): `fixed_bits`. Its outputs are never pruned.
    pub fix_last: bool,
    /// Bit-width of fixed layers' weights and inputs (8).
    pub fixed_bits: u32,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        Self {
            prune_ratios: vec![0.0, 0.25, 0.5, 0.75],
            wbits: vec![2, 3, 4, 5, 6, 8],
            abits: vec![2, 3, 4, 5, 6, 8],
            residual_pruning: ResidualPruning::Tied,
            shared_bits: false,
            fix_first: true,
            fix_last: true,
            fixed_bits: 8,
        }
    }
}

impl SpaceConfig {
    /// The space of the SeerNet authors' released ResNet-20 samples (the peer data
    /// `seernet-resnet20-cifar10`): masked residual pruning, one bit-width per unit (shared
    /// bits), prune {0.25, 0.5, 0.75}, bits {2, 3, 4, 5}; the first and last layers fixed at 8
    /// bits. With `builtin("resnet20", 32x32x3)` it has the data's 18 units in column order.
    pub fn peer_resnet20() -> Self {
        Self {
            prune_ratios: vec![0.25, 0.5, 0.75],
            wbits: vec![2, 3, 4, 5],
            abits: vec![2, 3, 4, 5],
            residual_pruning: ResidualPruning::Masked,
            shared_bits: true,
            ..Self::default()
        }
    }
}

/// The lowest bit-width a space may hold: the fake quantizers (seer-kernels), the QAT models
/// (seer-nn) and the integer engine (seer-int) implement 2..=8 bits, so the cost model prices
/// only what the model can compute.
pub const MIN_BITS: u32 = 2;
/// The highest bit-width a space may hold (see [`MIN_BITS`]).
pub const MAX_BITS: u32 = 8;
/// Bit-width of the image entering a network: 8-bit pixels, which the models (seer-nn) and
/// the integer engine (seer-int) use as they are. A layer that reads the image is priced at
/// this input bit-width whatever its unit's activation gene says, and a unit made only of
/// such layers has the single activation candidate `IMAGE_BITS` (docs/method.md §2).
pub const IMAGE_BITS: u32 = 8;

/// A searchable unit: one layer, or the layers sharing one output-channel domain
/// (a residual tie group in `tied` mode; a conv plus the depthwise and channel-multiplier
/// convs that follow it, see [`LayerKind::channel_multiplier`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Display name: the first layer's name, with `+N` when N more layers belong to it.
    pub name: String,
    /// Weighted layer indices (in the spec) whose weights/inputs this unit's bits govern.
    pub layers: Vec<usize>,
    /// Whether the unit may be pruned. False when its channels are tied to a fixed layer,
    /// the image, the classes, or a masked residual stream, or when grouped convs leave no
    /// channel to remove (see `blocks`): its prune gene is then {0}.
    pub prunable: bool,
    /// Channels of the unit's domain: the output channels of the convs and linear layers
    /// that produce it (a layer that follows it with multiplier `m` has `m ×` as many).
    pub channels: usize,
    /// The domain's channels form this many equal blocks of consecutive channels, and
    /// pruning keeps the same number in every block: the least common multiple of the groups
    /// of the grouped convs (`1 < groups < in_ch`) that write or read the domain, so that
    /// every group of such a conv keeps as many channels as the others. 1 without grouped
    /// convs, and for units that cannot be pruned. Always divides `channels`.
    pub blocks: usize,
}

impl Unit {
    /// Channels the unit keeps at pruning ratio `prune` (docs/network-spec.md, "Genes and
    /// encoding"): `blocks · max(1, round((1 − prune) · channels / blocks))`, all of them at
    /// `prune <= 0`. A ratio that validation accepts (in `[0, 1)`) never keeps fewer than
    /// `blocks` channels.
    pub fn kept(&self, prune: f64) -> usize {
        crate::cost::kept_in_blocks(1.0 - prune, self.channels, self.blocks)
    }
}

/// Which choice a gene encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneKind {
    /// Pruning ratio.
    Prune,
    /// Weight bit-width.
    WBits,
    /// Activation bit-width (of the activation entering the unit's layers).
    ABits,
    /// Shared weight and activation bit-width (`shared_bits`).
    Bits,
}

impl GeneKind {
    /// Every kind, in declaration order.
    pub const ALL: [GeneKind; 4] = [
        GeneKind::Prune,
        GeneKind::WBits,
        GeneKind::ABits,
        GeneKind::Bits,
    ];

    /// The kind's name in feature and CSV column names: `prune`, `wbits`, `abits`, `bits`.
    /// The one table of these names; [`GeneKind::from_name`] is its inverse.
    pub fn name(self) -> &'static str {
        match self {
            GeneKind::Prune => "prune",
            GeneKind::WBits => "wbits",
            GeneKind::ABits => "abits",
            GeneKind::Bits => "bits",
        }
    }

    /// The kind named `name` (exactly as [`GeneKind::name`] writes it), or None.
    pub fn from_name(name: &str) -> Option<GeneKind> {
        GeneKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Splits a feature name `<kind>_<unit>` (as [`SearchSpace::feature_names`] writes it, e.g.
    /// `wbits_3`) into its kind and unit index; None when the kind is unknown or the unit is
    /// not an index. The unit is not checked against any space.
    pub fn parse_feature(name: &str) -> Option<(GeneKind, usize)> {
        let (kind, unit) = name.rsplit_once('_')?;
        Some((GeneKind::from_name(kind)?, unit.parse().ok()?))
    }
}

impl fmt::Display for GeneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One coordinate of the encoding: a discrete choice of one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gene {
    /// Unit index.
    pub unit: usize,
    /// What is chosen.
    pub kind: GeneKind,
    /// Raw candidate values, ascending (ratios, or bit-widths as f64).
    pub candidates: Vec<f64>,
}

/// Relaxed factor `1 − slope·x[gene]` (a keep ratio), or the constant 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Factor {
    pub gene: Option<usize>,
    pub slope: f64,
}

impl Factor {
    pub const ONE: Factor = Factor {
        gene: None,
        slope: 0.0,
    };
    #[inline]
    pub fn eval(&self, x: &[f64]) -> f64 {
        match self.gene {
            Some(g) => 1.0 - self.slope * x[g],
            None => 1.0,
        }
    }
}

/// Relaxed bit-width `lo + scale·x[gene]`, or the constant `lo`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BitSrc {
    pub gene: Option<usize>,
    pub lo: f64,
    pub scale: f64,
}

impl BitSrc {
    #[inline]
    pub fn eval(&self, x: &[f64]) -> f64 {
        match self.gene {
            Some(g) => self.lo + self.scale * x[g],
            None => self.lo,
        }
    }
}

/// Precomputed per-layer coefficients for the discrete and relaxed costs.
#[derive(Clone, Debug)]
pub(crate) struct Term {
    pub layer: usize,
    pub label: String,
    /// Each group reads one input channel (`groups == in_ch > 1`, depthwise or with a
    /// channel multiplier): the outputs follow the input, one weight row per output.
    pub follows: bool,
    pub out_dom: usize,
    pub in_dom: usize,
    /// Output channels (features for linear).
    pub c_out: usize,
    /// Input channels/features.
    pub c_in: usize,
    /// Output channels in domain units and their multiplier (c_out = c_out_dom · out_mult).
    pub c_out_dom: usize,
    pub out_mult: usize,
    /// Input channels in domain units, and the flatten multiplier (c_in = c_in_dom · in_mult).
    pub c_in_dom: usize,
    pub in_mult: usize,
    /// Blocks of the output and input domains (see [`Unit::blocks`]).
    pub out_blocks: usize,
    pub in_blocks: usize,
    pub groups: usize,
    /// k_h·k_w (1 for linear).
    pub kk: u64,
    /// H_out·W_out (1 for linear).
    pub hw: u64,
    /// Unit index, None for fixed layers.
    pub unit: Option<usize>,
    /// Full weight count.
    pub w_full: f64,
    pub f_out: Factor,
    pub f_in: Factor,
    pub wb: BitSrc,
    pub ab: BitSrc,
    /// The layer reads the image: its input is priced at [`IMAGE_BITS`].
    pub reads_image: bool,
    /// f32 values stored per kept output channel: the scale, plus the multiplier and bias
    /// of a folded BatchNorm (its only consumer), or a bias of its own.
    pub floats_per_channel: u64,
}

/// Gene indices of one unit (`w == a` with shared bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitGenes {
    /// Prune gene.
    pub prune: usize,
    /// Weight-bits gene.
    pub wbits: usize,
    /// Activation-bits gene (equal to `wbits` with shared bits).
    pub abits: usize,
}

/// The searchable units of a network and their candidate choices (docs/method.md §1).
#[derive(Clone, Debug)]
pub struct SearchSpace {
    spec: NetworkSpec,
    config: SpaceConfig,
    units: Vec<Unit>,
    genes: Vec<Gene>,
    pub(crate) unit_genes: Vec<UnitGenes>,
    /// Per gene: value = lo + scale · coordinate.
    pub(crate) gene_lo: Vec<f64>,
    pub(crate) gene_scale: Vec<f64>,
    pub(crate) terms: Vec<Term>,
    /// Unit owning each channel domain (None: never pruned).
    pub(crate) dom_unit: Vec<Option<usize>>,
    fixed: Vec<usize>,
    layer_unit: Vec<Option<usize>>,
    tie_groups: Vec<Vec<usize>>,
}

fn sorted_unique<T: PartialOrd + Copy>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| {
        a.partial_cmp(b)
            .expect("finite values checked before sorting")
    });
    v.dedup_by(|a, b| a == b);
    v
}

impl SearchSpace {
    /// Builds the space for `spec` under `config`.
    ///
    /// Err(InvalidConfig) for empty candidate lists, pruning ratios outside `[0, 1)`,
    /// bit-widths (candidates or `fixed_bits`) outside [`MIN_BITS`]..=[`MAX_BITS`], or `shared_bits` with different weight/activation lists;
    /// Err(InvalidSpec) if the spec's shapes are inconsistent.
    pub fn new(spec: NetworkSpec, mut config: SpaceConfig) -> Result<Self> {
        spec.check()?;
        let cfg_err = |m: String| Err(Error::InvalidConfig(m));
        if config.prune_ratios.is_empty() || config.wbits.is_empty() || config.abits.is_empty() {
            return cfg_err(
                "candidate lists (prune ratios, weight bits, activation bits) must not be empty"
                    .into(),
            );
        }
        for &p in &config.prune_ratios {
            if !p.is_finite() || !(0.0..1.0).contains(&p) {
                return cfg_err(format!("pruning ratio {p} is outside [0, 1)"));
            }
        }
        for &b in config
            .wbits
            .iter()
            .chain(&config.abits)
            .chain([&config.fixed_bits])
        {
            if !(MIN_BITS..=MAX_BITS).contains(&b) {
                return cfg_err(format!(
                    "bit-width {b} is outside {MIN_BITS}..={MAX_BITS}, the range the quantizers and \
                     the integer engine implement"
                ));
            }
        }
        config.prune_ratios = sorted_unique(&config.prune_ratios);
        config.wbits = sorted_unique(&config.wbits);
        config.abits = sorted_unique(&config.abits);
        if config.shared_bits && config.wbits != config.abits {
            return cfg_err(format!(
                "shared bits need equal weight and activation candidates, got {:?} and {:?}",
                config.wbits, config.abits
            ));
        }

        let ch = Channels::analyse(&spec, config.residual_pruning);
        let weighted = spec.weighted_layers();
        let classifier = *weighted
            .last()
            .expect("a checked spec ends in a weighted layer");
        let mut fixed: Vec<usize> = Vec::new();
        for &l in &weighted {
            let first = ch.in_dom[l] == ch.image_dom;
            if (config.fix_first && first) || (config.fix_last && l == classifier) {
                fixed.push(l);
            }
        }
        // Domains never pruned: image, masked residual streams, classes, fixed layers' outputs.
        let mut locked = ch.locked.clone();
        locked[ch.image_dom] = true;
        locked[ch.out_dom[classifier]] = true;
        for &l in &fixed {
            locked[ch.out_dom[l]] = true;
        }
        // Units: non-fixed weighted layers grouped by output domain, ordered by first layer.
        let mut dom_unit: Vec<Option<usize>> = vec![None; ch.n_dom];
        let mut units: Vec<Unit> = Vec::new();
        let mut layer_unit = vec![None; spec.layers.len()];
        for &l in &weighted {
            if fixed.contains(&l) {
                continue;
            }
            let d = ch.out_dom[l];
            let u = match dom_unit[d] {
                Some(u) => u,
                None => {
                    units.push(Unit {
                        name: String::new(),
                        layers: Vec::new(),
                        prunable: !locked[d],
                        channels: ch.dom_c[d],
                        blocks: if locked[d] { 1 } else { ch.blocks[d] },
                    });
                    dom_unit[d] = Some(units.len() - 1);
                    units.len() - 1
                }
            };
            units[u].layers.push(l);
            layer_unit[l] = Some(u);
        }
        for u in &mut units {
            let first = &spec.layers[u.layers[0]].name;
            u.name = if u.layers.len() > 1 {
                format!("{first}+{}", u.layers.len() - 1)
            } else {
                first.clone()
            };
        }
        // Genes.
        let mut genes = Vec::new();
        let mut unit_genes = Vec::new();
        let mut gene_lo = Vec::new();
        let mut gene_scale = Vec::new();
        let mut push = |genes: &mut Vec<Gene>,
                        unit: usize,
                        kind: GeneKind,
                        candidates: Vec<f64>,
                        prune: bool| {
            let lo = if prune { 0.0 } else { candidates[0] };
            let hi = *candidates.last().expect("non-empty candidates");
            gene_lo.push(lo);
            gene_scale.push(hi - lo);
            genes.push(Gene {
                unit,
                kind,
                candidates,
            });
            genes.len() - 1
        };
        let wc: Vec<f64> = config.wbits.iter().map(|&b| b as f64).collect();
        let ac: Vec<f64> = config.abits.iter().map(|&b| b as f64).collect();
        for (u, unit) in units.iter().enumerate() {
            let pc = if unit.prunable {
                config.prune_ratios.clone()
            } else {
                vec![0.0]
            };
            let prune = push(&mut genes, u, GeneKind::Prune, pc, true);
            let (wbits, abits) = if config.shared_bits {
                let g = push(&mut genes, u, GeneKind::Bits, wc.clone(), false);
                (g, g)
            } else {
                // A unit that only reads the image has nothing to quantize at its input.
                let ac = if unit
                    .layers
                    .iter()
                    .all(|&l| spec.layers[l].inputs.is_empty())
                {
                    vec![IMAGE_BITS as f64]
                } else {
                    ac.clone()
                };
                (
                    push(&mut genes, u, GeneKind::WBits, wc.clone(), false),
                    push(&mut genes, u, GeneKind::ABits, ac, false),
                )
            };
            unit_genes.push(UnitGenes {
                prune,
                wbits,
                abits,
            });
        }
        // Per-layer cost terms.
        let fixed_bits = BitSrc {
            gene: None,
            lo: config.fixed_bits as f64,
            scale: 0.0,
        };
        let factor = |d: usize| -> Factor {
            match dom_unit[d] {
                Some(u) if units[u].prunable => {
                    let g = unit_genes[u].prune;
                    Factor {
                        gene: Some(g),
                        slope: gene_scale[g],
                    }
                }
                _ => Factor::ONE,
            }
        };
        // Whether a BatchNorm is the only consumer of layer `l` (the export folds it).
        let bn_follows = |l: usize| {
            let mut consumers = spec.layers.iter().filter(|c| c.inputs.contains(&l));
            matches!(
                (consumers.next(), consumers.next()),
                (Some(c), None) if matches!(c.kind, LayerKind::BatchNorm)
            )
        };
        let mut terms = Vec::new();
        for &l in &weighted {
            let layer = &spec.layers[l];
            let [_, oh, ow] = layer.out_shape;
            let depthwise = layer.kind.is_depthwise();
            let follows = layer.kind.channel_multiplier().is_some();
            let (c_in, c_out, groups, kk, hw, label) = match layer.kind {
                LayerKind::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    stride,
                    groups,
                    dilation,
                    ..
                } => {
                    let mut s = if depthwise {
                        format!("dwconv{}x{}", kernel[0], kernel[1])
                    } else if groups > 1 {
                        format!("gconv{}x{}/g{groups}", kernel[0], kernel[1])
                    } else {
                        format!("conv{}x{}", kernel[0], kernel[1])
                    };
                    if stride != [1, 1] {
                        s.push_str(&format!("/s{}", stride[0]));
                        if stride[0] != stride[1] {
                            s.push_str(&format!(",{}", stride[1]));
                        }
                    }
                    if dilation != [1, 1] {
                        s.push_str(&format!("/d{}", dilation[0]));
                    }
                    (
                        in_ch,
                        out_ch,
                        groups,
                        (kernel[0] * kernel[1]) as u64,
                        (oh * ow) as u64,
                        s,
                    )
                }
                LayerKind::Linear {
                    in_features,
                    out_features,
                    ..
                } => (in_features, out_features, 1, 1, 1, "linear".to_string()),
                _ => unreachable!("weighted layers are conv or linear"),
            };
            let unit = layer_unit[l];
            let (wb, ab) = match unit {
                Some(u) => {
                    let g = unit_genes[u];
                    (
                        BitSrc {
                            gene: Some(g.wbits),
                            lo: gene_lo[g.wbits],
                            scale: gene_scale[g.wbits],
                        },
                        BitSrc {
                            gene: Some(g.abits),
                            lo: gene_lo[g.abits],
                            scale: gene_scale[g.abits],
                        },
                    )
                }
                None => (fixed_bits, fixed_bits),
            };
            let reads_image = layer.inputs.is_empty();
            let ab = if reads_image {
                BitSrc {
                    gene: None,
                    lo: IMAGE_BITS as f64,
                    scale: 0.0,
                }
            } else {
                ab
            };
            let (in_c_dom, in_mult) = match layer.inputs.first() {
                Some(&p) => (ch.out_c[p], ch.out_mult[p]),
                None => (spec.input.c, 1),
            };
            let (out_dom, in_dom) = (ch.out_dom[l], ch.in_dom[l]);
            let blocks = |d: usize| if locked[d] { 1 } else { ch.blocks[d] };
            terms.push(Term {
                layer: l,
                label,
                follows,
                out_dom,
                in_dom,
                c_out,
                c_in,
                c_out_dom: ch.out_c[l],
                out_mult: ch.out_mult[l],
                c_in_dom: in_c_dom,
                in_mult,
                out_blocks: blocks(out_dom),
                in_blocks: blocks(in_dom),
                groups,
                kk,
                hw,
                unit,
                w_full: layer.kind.weight_count() as f64,
                f_out: factor(out_dom),
                f_in: if follows { Factor::ONE } else { factor(in_dom) },
                wb,
                ab,
                reads_image,
                floats_per_channel: match (bn_follows(l), layer.kind.has_bias()) {
                    (true, _) => 3,
                    (false, true) => 2,
                    (false, false) => 1,
                },
            });
        }
        let tie_groups = ch.tie_groups(&spec);
        Ok(Self {
            spec,
            config,
            units,
            genes,
            unit_genes,
            gene_lo,
            gene_scale,
            terms,
            dom_unit,
            fixed,
            layer_unit,
            tie_groups,
        })
    }

    /// The network.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The configuration (candidate lists sorted and de-duplicated).
    pub fn config(&self) -> &SpaceConfig {
        &self.config
    }

    /// Searchable units, ordered by their first layer.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Genes: per unit in order `[Prune, WBits, ABits]` (3L), or `[Prune, Bits]` with shared bits (2L).
    pub fn genes(&self) -> &[Gene] {
        &self.genes
    }

    /// Feature names of the genes, in gene order: `<kind>_<unit>` with the kind's
    /// [`GeneKind::name`] and the unit's index in [`units`](Self::units) (`prune_0`, `wbits_0`,
    /// `abits_0`, `prune_1`, ...; `bits_<unit>` with shared bits). These are also the policy
    /// CSV columns; [`GeneKind::parse_feature`] reads one back.
    pub fn feature_names(&self) -> Vec<String> {
        self.genes
            .iter()
            .map(|g| format!("{}_{}", g.kind.name(), g.unit))
            .collect()
    }

    /// Number of genes (length of encodings and index vectors).
    pub fn dim(&self) -> usize {
        self.genes.len()
    }

    /// Gene indices of unit `u` (panics if `u >= units().len()`).
    pub fn unit_genes(&self, u: usize) -> UnitGenes {
        self.unit_genes[u]
    }

    /// Weighted layers fixed at `fixed_bits` and never pruned (first layer, classifier).
    pub fn fixed_layers(&self) -> &[usize] {
        &self.fixed
    }

    /// The unit governing a layer's bits (None for fixed and weightless layers).
    pub fn unit_of_layer(&self, layer: usize) -> Option<usize> {
        self.layer_unit.get(layer).copied().flatten()
    }

    /// Residual tie groups of the spec (weighted layers, see [`NetworkSpec::tie_groups`]),
    /// as analysed under this space's residual-pruning mode (empty in `masked` mode).
    pub fn tie_groups(&self) -> &[Vec<usize>] {
        &self.tie_groups
    }

    /// Whether unit `u` has no activation choice: without shared bits, all its layers read
    /// the image, so its activation gene holds only [`IMAGE_BITS`].
    pub fn reads_only_image(&self, u: usize) -> bool {
        !self.config.shared_bits
            && self.units[u]
                .layers
                .iter()
                .all(|&l| self.spec.layers[l].inputs.is_empty())
    }

    /// Encoded coordinate of every candidate of `gene`, ascending (docs/method.md §1):
    /// prune `p / max P`, bits `(b − min B)/(max B − min B)`; 0 for a single candidate.
    pub fn gene_coords(&self, gene: usize) -> Vec<f64> {
        self.genes[gene]
            .candidates
            .iter()
            .map(|&v| self.coord(gene, v))
            .collect()
    }

    fn coord(&self, gene: usize, v: f64) -> f64 {
        let s = self.gene_scale[gene];
        if s > 0.0 {
            (v - self.gene_lo[gene]) / s
        } else {
            0.0
        }
    }

    fn nearest(&self, gene: usize, x: f64) -> usize {
        let mut best = 0;
        let mut bd = f64::INFINITY;
        for (i, &v) in self.genes[gene].candidates.iter().enumerate() {
            let d = (self.coord(gene, v) - x).abs();
            if d < bd {
                bd = d;
                best = i;
            }
        }
        best
    }

    /// Checks a policy against this space: network name and input, number of units, bits
    /// among the candidates (equal with shared bits), pruning ratio finite in `[0, 1)` and 0
    /// for units that cannot be pruned. Errors name `source` (e.g. the file), unit and value.
    pub fn validate_named(&self, p: &Policy, source: &str) -> Result<()> {
        let err = |msg: String| {
            Err(Error::InvalidPolicy {
                source_name: source.to_string(),
                msg,
            })
        };
        if p.arch != self.spec.name {
            return err(format!(
                "policy is for network '{}', but the network is '{}'",
                p.arch, self.spec.name
            ));
        }
        if p.input != self.spec.input {
            return err(format!(
                "policy is for input {}, but the network's input is {}",
                p.input, self.spec.input
            ));
        }
        if p.units.len() != self.units.len() {
            return err(format!(
                "policy has {} units, but {} ({}) has {} searchable units",
                p.units.len(),
                self.spec.name,
                self.config.residual_pruning,
                self.units.len()
            ));
        }
        for (u, (up, unit)) in p.units.iter().zip(&self.units).enumerate() {
            let at = format!("unit {u} ({})", unit.name);
            if !up.prune.is_finite() || !(0.0..1.0).contains(&up.prune) {
                return err(format!(
                    "{at}: pruning ratio {} is outside [0, 1)",
                    up.prune
                ));
            }
            if !unit.prunable && up.prune != 0.0 {
                return err(format!(
                    "{at}: pruning ratio {} but this unit cannot be pruned (its channels are tied to a fixed layer, the classes or a masked residual stream); a policy made in another space needs that space's settings (first or last layer searchable, residual pruning; `seernet`: --no-fix-first, --no-fix-last, --residual-pruning)",
                    up.prune
                ));
            }
            if !self.config.wbits.contains(&up.wbits) {
                return err(format!(
                    "{at}: weight bit-width {} is not a candidate {:?}",
                    up.wbits, self.config.wbits
                ));
            }
            let ac = &self.genes[self.unit_genes[u].abits].candidates;
            if !ac.contains(&(up.abits as f64)) {
                return err(if self.reads_only_image(u) {
                    format!(
                        "{at}: activation bit-width {} but this unit reads the image, whose \
                         {IMAGE_BITS}-bit pixels are used as they are: its activation bit-width \
                         is {IMAGE_BITS}",
                        up.abits
                    )
                } else {
                    format!(
                        "{at}: activation bit-width {} is not a candidate {:?}",
                        up.abits, self.config.abits
                    )
                });
            }
            if self.config.shared_bits && up.wbits != up.abits {
                return err(format!(
                    "{at}: weight bits {} and activation bits {} differ, but the space shares them",
                    up.wbits, up.abits
                ));
            }
        }
        Ok(())
    }

    /// [`validate_named`](Self::validate_named) with the source name `policy`.
    pub fn validate(&self, p: &Policy) -> Result<()> {
        self.validate_named(p, "policy")
    }

    /// Encodes a policy as `x ∈ [0,1]^dim` (docs/method.md §1). Any valid pruning ratio encodes
    /// (`p / max P`, which may exceed 1 for a ratio above the largest candidate).
    /// Err(InvalidPolicy) if the policy does not fit.
    pub fn encode(&self, p: &Policy) -> Result<Vec<f64>> {
        self.validate(p)?;
        let mut x = vec![0.0; self.dim()];
        for (u, up) in p.units.iter().enumerate() {
            let g = self.unit_genes[u];
            x[g.prune] = self.coord(g.prune, up.prune);
            x[g.wbits] = self.coord(g.wbits, up.wbits as f64);
            x[g.abits] = self.coord(g.abits, up.abits as f64);
        }
        Ok(x)
    }

    /// Decodes `x` by rounding every coordinate to its nearest candidate (ties go to the
    /// smaller value). Err(InvalidEncoding) for a wrong length or a non-finite coordinate.
    pub fn decode(&self, x: &[f64]) -> Result<Policy> {
        let idx = self.round_indices(x)?;
        self.from_indices(&idx)
    }

    /// Candidate index per gene nearest to `x` (the rounding used by [`decode`](Self::decode)).
    pub fn round_indices(&self, x: &[f64]) -> Result<Vec<usize>> {
        self.check_x(x)?;
        Ok((0..self.dim()).map(|g| self.nearest(g, x[g])).collect())
    }

    /// Err(InvalidEncoding) "`{what}`length `len` but the space has `dim` genes" unless
    /// `len == dim()`.
    fn check_dim(&self, what: &str, len: usize) -> Result<()> {
        if len == self.dim() {
            return Ok(());
        }
        Err(Error::InvalidEncoding(format!(
            "{what}length {len} but the space has {} genes",
            self.dim()
        )))
    }

    pub(crate) fn check_x(&self, x: &[f64]) -> Result<()> {
        self.check_dim("", x.len())?;
        if let Some((i, v)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InvalidEncoding(format!("coordinate {i} is {v}")));
        }
        Ok(())
    }

    /// Candidate index of every gene. Err(InvalidPolicy) if the policy does not fit or a
    /// pruning ratio is not one of the candidates.
    pub fn to_indices(&self, p: &Policy) -> Result<Vec<usize>> {
        self.validate(p)?;
        let mut idx = vec![0; self.dim()];
        for (u, up) in p.units.iter().enumerate() {
            let g = self.unit_genes[u];
            let find = |gene: usize, v: f64| {
                self.genes[gene]
                    .candidates
                    .iter()
                    .position(|&c| (c - v).abs() <= 1e-9)
                    .ok_or_else(|| Error::InvalidPolicy {
                        source_name: "policy".into(),
                        msg: format!(
                            "unit {u} ({}): {:?} value {v} is not a candidate {:?}",
                            self.units[u].name, self.genes[gene].kind, self.genes[gene].candidates
                        ),
                    })
            };
            idx[g.prune] = find(g.prune, up.prune)?;
            idx[g.wbits] = find(g.wbits, up.wbits as f64)?;
            idx[g.abits] = find(g.abits, up.abits as f64)?;
        }
        Ok(idx)
    }

    pub(crate) fn check_indices(&self, idx: &[usize]) -> Result<()> {
        self.check_dim("index vector of ", idx.len())?;
        for (g, &i) in idx.iter().enumerate() {
            if i >= self.genes[g].candidates.len() {
                return Err(Error::InvalidEncoding(format!(
                    "gene {g} (unit {} {:?}) index {i} but it has {} candidates",
                    self.genes[g].unit,
                    self.genes[g].kind,
                    self.genes[g].candidates.len()
                )));
            }
        }
        Ok(())
    }

    /// The policy with these candidate indices. Err(InvalidEncoding) for a wrong length or
    /// an index out of range.
    pub fn from_indices(&self, idx: &[usize]) -> Result<Policy> {
        self.check_indices(idx)?;
        let units = self
            .unit_genes
            .iter()
            .map(|g| UnitPolicy {
                prune: self.genes[g.prune].candidates[idx[g.prune]],
                wbits: self.genes[g.wbits].candidates[idx[g.wbits]] as u32,
                abits: self.genes[g.abits].candidates[idx[g.abits]] as u32,
            })
            .collect();
        Ok(Policy {
            arch: self.spec.name.clone(),
            input: self.spec.input,
            units,
        })
    }

    /// Encoding of the policy with these candidate indices (== `encode(from_indices(idx))`).
    pub fn encode_indices(&self, idx: &[usize]) -> Result<Vec<f64>> {
        self.check_indices(idx)?;
        Ok(idx
            .iter()
            .enumerate()
            .map(|(g, &i)| self.coord(g, self.genes[g].candidates[i]))
            .collect())
    }

    /// The same choice for every unit: `prune` on prunable units (0 on the others), `abits` on
    /// units that do not only read the image ([`IMAGE_BITS`] on those).
    /// Err(InvalidPolicy) if the bits are not candidates (or differ with shared bits) or the
    /// ratio is outside `[0, 1)`.
    pub fn uniform(&self, wbits: u32, abits: u32, prune: f64) -> Result<Policy> {
        let units = self
            .units
            .iter()
            .enumerate()
            .map(|(i, u)| UnitPolicy {
                prune: if u.prunable { prune } else { 0.0 },
                wbits,
                abits: if self.reads_only_image(i) {
                    IMAGE_BITS
                } else {
                    abits
                },
            })
            .collect();
        let p = Policy {
            arch: self.spec.name.clone(),
            input: self.spec.input,
            units,
        };
        self.validate_named(&p, "uniform policy")?;
        Ok(p)
    }

    /// Candidate indices of the cheapest policy: largest pruning ratio, smallest bits.
    pub fn cheapest(&self) -> Vec<usize> {
        self.genes
            .iter()
            .map(|g| {
                if g.kind == GeneKind::Prune {
                    g.candidates.len() - 1
                } else {
                    0
                }
            })
            .collect()
    }

    /// Candidate indices of the most expensive policy: smallest pruning ratio, largest bits.
    pub fn most_expensive(&self) -> Vec<usize> {
        self.genes
            .iter()
            .map(|g| {
                if g.kind == GeneKind::Prune {
                    0
                } else {
                    g.candidates.len() - 1
                }
            })
            .collect()
    }
}
