//! Exact MACs, BOPs and model size of a discrete policy, and the continuous relaxation with
//! its analytic gradient (docs/method.md §2).
//!
//! Conventions (see `docs/network-spec.md`): only conv and linear layers count. For a layer
//! with `n_out` kept output channels and `n_in` kept input channels (features),
//! weights kept `W = n_out · n_in · k_h·k_w / groups` (exact: a grouped conv's kept channels
//! split evenly over its groups, see [`crate::Unit::blocks`]; a conv whose groups each read
//! one input channel, depthwise or with a channel multiplier, keeps `n_out · k_h·k_w`: its
//! groups shrink with its input channels), `MACs = H_out·W_out·W`,
//! `BOPs = MACs · b_w · b_a` (`b_a`: bits of the activation entering the layer; 8 for a layer
//! that reads the image, whose pixels are used as they are), and
//! `size` the bits the integer engine stores (seer-int's `IntModel::storage_bytes` × 8): each
//! kept output channel's `W / n_out` codes of `b_w` bits packed into whole bytes
//! (`8·⌈(W/n_out)·b_w / 8⌉`), one f32 scale, and, when a BatchNorm directly follows (its only
//! consumer), its folded f32 multiplier and bias; a layer with a bias and no BatchNorm keeps
//! an f32 bias.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::policy::{Policy, UnitPolicy};
use crate::space::SearchSpace;

/// Cost of one weighted layer under a discrete policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Layer index in the spec.
    pub layer: usize,
    /// Layer name.
    pub name: String,
    /// Short description: `conv3x3/s2`, `dwconv3x3`, `gconv3x3/g4`, `linear`.
    pub kind: String,
    /// Output shape `[C, H, W]` before pruning.
    pub out_shape: [usize; 3],
    /// Kept fraction of input channels/features (`c_in_kept / c_in`).
    pub keep_in: f64,
    /// Kept fraction of output channels (`c_out_kept / c_out`).
    pub keep_out: f64,
    /// Kept input channels (features for linear).
    pub c_in_kept: usize,
    /// Kept output channels.
    pub c_out_kept: usize,
    /// Weight bit-width.
    pub wbits: u32,
    /// Bit-width of the activation entering the layer.
    pub abits: u32,
    /// Multiply-accumulates.
    pub macs: u64,
    /// Bit operations `macs · wbits · abits`.
    pub bops: u64,
    /// Model size in bits as the integer engine stores it (packed rows, f32 scales, folded
    /// BatchNorm multipliers, biases).
    pub size_bits: u64,
}

/// Exact costs of a discrete policy: totals and one entry per weighted layer, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// Sum of MACs.
    pub total_macs: u64,
    /// Sum of BOPs.
    pub total_bops: u64,
    /// Sum of size in bits.
    pub total_size_bits: u64,
    /// Per weighted layer (conv and linear), in spec order.
    pub layers: Vec<LayerCost>,
}

/// Totals only (no per-layer breakdown, no allocation): for hot loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// MACs.
    pub macs: u64,
    /// BOPs.
    pub bops: u64,
    /// Size in bits.
    pub size_bits: u64,
}

/// Continuous relaxation at an encoding `x`: keep ratios `1 − x_p · max P` and bit-widths
/// `min B + x_b · (max B − min B)` without rounding, and gradients with respect to `x`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RelaxedCost {
    /// Relaxed MACs.
    pub macs: f64,
    /// Relaxed BOPs.
    pub bops: f64,
    /// Relaxed size in bits.
    pub size_bits: f64,
    /// ∂MACs/∂x, length `dim()`.
    pub grad_macs: Vec<f64>,
    /// ∂BOPs/∂x, length `dim()`.
    pub grad_bops: Vec<f64>,
    /// ∂size/∂x, length `dim()`.
    pub grad_size_bits: Vec<f64>,
}

/// Kept channels `max(1, round(keep · c))` (docs/method.md §1).
#[inline]
pub fn kept_channels(keep: f64, c: usize) -> usize {
    if keep >= 1.0 {
        c
    } else {
        ((keep * c as f64).round() as usize).clamp(1, c)
    }
}

/// Kept channels of `c` channels in `blocks` equal blocks of consecutive channels, each
/// keeping the same number: `blocks · kept_channels(keep, c / blocks)` (all `c` at
/// `keep >= 1`). `blocks` must divide `c` (a space's blocks always do).
pub(crate) fn kept_in_blocks(keep: f64, c: usize, blocks: usize) -> usize {
    debug_assert!(
        blocks >= 1 && c.is_multiple_of(blocks),
        "{blocks} blocks of {c}"
    );
    if keep >= 1.0 || blocks <= 1 {
        return kept_channels(keep, c);
    }
    blocks * kept_channels(keep, c / blocks)
}

#[derive(Clone, Copy)]
pub(crate) struct LayerNums {
    n_in: usize,
    n_out: usize,
    wb: u32,
    ab: u32,
    pub(crate) macs: u64,
    pub(crate) bops: u64,
    pub(crate) size: u64,
}

impl SearchSpace {
    pub(crate) fn layer_nums(
        &self,
        t: &crate::space::Term,
        keep: &dyn Fn(usize) -> f64,
        bits: &dyn Fn(usize) -> (u32, u32),
    ) -> LayerNums {
        let n_out = kept_in_blocks(keep(t.out_dom), t.c_out_dom, t.out_blocks) * t.out_mult;
        let n_in = kept_in_blocks(keep(t.in_dom), t.c_in_dom, t.in_blocks) * t.in_mult;
        let weights: u64 = if t.follows {
            // One input channel per group: every kept output has one k_h×k_w filter.
            n_out as u64 * t.kk
        } else {
            // Blocks make both counts multiples of the groups: the division is exact.
            n_out as u64 * n_in as u64 * t.kk / t.groups as u64
        };
        let (wb, ab) = match t.unit {
            Some(u) => bits(u),
            None => (self.config().fixed_bits, self.config().fixed_bits),
        };
        let ab = if t.reads_image {
            crate::space::IMAGE_BITS
        } else {
            ab
        };
        let macs = t.hw * weights;
        let bops = macs * wb as u64 * ab as u64;
        // The integer engine's storage: each output channel's codes packed into whole bytes,
        // plus its f32 scale (and folded BatchNorm multiplier and bias).
        let cols = weights.div_ceil(n_out as u64);
        let size = n_out as u64 * (8 * (cols * wb as u64).div_ceil(8) + 32 * t.floats_per_channel);
        LayerNums {
            n_in,
            n_out,
            wb,
            ab,
            macs,
            bops,
            size,
        }
    }

    fn dom_keeps(&self, units: &[UnitPolicy]) -> Vec<f64> {
        self.dom_unit
            .iter()
            .map(|u| u.map_or(1.0, |u| 1.0 - units[u].prune))
            .collect()
    }

    fn costs_of(&self, units: &[UnitPolicy]) -> Costs {
        let keeps = self.dom_keeps(units);
        let keep = |d: usize| keeps[d];
        let bits = |u: usize| (units[u].wbits, units[u].abits);
        let mut c = Costs {
            total_macs: 0,
            total_bops: 0,
            total_size_bits: 0,
            layers: Vec::with_capacity(self.terms.len()),
        };
        for t in &self.terms {
            let n = self.layer_nums(t, &keep, &bits);
            let l = &self.spec().layers[t.layer];
            c.total_macs += n.macs;
            c.total_bops += n.bops;
            c.total_size_bits += n.size;
            c.layers.push(LayerCost {
                layer: t.layer,
                name: l.name.clone(),
                kind: t.label.clone(),
                out_shape: l.out_shape,
                keep_in: n.n_in as f64 / t.c_in as f64,
                keep_out: n.n_out as f64 / t.c_out as f64,
                c_in_kept: n.n_in,
                c_out_kept: n.n_out,
                wbits: n.wb,
                abits: n.ab,
                macs: n.macs,
                bops: n.bops,
                size_bits: n.size,
            });
        }
        c
    }

    /// Exact costs of a policy (kept channels `max(1, round((1 − p)·C))`), per weighted layer
    /// and in total. Err(InvalidPolicy) if the policy does not fit the space.
    pub fn cost(&self, p: &Policy) -> Result<Costs> {
        self.validate(p)?;
        Ok(self.costs_of(&p.units))
    }

    /// [`cost`](Self::cost) of the policy with these candidate indices.
    pub fn cost_indices(&self, idx: &[usize]) -> Result<Costs> {
        let p = self.from_indices(idx)?;
        Ok(self.costs_of(&p.units))
    }

    /// Exact totals for candidate indices, without the per-layer breakdown (fast path).
    pub fn totals_indices(&self, idx: &[usize]) -> Result<Totals> {
        self.check_indices(idx)?;
        let g = self.genes();
        let keeps: Vec<f64> = self
            .dom_unit
            .iter()
            .map(|u| {
                u.map_or(1.0, |u| {
                    let pg = self.unit_genes[u].prune;
                    1.0 - g[pg].candidates[idx[pg]]
                })
            })
            .collect();
        let keep = |d: usize| keeps[d];
        let bits = |u: usize| {
            let ug = self.unit_genes[u];
            (
                g[ug.wbits].candidates[idx[ug.wbits]] as u32,
                g[ug.abits].candidates[idx[ug.abits]] as u32,
            )
        };
        let mut t = Totals {
            macs: 0,
            bops: 0,
            size_bits: 0,
        };
        for term in &self.terms {
            let n = self.layer_nums(term, &keep, &bits);
            t.macs += n.macs;
            t.bops += n.bops;
            t.size_bits += n.size;
        }
        Ok(t)
    }

    /// The reference BOPs of `--bops-frac` (docs/method.md §2): BOPs of this space's network
    /// unpruned, with every weighted layer (searchable units and fixed layers alike) at 8-bit
    /// weights and 8-bit activations. It depends only on the network and the residual mode,
    /// never on the candidates, `fix_first`/`fix_last`, `shared_bits` or `fixed_bits`: it is
    /// counted on the same spec with prune {0}, bits {8}, `shared_bits = false` and
    /// `fixed_bits = 8`. A budget `--bops-frac f` allows `⌊f · w8a8_bops⌋` BOPs.
    ///
    /// Errors: only those of [`SearchSpace::new`] for that configuration, which cannot
    /// happen for a space that was built.
    pub fn w8a8_bops(&self) -> Result<u64> {
        let reference = SearchSpace::new(
            self.spec().clone(),
            crate::SpaceConfig {
                prune_ratios: vec![0.0],
                wbits: vec![8],
                abits: vec![8],
                shared_bits: false,
                fixed_bits: 8,
                ..self.config().clone()
            },
        )?;
        Ok(reference.totals_indices(&vec![0; reference.dim()])?.bops)
    }

    /// BOPs of the uniform policy `w{wbits}a{abits}` of this space's network, unpruned: every
    /// searchable unit at `wbits`-bit weights and `abits`-bit activations, the fixed layers at
    /// this space's `fixed_bits`, and a layer that reads the image at 8-bit activations (as
    /// [`SearchSpace::uniform`] counts it). Defined whether or not `wbits`/`abits` are
    /// candidates of the space, so that a budget `--bops-uniform w3a3` names the same number
    /// for any candidate set (docs/method.md §2). It is the BOPs of the uniform baseline the
    /// report compares against when both bit-widths are candidates.
    ///
    /// Errors: [`crate::Error::InvalidConfig`] for a bit-width [`SearchSpace::new`] refuses.
    pub fn uniform_bops(&self, wbits: u32, abits: u32) -> Result<u64> {
        let reference = SearchSpace::new(
            self.spec().clone(),
            crate::SpaceConfig {
                prune_ratios: vec![0.0],
                wbits: vec![wbits],
                abits: vec![abits],
                shared_bits: false,
                ..self.config().clone()
            },
        )?;
        Ok(reference.totals_indices(&vec![0; reference.dim()])?.bops)
    }

    /// Relaxed MACs, BOPs and size at `x` with analytic gradients (length `dim()`).
    /// Exact polynomial in `x` (bilinear in keep ratios, bilinear in bits). MACs and BOPs
    /// equal the discrete cost at candidate points when every kept channel count is integral
    /// (`(1 − p)·C / blocks` for a domain in blocks, see [`crate::Unit::blocks`]); the size
    /// there lies between the exact size and the exact size plus 7 bits per kept output
    /// channel (row padding, counted at its worst so the relaxation never under-prices a
    /// policy).
    /// Err(InvalidEncoding) for a wrong length or non-finite coordinate.
    pub fn relaxed_cost(&self, x: &[f64]) -> Result<RelaxedCost> {
        let mut out = RelaxedCost::default();
        self.relaxed_cost_into(x, &mut out)?;
        Ok(out)
    }

    /// [`relaxed_cost`](Self::relaxed_cost) writing into `out` (reuses its vectors).
    pub fn relaxed_cost_into(&self, x: &[f64], out: &mut RelaxedCost) -> Result<()> {
        self.check_x(x)?;
        let d = self.dim();
        for v in [
            &mut out.grad_macs,
            &mut out.grad_bops,
            &mut out.grad_size_bits,
        ] {
            v.clear();
            v.resize(d, 0.0);
        }
        let (mut macs, mut bops, mut size) = (0.0, 0.0, 0.0);
        for t in &self.terms {
            let fo = t.f_out.eval(x);
            let fi = t.f_in.eval(x);
            let bw = t.wb.eval(x);
            let ba = t.ab.eval(x);
            let w = t.w_full * fo * fi;
            let hw = t.hw as f64;
            let m = hw * w;
            // Per kept output channel: its f32 scale (multiplier, bias) and at most 7 bits of
            // row padding, so the relaxed size bounds the exact one from above.
            let chan_bits = (32 * t.floats_per_channel + 7) as f64 * t.c_out as f64;
            macs += m;
            bops += m * bw * ba;
            size += w * bw + chan_bits * fo;
            // ∂w/∂x through the keep factors.
            if let Some(g) = t.f_out.gene {
                let dw = -t.f_out.slope * t.w_full * fi;
                out.grad_macs[g] += hw * dw;
                out.grad_bops[g] += hw * dw * bw * ba;
                out.grad_size_bits[g] += dw * bw - chan_bits * t.f_out.slope;
            }
            if let Some(g) = t.f_in.gene {
                let dw = -t.f_in.slope * t.w_full * fo;
                out.grad_macs[g] += hw * dw;
                out.grad_bops[g] += hw * dw * bw * ba;
                out.grad_size_bits[g] += dw * bw;
            }
            if let Some(g) = t.wb.gene {
                out.grad_bops[g] += m * ba * t.wb.scale;
                out.grad_size_bits[g] += w * t.wb.scale;
            }
            if let Some(g) = t.ab.gene {
                out.grad_bops[g] += m * bw * t.ab.scale;
            }
        }
        out.macs = macs;
        out.bops = bops;
        out.size_bits = size;
        Ok(())
    }
}

fn fmt_count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Costs {
    /// A fixed-width human-readable table: one row per weighted layer, then the totals.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 9]> = vec![[
            "layer".into(),
            "kind".into(),
            "out CxHxW".into(),
            "keep in".into(),
            "keep out".into(),
            "w/a".into(),
            "MACs".into(),
            "BOPs".into(),
            "size (bits)".into(),
        ]];
        for l in &self.layers {
            rows.push([
                l.name.clone(),
                l.kind.clone(),
                format!("{}x{}x{}", l.out_shape[0], l.out_shape[1], l.out_shape[2]),
                format!("{:.3}", l.keep_in),
                format!("{:.3}", l.keep_out),
                format!("{}/{}", l.wbits, l.abits),
                fmt_count(l.macs),
                fmt_count(l.bops),
                fmt_count(l.size_bits),
            ]);
        }
        rows.push([
            "total".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            fmt_count(self.total_macs),
            fmt_count(self.total_bops),
            fmt_count(self.total_size_bits),
        ]);
        let mut width = [0usize; 9];
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut s = String::new();
        for (i, r) in rows.iter().enumerate() {
            if i == rows.len() - 1 {
                let total: usize = width.iter().sum::<usize>() + 2 * 8;
                s.push_str(&"-".repeat(total));
                s.push('\n');
            }
            let mut line = String::new();
            for (j, (c, w)) in r.iter().zip(width).enumerate() {
                if j > 0 {
                    line.push_str("  ");
                }
                // Text columns left-aligned, numbers right-aligned.
                if j < 3 {
                    line.push_str(&format!("{c:<w$}"))
                } else {
                    line.push_str(&format!("{c:>w$}"))
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}
