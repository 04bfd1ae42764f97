//! The random streams of a compression run, in one table: every seed the pipeline and its
//! sampler use is [`Stream::seed`] of [`Config::seed`](super::Config::seed) (or, for the
//! sampler's sub-streams, of the seed the sampler was given); no other code of the facade
//! offsets a seed.
//!
//! The values are those the pipeline has always used (a default run writes the same files as
//! before the table existed), hence the mix of additive offsets and XOR masks.
//!
//! | stream | seed | used by |
//! |---|---|---|
//! | [`Stream::Baseline`] | `s` | initial weights and batches of a baseline trained by the run |
//! | [`Stream::Labels`] | `s` | labelling protocol's seed; label seed = `label_seed(it, policy hash)` |
//! | [`Stream::InitialSet`] | `s` | [`sampling::stratified`](super::sampling::stratified) for the N₀ initial labels |
//! | [`Stream::ActiveFit`]`(r)` | `s + 1000 + r` | predictor fitted before active round `r` (0-based) |
//! | [`Stream::ActiveSampler`]`(r)` | `s + 2000 + r` | [`sampling::acquire`](super::sampling::acquire) of active round `r` |
//! | [`Stream::FinalFit`] | `s + 3000` | final predictor, and the members of its cross-validation fits |
//! | [`Stream::VerifyFit`]`(v)` | `s + 4000 + v` | predictor of verification round `v` (0-based) |
//! | [`Stream::FillFit`]`(f)` | `s + 5000 + f` | predictor of fill round `f` (0-based) |
//! | [`Stream::Search`] | `s` | barrier searches (verification, choice, front) |
//! | [`Stream::QualitySplits`] | `s` | held-out splits of the predictor's cross-validation |
//! | [`Stream::FinalFinetune`] | `s ^ 0xF1A1` | final fine-tunes; per policy `label_seed(it, policy hash)` |
//! | [`Stream::StratifiedDraws`] | `t ^ 0x5747A7` | the draws of `stratified(.., t, ..)` |
//! | [`Stream::RandomAcquisition`] | `t ^ 0x4A4D` | `acquire(Random, .., t)`: the seed it gives `stratified` |
//! | [`Stream::SamplerStratum`]`(i)` | `t + i · 0x9E37` | `acquire(Std/Counterfactual, .., t)`: evolutionary run of stratum `i` |
//! | [`Stream::SamplerFill`] | `t ^ 0xF111` | `acquire(.., t)`: the run that fills strata left empty |
//! | [`Stream::PoolDraws`] | `t ^ 0x9001` | `acquire(Pool or Bands, .., t)`: the random draws of its candidate pools |
//! | [`Stream::RandomMethod`] | `s ^ 0x5A4D` | `--method random`: its draws of random policies |
//! | [`Stream::Sensitivity`] | `s ^ 0xF157` | `--method fit-ilp`: the order of the images of its Fisher estimate |
//!
//! `s` = [`Config::seed`](super::Config::seed); `t` = the seed given to the sampling function;
//! additions wrap modulo 2⁶⁴. Streams that share a value (the `= s` ones; [`Stream::FinalFit`]
//! for the final fit and the cross-validation members) drive different generators.
//!
//! ```
//! use seernet::pipeline::Stream;
//! assert_eq!(Stream::ActiveFit(2).seed(42), 1044);
//! assert_eq!(Stream::FinalFinetune.seed(0), 0xF1A1);
//! ```

/// One random stream of a run (see the [module docs](self) for the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Weights and batches of a baseline trained by the run: `s`.
    Baseline,
    /// The labelling protocol's seed (each label's seed derives from it and the policy hash): `s`.
    Labels,
    /// The stratified initial set: `s`.
    InitialSet,
    /// The predictor fitted before active round `r` (0-based): `s + 1000 + r`.
    ActiveFit(usize),
    /// The acquisition of active round `r` (0-based): `s + 2000 + r`.
    ActiveSampler(usize),
    /// The final predictor and the member seed of its cross-validation: `s + 3000`.
    FinalFit,
    /// The predictor of verification round `v` (0-based): `s + 4000 + v`.
    VerifyFit(usize),
    /// The predictor of fill round `f` (0-based): `s + 5000 + f`.
    FillFit(usize),
    /// Every barrier search of the run: `s`.
    Search,
    /// The held-out splits of the predictor's cross-validation: `s`.
    QualitySplits,
    /// The final fine-tunes (per policy, `label_seed` of it and the policy hash): `s ^ 0xF1A1`.
    FinalFinetune,
    /// The random draws of [`stratified`](super::sampling::stratified) given `t`: `t ^ 0x5747A7`.
    StratifiedDraws,
    /// The seed random acquisition given `t` passes to `stratified`: `t ^ 0x4A4D`.
    RandomAcquisition,
    /// The evolutionary run of stratum `i` of an acquisition given `t`: `t + i · 0x9E37`.
    SamplerStratum(usize),
    /// The evolutionary run that fills an acquisition's empty strata, given `t`: `t ^ 0xF111`.
    SamplerFill,
    /// The random candidates of a pool or bands acquisition given `t`: `t ^ 0x9001`.
    PoolDraws,
    /// `--method random`'s draws of random policies: `s ^ 0x5A4D`.
    RandomMethod,
    /// `--method fit-ilp`'s image order for the Fisher estimate: `s ^ 0xF157`.
    Sensitivity,
}

impl Stream {
    /// This stream's seed from `base` (`Config::seed`, or the sampler's seed for the sampler's
    /// sub-streams; see the [module docs](self)).
    pub fn seed(self, base: u64) -> u64 {
        match self {
            Self::Baseline
            | Self::Labels
            | Self::InitialSet
            | Self::Search
            | Self::QualitySplits => base,
            Self::ActiveFit(r) => base.wrapping_add(1000 + r as u64),
            Self::ActiveSampler(r) => base.wrapping_add(2000 + r as u64),
            Self::FinalFit => base.wrapping_add(3000),
            Self::VerifyFit(v) => base.wrapping_add(4000 + v as u64),
            Self::FillFit(f) => base.wrapping_add(5000 + f as u64),
            Self::FinalFinetune => base ^ 0xF1A1,
            Self::StratifiedDraws => base ^ 0x0057_47A7,
            Self::RandomAcquisition => base ^ 0x4a4d,
            Self::SamplerStratum(i) => base.wrapping_add(i as u64 * 0x9e37),
            Self::SamplerFill => base ^ 0xf111,
            Self::PoolDraws => base ^ 0x9001,
            Self::RandomMethod => base ^ 0x5a4d,
            Self::Sensitivity => base ^ 0xf157,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stream::*;

    /// Every stream's value for seeds 0 and 42, pinned to the formulas the pipeline used before
    /// the table (literal values; the formula beside each): changing one changes every run.
    #[test]
    fn values_are_pinned_to_the_historical_formulas() {
        let cases: [(super::Stream, u64, u64); 25] = [
            (Baseline, 0, 42),
            (Labels, 0, 42),
            (InitialSet, 0, 42),
            (Search, 0, 42),
            (QualitySplits, 0, 42),
            (ActiveFit(0), 1000, 1042),            // s + 1000 + r
            (ActiveFit(2), 1002, 1044),            // s + 1000 + r
            (ActiveSampler(0), 2000, 2042),        // s + 2000 + r
            (ActiveSampler(2), 2002, 2044),        // s + 2000 + r
            (FinalFit, 3000, 3042),                // s + 3000
            (VerifyFit(0), 4000, 4042),            // s + 4000 + v
            (VerifyFit(1), 4001, 4043),            // s + 4000 + v
            (FillFit(0), 5000, 5042),              // s + 5000 + f
            (FillFit(1), 5001, 5043),              // s + 5000 + f
            (FinalFinetune, 0xF1A1, 0xF18B),       // s ^ 0xF1A1
            (StratifiedDraws, 0x5747A7, 0x57478D), // t ^ 0x5747A7
            (RandomAcquisition, 0x4A4D, 0x4A67),   // t ^ 0x4A4D
            (SamplerStratum(0), 0, 42),            // t + i * 0x9E37
            (SamplerStratum(1), 0x9E37, 0x9E61),   // t + i * 0x9E37
            (SamplerStratum(3), 3 * 0x9E37, 3 * 0x9E37 + 42),
            (SamplerFill, 0xF111, 0xF13B), // t ^ 0xF111
            (ActiveFit(9), 1009, 1051),
            (RandomMethod, 0x5A4D, 0x5A67), // s ^ 0x5A4D
            (Sensitivity, 0xF157, 0xF17D),  // s ^ 0xF157
            (PoolDraws, 0x9001, 0x902B),    // t ^ 0x9001
        ];
        for (s, at0, at42) in cases {
            assert_eq!((s.seed(0), s.seed(42)), (at0, at42), "{s:?}");
        }
        // The formulas themselves, including wrap-around at the top of u64.
        for base in [0u64, 42, 7, u64::MAX - 1500] {
            for i in 0..4usize {
                let i64_ = i as u64;
                assert_eq!(ActiveFit(i).seed(base), base.wrapping_add(1000 + i64_));
                assert_eq!(ActiveSampler(i).seed(base), base.wrapping_add(2000 + i64_));
                assert_eq!(VerifyFit(i).seed(base), base.wrapping_add(4000 + i64_));
                assert_eq!(
                    SamplerStratum(i).seed(base),
                    base.wrapping_add(i64_ * 0x9e37)
                );
            }
            assert_eq!(FinalFit.seed(base), base.wrapping_add(3000));
            assert_eq!(FinalFinetune.seed(base), base ^ 0xF1A1);
            assert_eq!(StratifiedDraws.seed(base), base ^ 0x0057_47A7);
            assert_eq!(RandomAcquisition.seed(base), base ^ 0x4a4d);
            assert_eq!(SamplerFill.seed(base), base ^ 0xf111);
        }
    }
}
