//! Mini-batches: normalisation, augmentation (random crop with zero padding, horizontal flip
//! where the dataset allows it) and parallel assembly, deterministic from a seed.
//!
//! Every random choice for the image at position `p` of epoch `e` comes from its own
//! `ChaCha8Rng` seeded with `mix(seed, e, p)`, so results do not depend on thread count or
//! scheduling (parallel work is seeded per task index, never per thread).

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::Dataset;

/// Per-channel normalisation `x = (p/255 − mean_c) / std_c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// `1 / (255 · std_c)` per channel.
    scale: Vec<f32>,
    /// `−mean_c / std_c` per channel.
    shift: Vec<f32>,
}

impl Normalize {
    /// From mean and std of pixels in [0, 1] (one value per channel).
    pub fn new(mean: &[f64], std: &[f64]) -> Self {
        Self {
            scale: std
                .iter()
                .map(|s| (1.0 / (255.0 * s.max(1e-8))) as f32)
                .collect(),
            shift: mean
                .iter()
                .zip(std)
                .map(|(m, s)| (-m / s.max(1e-8)) as f32)
                .collect(),
        }
    }
    /// Identity-like scaling `p/255` for every one of `c` channels.
    pub fn unit(c: usize) -> Self {
        Self::new(&vec![0.0; c], &vec![1.0; c])
    }
    /// Normalises one pixel of channel `c`.
    #[inline]
    pub fn apply(&self, c: usize, p: u8) -> f32 {
        p as f32 * self.scale[c] + self.shift[c]
    }
}

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Random crop: pad each side with `pad` zero pixels, crop back at a random offset.
    pub pad: usize,
    /// Flip horizontally with probability 1/2 (only for datasets where that keeps labels).
    pub hflip: bool,
}

/// One assembled batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[n, C, H, W]` normalised pixels, row-major.
    pub x: Vec<f32>,
    /// `[n]` labels.
    pub y: Vec<u32>,
    /// Number of images.
    pub n: usize,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
}

/// SplitMix64 finaliser, used to derive independent seeds.
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Iterates over the batches of one epoch.
#[derive(Debug)]
pub struct BatchIter<'a> {
    data: &'a Dataset,
    order: Vec<u32>,
    batch: usize,
    pos: usize,
    norm: Normalize,
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
    drop_last: bool,
}

impl<'a> BatchIter<'a> {
    /// Batches of `data` in order (evaluation): no shuffling, no augmentation.
    pub fn sequential(data: &'a Dataset, batch: usize, norm: Normalize) -> Self {
        Self {
            data,
            order: (0..data.len() as u32).collect(),
            batch: batch.max(1),
            pos: 0,
            norm,
            augment: None,
            seed: 0,
            epoch: 0,
            drop_last: false,
        }
    }

    /// Shuffled (and optionally augmented) batches for `epoch`, all randomness from
    /// `seed`; incomplete last batch dropped when `drop_last`.
    pub fn shuffled(
        data: &'a Dataset,
        batch: usize,
        norm: Normalize,
        augment: Option<Augment>,
        seed: u64,
        epoch: u64,
        drop_last: bool,
    ) -> Self {
        let mut order: Vec<u32> = (0..data.len() as u32).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, epoch, u64::MAX)));
        Self {
            data,
            order,
            batch: batch.max(1),
            pos: 0,
            norm,
            augment,
            seed,
            epoch,
            drop_last,
        }
    }

    /// Number of batches this iterator yields in total.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch
        } else {
            n.div_ceil(self.batch)
        }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n_total = self.order.len();
        if self.pos >= n_total || (self.drop_last && self.pos + self.batch > n_total) {
            return None;
        }
        let end = (self.pos + self.batch).min(n_total);
        let idx = &self.order[self.pos..end];
        let start = self.pos;
        self.pos = end;
        let [c, h, w] = self.data.shape;
        let per = c * h * w;
        let mut x = vec![0f32; idx.len() * per];
        let (data, norm, aug, seed, epoch) =
            (self.data, &self.norm, self.augment, self.seed, self.epoch);
        x.par_chunks_mut(per).enumerate().for_each(|(k, out)| {
            let img = data.image(idx[k] as usize);
            let (mut dy, mut dx, mut flip) = (0isize, 0isize, false);
            if let Some(a) = aug {
                let mut r = ChaCha8Rng::seed_from_u64(mix(seed, epoch, (start + k) as u64));
                let p = a.pad as i64;
                dy = r.random_range(-p..=p) as isize;
                dx = r.random_range(-p..=p) as isize;
                flip = a.hflip && r.random_bool(0.5);
            }
            for ch in 0..c {
                let zero = norm.apply(ch, 0);
                for yy in 0..h {
                    let sy = yy as isize + dy;
                    for xx in 0..w {
                        let ox = if flip { w - 1 - xx } else { xx };
                        let sx = ox as isize + dx;
                        let v = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                            norm.apply(ch, img[ch * h * w + sy as usize * w + sx as usize])
                        } else {
                            zero
                        };
                        out[ch * h * w + yy * w + xx] = v;
                    }
                }
            }
        });
        let y = idx
            .iter()
            .map(|&i| self.data.labels[i as usize] as u32)
            .collect();
        Some(Batch {
            x,
            y,
            n: idx.len(),
            shape: self.data.shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Dataset {
        let images: Vec<u8> = (0..n * 2 * 5 * 4).map(|i| (i * 7 % 251) as u8).collect();
        Dataset::new(
            [2, 5, 4],
            10,
            images,
            (0..n).map(|i| (i % 10) as u8).collect(),
        )
        .unwrap()
    }

    #[test]
    fn sequential_normalises_in_order() {
        let d = data(7);
        let norm = Normalize::new(&[0.5, 0.25], &[0.5, 2.0]);
        let b: Vec<Batch> = BatchIter::sequential(&d, 3, norm.clone()).collect();
        assert_eq!(b.iter().map(|b| b.n).collect::<Vec<_>>(), vec![3, 3, 1]);
        let p = d.image(4)[20 + 3]; // channel 1, pixel 3
        let want = (p as f32 / 255.0 - 0.25) / 2.0;
        assert!((b[1].x[40 + 20 + 3] - want).abs() < 1e-6);
        assert_eq!(b[2].y, vec![6]);
    }

    #[test]
    fn shuffled_is_deterministic_and_a_permutation() {
        let d = data(50);
        let aug = Some(Augment {
            pad: 1,
            hflip: true,
        });
        let run = |seed| -> Vec<Batch> {
            BatchIter::shuffled(&d, 8, Normalize::unit(2), aug, seed, 3, false).collect()
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a, run(6));
        let mut ys: Vec<u32> = a.iter().flat_map(|b| b.y.clone()).collect();
        ys.sort();
        let mut want: Vec<u32> = d.labels.iter().map(|&l| l as u32).collect();
        want.sort();
        assert_eq!(ys, want);
        let it = BatchIter::shuffled(&d, 8, Normalize::unit(2), None, 0, 0, true);
        assert_eq!(it.num_batches(), 6);
        assert_eq!(it.count(), 6);
    }

    #[test]
    fn crop_shifts_and_pads_with_zero() {
        let d = Dataset::new([1, 3, 3], 2, (1..=9).collect(), vec![0]).unwrap();
        let first = |pad: usize, hflip: bool, seed: u64| {
            let aug = Some(Augment { pad, hflip });
            let norm = Normalize::new(&[0.0], &[1.0 / 255.0]);
            BatchIter::shuffled(&d, 1, norm, aug, seed, 0, false)
                .next()
                .unwrap()
        };
        // with pad 0 and flip only, a flipped row is reversed
        let mut flipped = false;
        for seed in 0..20 {
            let b = first(0, true, seed);
            if b.x[..3] == [3.0, 2.0, 1.0] {
                flipped = true;
            } else {
                assert_eq!(&b.x[..3], &[1.0, 2.0, 3.0]);
            }
        }
        assert!(flipped);
        let mut saw_zero = false;
        for seed in 0..20 {
            let b = first(1, false, seed);
            saw_zero |= b.x.contains(&0.0);
            assert!(b.x.contains(&5.0)); // centre pixel always stays in view with pad 1
        }
        assert!(saw_zero);
    }
}
