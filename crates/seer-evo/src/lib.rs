//! seer-evo: generic, seeded evolutionary search over discrete genomes (docs/method.md §5).
//!
//! A *genome* is one candidate index per gene (`Vec<usize>`); a [`Problem`] says how many
//! candidates each gene has, scores genomes in batches (the fitness: the predictor's
//! uncertainty when sampling policies to label, its predicted accuracy when searching under a
//! budget) and gives a genome's complexity (BOPs, size, ...). [`evolve`] runs a population with
//! top-k selection, uniform crossover, per-gene mutation and random immigrants, keeps every
//! genome inside a complexity [`Band`] (repairing or rejecting), never evaluates a genome twice
//! nor one from the caller's archive of already-labelled genomes, and evaluates fitness in
//! parallel batches (rayon). [`random_search`] is the random-sampling baseline on the same
//! machinery. Every random choice flows from [`EvoConfig::seed`] through per-task streams, so the
//! result does not depend on the number of threads.
//!
//! This crate depends on no other seer crate: the facade adapts a search space and a predictor
//! to [`Problem`].
//!
//! ```
//! use seer_evo::{evolve, Band, BoxError, EvoConfig, Problem};
//! use std::collections::HashSet;
//!
//! /// Maximise the sum of the indices while keeping that sum at most 10.
//! struct Sum { cards: Vec<usize> }
//! impl Problem for Sum {
//!     fn cardinalities(&self) -> &[usize] { &self.cards }
//!     fn fitness(&self, genomes: &[Vec<usize>]) -> Result<Vec<f64>, BoxError> {
//!         Ok(genomes.iter().map(|g| g.iter().sum::<usize>() as f64).collect())
//!     }
//!     fn complexity(&self, genome: &[usize]) -> f64 { genome.iter().sum::<usize>() as f64 }
//! }
//!
//! let problem = Sum { cards: vec![4; 6] };
//! let config = EvoConfig { generations: 30, ..EvoConfig::small(7) };
//! let out = evolve(&problem, Band::at_most(10.0), &HashSet::new(), &config).unwrap();
//! assert_eq!(out.best[0].fitness, 10.0);
//! assert!(out.best.iter().all(|s| s.complexity <= 10.0));
//! ```
#![warn(missing_docs)]

mod error;
mod key;
mod problem;
mod search;

pub use error::{BoxError, Error, Result};
pub use problem::{Band, Genome, Problem};
pub use search::{
    EvoConfig, EvoResult, GenerationStats, Scored, StopReason, evolve, random_search,
};
