//! [`Space`] for seer-policy's [`SearchSpace`]: exact totals and the relaxed cost with gradients.

use std::cell::RefCell;

use seer_policy::{RelaxedCost, SearchSpace};

use crate::error::BoxError;
use crate::model::{Cost, Space};

/// A seer-policy search space seen as a [`Space`] (candidate coordinates precomputed once).
#[derive(Debug)]
pub struct PolicySpace<'a> {
    space: &'a SearchSpace,
    coords: Vec<Vec<f64>>,
}

impl<'a> PolicySpace<'a> {
    /// Wraps `space`; coordinates are the docs/method.md §1 encodings of the candidates.
    pub fn new(space: &'a SearchSpace) -> Self {
        let coords = (0..space.dim()).map(|g| space.gene_coords(g)).collect();
        Self { space, coords }
    }

    /// The wrapped search space.
    pub fn inner(&self) -> &'a SearchSpace {
        self.space
    }
}

thread_local! {
    /// Reused gradient buffers of [`SearchSpace::relaxed_cost_into`] (no allocation per call).
    static SCRATCH: RefCell<RelaxedCost> = RefCell::new(RelaxedCost::default());
}

impl Space for PolicySpace<'_> {
    fn dim(&self) -> usize {
        self.coords.len()
    }

    fn coords(&self, gene: usize) -> &[f64] {
        &self.coords[gene]
    }

    fn cost(&self, idx: &[usize]) -> Result<Cost, BoxError> {
        let t = self.space.totals_indices(idx)?;
        Ok(Cost {
            bops: t.bops as f64,
            size_bits: t.size_bits as f64,
        })
    }

    fn relaxed_cost(&self, x: &[f64], gb: &mut [f64], gs: &mut [f64]) -> Result<Cost, BoxError> {
        SCRATCH.with(|s| {
            let mut r = s.borrow_mut();
            self.space.relaxed_cost_into(x, &mut r)?;
            gb.copy_from_slice(&r.grad_bops);
            gs.copy_from_slice(&r.grad_size_bits);
            Ok(Cost {
                bops: r.bops,
                size_bits: r.size_bits,
            })
        })
    }

    fn cheapest(&self) -> Vec<usize> {
        self.space.cheapest()
    }

    fn most_expensive(&self) -> Vec<usize> {
        self.space.most_expensive()
    }
}
