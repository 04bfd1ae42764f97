//! Channel-flow analysis: which layer decides the channels of every tensor.
//!
//! Every tensor belongs to a *channel domain*: the set of tensors whose channels are pruned
//! together. A conv (except one whose groups each read one input channel), a linear layer or
//! a padding shortcut starts a new domain; BN, activations, pooling, flatten and convs with
//! `groups == in_ch` (depthwise, or with a channel multiplier) pass their producer's domain on
//! ("channels follow the producer", docs/method.md §2). A residual add either merges its
//! inputs' domains (`tied`) or starts a fresh full-width domain that is never pruned
//! (`masked`). A channel concatenation starts a fresh domain and locks it and every domain it
//! reads: pruning does not pass through a concat (its producers keep all their channels).
//!
//! A grouped conv (`1 < groups < in_ch`) can only lose channels evenly from its groups: its
//! output domain and the domain it reads are split into equal *blocks* of consecutive
//! channels (the least common multiple of the groups of every grouped conv that writes or
//! reads the domain), and every block keeps the same number of channels.

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
    /// Multiplier of each output tensor: its channels (features after flatten) are
    /// `out_c · out_mult`, domain channel `c` owning the `out_mult` consecutive channels from
    /// `c · out_mult` (H·W positions after flatten, `m` outputs of a multiplier-`m` conv).
    pub out_mult: Vec<usize>,
    /// The image's domain.
    pub image_dom: usize,
    /// Number of domains.
    pub n_dom: usize,
    /// Domains that can never be pruned by the analysis alone: the image, masked add outputs,
    /// domains whose tensors disagree on their channel count (an add of a multiplier conv's
    /// output and a plain one), domains read by a grouped conv whose groups split domain
    /// channels, and domains whose blocks hold one channel each.
    pub locked: Vec<bool>,
    /// Channels of each domain (domain channels, before any multiplier).
    pub dom_c: Vec<usize>,
    /// Blocks of each domain: its channels split into this many equal runs of consecutive
    /// channels, each keeping the same number (1 unless a grouped conv writes or reads it;
    /// 1 for locked domains). Always divides `dom_c`.
    pub blocks: Vec<usize>,
    /// Layers that start each domain (conv except multiplier convs, linear, padding shortcut).
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

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// Raw (union-find) domains during the analysis; 0 = image.
struct Raw {
    parent: Vec<usize>,
    locked: Vec<bool>,
    merged: Vec<bool>,
    blocks: Vec<usize>,
}

impl Raw {
    fn new_dom(&mut self, locked: bool) -> usize {
        self.parent.push(self.parent.len());
        self.locked.push(locked);
        self.merged.push(false);
        self.blocks.push(1);
        self.parent.len() - 1
    }
}

impl Channels {
    /// Analyses `spec` (assumed checked: producers earlier, shapes consistent, groups dividing
    /// the channels).
    pub fn analyse(spec: &NetworkSpec, mode: ResidualPruning) -> Self {
        let n = spec.layers.len();
        let mut raw = Raw {
            parent: vec![0],
            locked: vec![true],
            merged: vec![false],
            blocks: vec![1],
        };
        let mut out_raw = vec![0usize; n];
        let mut out_c = vec![0usize; n];
        let mut out_mult = vec![1usize; n];
        for (i, l) in spec.layers.iter().enumerate() {
            let (src_dom, src_c, src_mult) = match l.inputs.first() {
                Some(&p) => (out_raw[p], out_c[p], out_mult[p]),
                None => (0, spec.input.c, 1),
            };
            let [_, h, w] = spec.input_shape_of(i);
            match &l.kind {
                k if k.channel_multiplier().is_some() => {
                    out_raw[i] = src_dom;
                    out_c[i] = src_c;
                    out_mult[i] = src_mult * k.channel_multiplier().unwrap_or(1);
                }
                LayerKind::Conv2d { out_ch, groups, .. } => {
                    let d = raw.new_dom(false);
                    out_raw[i] = d;
                    out_c[i] = *out_ch;
                    if *groups > 1 {
                        // Each group keeps the same number of outputs and reads the same
                        // number of inputs (1 < groups < in_ch here).
                        raw.blocks[d] = *groups;
                        let r = find(&mut raw.parent, src_dom);
                        if src_c % groups == 0 {
                            raw.blocks[r] = lcm(raw.blocks[r], *groups);
                        } else {
                            // A group boundary falls inside a domain channel's run.
                            raw.locked[r] = true;
                        }
                    }
                }
                LayerKind::PadShortcut { out_ch, .. } => {
                    out_raw[i] = raw.new_dom(false);
                    out_c[i] = *out_ch;
                }
                LayerKind::Linear { out_features, .. } => {
                    out_raw[i] = raw.new_dom(false);
                    out_c[i] = *out_features;
                }
                LayerKind::Add => match mode {
                    ResidualPruning::Tied => {
                        let root = find(&mut raw.parent, src_dom);
                        for &p in &l.inputs[1..] {
                            let r = find(&mut raw.parent, out_raw[p]);
                            if r != root {
                                raw.parent[r] = root;
                                raw.locked[root] |= raw.locked[r];
                                raw.blocks[root] = lcm(raw.blocks[root], raw.blocks[r]);
                            }
                        }
                        raw.merged[root] = true;
                        out_raw[i] = root;
                        out_c[i] = src_c;
                        out_mult[i] = src_mult;
                    }
                    ResidualPruning::Masked => {
                        out_raw[i] = raw.new_dom(true);
                        out_c[i] = src_c;
                        out_mult[i] = src_mult;
                    }
                },
                LayerKind::Concat => {
                    // Locked: the concat's channels are its inputs' channels back to back, so
                    // neither side may lose channels.
                    for &p in &l.inputs {
                        let r = find(&mut raw.parent, out_raw[p]);
                        raw.locked[r] = true;
                    }
                    out_raw[i] = raw.new_dom(true);
                    out_c[i] = l.out_shape[0];
                }
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
        let mut dense = vec![usize::MAX; raw.parent.len()];
        let mut n_dom = 0;
        let mut resolve = |parent: &mut Vec<usize>, r: usize| {
            let r = find(parent, r);
            if dense[r] == usize::MAX {
                dense[r] = n_dom;
                n_dom += 1;
            }
            (r, dense[r])
        };
        let (img_root, image_dom) = resolve(&mut raw.parent, 0);
        let mut out_dom = vec![0; n];
        let mut roots = vec![img_root];
        for i in 0..n {
            let (r, d) = resolve(&mut raw.parent, out_raw[i]);
            out_dom[i] = d;
            if d == roots.len() {
                roots.push(r);
            }
        }
        let mut locked: Vec<bool> = roots.iter().map(|&r| raw.locked[r]).collect();
        let merged = roots.iter().map(|&r| raw.merged[r]).collect();
        let mut blocks: Vec<usize> = roots.iter().map(|&r| raw.blocks[r]).collect();
        // Channels per domain; tensors of one domain that disagree cannot share a kept set.
        let mut dom_c = vec![0usize; n_dom];
        dom_c[image_dom] = spec.input.c;
        for i in 0..n {
            let d = out_dom[i];
            if dom_c[d] == 0 {
                dom_c[d] = out_c[i];
            } else if dom_c[d] != out_c[i] {
                locked[d] = true;
            }
        }
        for d in 0..n_dom {
            if blocks[d] > 1 && (dom_c[d] % blocks[d] != 0 || dom_c[d] == blocks[d]) {
                locked[d] = true;
            }
            if locked[d] {
                blocks[d] = 1;
            }
        }
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
                LayerKind::Conv2d { .. } => l.kind.channel_multiplier().is_none(),
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
            dom_c,
            blocks,
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
