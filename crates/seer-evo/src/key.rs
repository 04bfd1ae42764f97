//! Compact 128-bit keys for genomes, so the set of evaluated genomes stays small.
//!
//! When the product of the cardinalities fits in 128 bits the key is the exact mixed-radix
//! number of the genome (no collisions); otherwise it is a 128-bit hash (two independent
//! SipHash digests), whose collision probability over 10^7 genomes is below 10^-23.

use std::hash::{Hash, Hasher};

/// Maps genomes to 128-bit keys for one fixed list of cardinalities.
#[derive(Debug, Clone)]
pub(crate) struct Keyer {
    cards: Vec<u128>,
    exact: bool,
}

impl Keyer {
    pub(crate) fn new(cards: &[usize]) -> Self {
        let mut prod: u128 = 1;
        let mut exact = true;
        for &c in cards {
            match prod.checked_mul(c.max(1) as u128) {
                Some(p) => prod = p,
                None => {
                    exact = false;
                    break;
                }
            }
        }
        Self {
            cards: cards.iter().map(|&c| c.max(1) as u128).collect(),
            exact,
        }
    }

    pub(crate) fn key(&self, genome: &[usize]) -> u128 {
        if self.exact {
            genome
                .iter()
                .zip(&self.cards)
                .fold(0u128, |acc, (&g, &c)| acc * c + g as u128)
        } else {
            #[allow(deprecated)]
            let mut a = std::hash::SipHasher::new_with_keys(0x5eed_0001, 0x0bad_cafe);
            #[allow(deprecated)]
            let mut b = std::hash::SipHasher::new_with_keys(0x1234_5678_9abc_def0, 0x0f0f_f0f0);
            genome.hash(&mut a);
            genome.hash(&mut b);
            ((a.finish() as u128) << 64) | b.finish() as u128
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_keys_are_distinct() {
        let k = Keyer::new(&[3, 4, 2]);
        let mut seen = std::collections::HashSet::new();
        for a in 0..3 {
            for b in 0..4 {
                for c in 0..2 {
                    assert!(seen.insert(k.key(&[a, b, c])));
                }
            }
        }
        assert_eq!(seen.len(), 24);
    }

    #[test]
    fn huge_spaces_fall_back_to_hashing() {
        let k = Keyer::new(&[1 << 20; 10]);
        assert!(!k.exact);
        assert_ne!(k.key(&[0; 10]), k.key(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
