//! Channel-flow analysis: which layer decides the channels of every tensor.
//!
//! Every tensor belongs to a *channel domain*: the set of tensors whose channels are pruned
//! together. A non-depthwise conv, a linear layer or a padding shortcut starts a new domain;
//! BN, activations, pooling, flatten and depthwise convs pass their producer's domain on
//! ("channels follow the producer", docs/method.md §2). A residual add either merges its inputs'
//! domains (`tied`) or starts a fresh full-width domain that is never pruned (`masked`).

use crate::space::ResidualPruning;
use crate::spec::{LayerKind, NetworkSpec};

/// Result of the channel-flow analysis of one spec under one residual-pruning mode.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    /// Domain of each layer's output tensor (dense ids, image = `image_dom`).
    pub out_dom: Vec<usize>,
    /// Domain of each layer's (first) input tensor.
    pub in_dom: Vec<usize>,
    /// Channels of each layer's output tensor counted in domain channels (before flatten).
    pub out_c: Vec<usize>,
    /// Spatial multiplier of each output tensor: features = `out_c · out_mult` (H·W after flatten).
    pub out_mult: Vec<usize>,
    /// The image's domain.
    pub image_dom: usize,
    /// Number of domains.
    pub n_dom: usize,
    /// Domains that can never be pruned by the analysis alone (image, masked add outputs).
    pub locked: Vec<bool>,
    /// Layers that start each domain (non-depthwise conv, linear, padding shortcut).
    pub producers: Vec<Vec<usize>>,
    /// Whether the domain was formed by merging at an add (tied mode).
    pub merged: Vec<bool>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl Channels {
    /// Analyses `spec` (assumed checked: producers earlier, shapes consistent).
    pub fn analyse(spec: &NetworkSpec, mode: ResidualPruning) -> Self {
        let n = spec.layers.len();
        // Raw domain ids; 0 = image.
        let mut parent = vec![0usize];
        let mut locked_raw = vec![true];
        let mut merged_raw = vec![false];
        let mut out_raw = vec![0usize; n];
        let mut out_c = vec![0usize; n];
        let mut out_mult = vec![1usize; n];
        let new_dom = |parent: &mut Vec<usize>,
                       locked: bool,
                       locked_raw: &mut Vec<bool>,
                       merged_raw: &mut Vec<bool>| {
            parent.push(parent.len());
            locked_raw.push(locked);
            merged_raw.push(false);
            parent.len() - 1
        };
        for (i, l) in spec.layers.iter().enumerate() {
            let (src_dom, src_c, src_mult) = match l.inputs.first() {
                Some(&p) => (out_raw[p], out_c[p], out_mult[p]),
                None => (0, spec.input.c, 1),
            };
            let [_, h, w] = spec.input_shape_of(i);
            match &l.kind {
                k if k.is_depthwise() => {
                    out_raw[i] = src_dom;
                    out_c[i] = src_c;
                    out_mult[i] = src_mult;
                }
                LayerKind::Conv2d { out_ch, .. } | LayerKind::PadShortcut { out_ch, .. } => {
                    out_raw[i] = new_dom(&mut parent, false, &mut locked_raw, &mut merged_raw);
                    out_c[i] = *out_ch;
                }
                LayerKind::Linear { out_features, .. } => {
                    out_raw[i] = new_dom(&mut parent, false, &mut locked_raw, &mut merged_raw);
                    out_c[i] = *out_features;
                }
                LayerKind::Add => match mode {
                    ResidualPruning::Tied => {
                        let root = find(&mut parent, src_dom);
                        for &p in &l.inputs[1..] {
                            let r = find(&mut parent, out_raw[p]);
                            if r != root {
                                parent[r] = root;
                                locked_raw[root] |= locked_raw[r];
                            }
                        }
                        merged_raw[root] = true;
                        out_raw[i] = root;
                        out_c[i] = src_c;
                        out_mult[i] = src_mult;
                    }
                    ResidualPruning::Masked => {
                        out_raw[i] = new_dom(&mut parent, true, &mut locked_raw, &mut merged_raw);
                        out_c[i] = src_c;
                        out_mult[i] = src_mult;
                    }
                },
                LayerKind::Flatten => {
                    out_raw[i] = src_dom;
                    out_c[i] = src_c;
                    out_mult[i] = src_mult * h * w;
                }
                LayerKind::BatchNorm
                | LayerKind::Relu
                | LayerKind::Relu6
                | LayerKind::MaxPool { .. }
                | LayerKind::AvgPool { .. }
                | LayerKind::GlobalAvgPool => {
                    out_raw[i] = src_dom;
                    out_c[i] = src_c;
                    out_mult[i] = src_mult;
                }
            }
        }
        // Resolve roots and make ids dense, ordered by first appearance.
        let mut dense = vec![usize::MAX; parent.len()];
        let mut n_dom = 0;
        let mut resolve = |parent: &mut Vec<usize>, raw: usize| {
            let r = find(parent, raw);
            if dense[r] == usize::MAX {
                dense[r] = n_dom;
                n_dom += 1;
            }
            (r, dense[r])
        };
        let (img_root, image_dom) = resolve(&mut parent, 0);
        let mut out_dom = vec![0; n];
        let mut roots = vec![img_root];
        for i in 0..n {
            let (r, d) = resolve(&mut parent, out_raw[i]);
            out_dom[i] = d;
            if d == roots.len() {
                roots.push(r);
            }
        }
        let locked = roots.iter().map(|&r| locked_raw[r]).collect();
        let merged = roots.iter().map(|&r| merged_raw[r]).collect();
        let mut producers = vec![Vec::new(); n_dom];
        let in_dom = (0..n)
            .map(|i| {
                spec.layers[i]
                    .inputs
                    .first()
                    .map_or(image_dom, |&p| out_dom[p])
            })
            .collect();
        for (i, l) in spec.layers.iter().enumerate() {
            let starts = match &l.kind {
                LayerKind::Conv2d { .. } => !l.kind.is_depthwise(),
                LayerKind::Linear { .. } | LayerKind::PadShortcut { .. } => true,
                _ => false,
            };
            if starts {
                producers[out_dom[i]].push(i);
            }
        }
        Channels {
            out_dom,
            in_dom,
            out_c,
            out_mult,
            image_dom,
            n_dom,
            locked,
            producers,
            merged,
        }
    }

    /// Tie groups: weighted producers of every domain merged at an add (sorted, non-empty).
    pub fn tie_groups(&self, spec: &NetworkSpec) -> Vec<Vec<usize>> {
        (0..self.n_dom)
            .filter(|&d| self.merged[d])
            .map(|d| {
                self.producers[d]
                    .iter()
                    .copied()
                    .filter(|&l| spec.layers[l].kind.is_weighted())
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect()
    }
}
