//! Complexity budgets of the main job: `--max-bops 5M`, `--max-size 40KB`, `--bops-frac 0.1`,
//! `--bops-uniform w3a3`.
//!
//! Units (documented once, used everywhere):
//! - **BOPs** (`--max-bops`): a plain number or an SI suffix, `K` = 10³, `M` = 10⁶, `G` = 10⁹,
//!   `T` = 10¹² (case-insensitive), or scientific notation (`5e6`). The result must be a whole
//!   number of BOPs.
//! - **Model size** (`--max-size`): given in **bytes** and converted to bits (× 8), as docs/method.md §2
//!   counts size in bits. `B` = 1 byte, SI `KB`/`MB`/`GB` = 10³/10⁶/10⁹ bytes (`kB` accepted),
//!   binary `KiB`/`MiB`/`GiB` = 2¹⁰/2²⁰/2³⁰ bytes. A bare number means bytes. A lowercase `b`
//!   (`40Kb`, bits by SI convention) and a bare `K`/`M`/`G` are refused as ambiguous. The result
//!   must be a whole number of bytes.
//! - **Relative** (`--bops-frac`): a fraction in (0, 1] of the BOPs of the unpruned network at
//!   w8a8 (every unit at 8-bit weights and activations), or a percentage (`10%`). It is resolved
//!   against that figure with [`Budget::resolve`], rounding down so the budget never exceeds
//!   the fraction.
//! - **Uniform-equivalent** (`--bops-uniform`): `wXaY`, the BOPs of the unpruned network with
//!   every searchable unit at X-bit weights and Y-bit activations
//!   ([`SearchSpace::uniform_bops`]): the budget at which mixed precision and pruning compete
//!   with uniform wXaY (HAWQ-V3, HAQ, AIMET AMP and NNCF compare at such budgets). Label
//!   `bops-wXaY`.
//!
//! Several budgets may be given at once (each flag repeats and takes comma-separated lists);
//! each is its own target, and its [`Budget::label`] names its output files
//! (`policy-<label>.json`, `model-<label>.safetensors`).
//!
//! ```
//! use seer_policy::budget::{Budget, BudgetKind};
//! let b = Budget::parse_max_size("40KiB").unwrap();
//! assert_eq!(b.kind, BudgetKind::MaxSizeBits(40 * 1024 * 8));
//! assert_eq!(b.label, "size-40KiB");
//! use seer_policy::{SearchSpace, SpaceConfig, builtin};
//! let space = SearchSpace::new(builtin("lenet5", None, None)?, SpaceConfig::default())?;
//! let w8a8 = space.w8a8_bops()?;
//! let f = Budget::parse_bops_frac("10%")?.resolve(&space)?;
//! assert_eq!(f.max_bops, Some(w8a8 / 10));
//! let u = Budget::parse_bops_uniform("w4a4")?;
//! assert_eq!(u.label, "bops-w4a4");
//! assert_eq!(u.resolve(&space)?.max_bops, Some(space.uniform_bops(4, 4)?));
//! # Ok::<(), seer_policy::Error>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SearchSpace;
use crate::error::{Error, Result};

/// What one budget constrains.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum BudgetKind {
    /// At most this many BOPs (docs/method.md §2).
    MaxBops(u64),
    /// At most this many bits of model size (docs/method.md §2; parsed from bytes × 8).
    MaxSizeBits(u64),
    /// At most this fraction (0, 1] of the unpruned network's w8a8 BOPs.
    BopsFrac(f64),
    /// At most the BOPs of the unpruned network at uniform `w{wbits}a{abits}`
    /// ([`SearchSpace::uniform_bops`]).
    BopsUniform {
        /// Weight bit-width of the reference uniform policy.
        wbits: u32,
        /// Activation bit-width of the reference uniform policy.
        abits: u32,
    },
}

/// One budget with its file-name label (`[A-Za-z0-9.-]` only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The constraint.
    pub kind: BudgetKind,
    /// Canonical label: `bops-5M`, `size-40KB`, `size-40KiB`, `frac-0.1`, `bops-w3a3`. Equal budgets written
    /// differently (`5000K`, `5M`) get the same label.
    pub label: String,
}

/// A budget resolved to absolute limits (what the search takes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedBudget {
    /// The budget's label (see [`Budget::label`]).
    pub label: String,
    /// The budget as the user gave it.
    pub kind: BudgetKind,
    /// BOPs limit, if this budget limits BOPs.
    pub max_bops: Option<u64>,
    /// Model-size limit in bits, if this budget limits size.
    pub max_size_bits: Option<u64>,
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

fn bad(flag: &str, value: &str, msg: impl Into<String>) -> Error {
    Error::Budget {
        flag: flag.to_string(),
        value: value.to_string(),
        msg: msg.into(),
    }
}

/// An exact decimal `mantissa · 10^exp10` parsed from text like `5`, `5.25`, `1e6`, `2.5E-1`.
fn parse_decimal(s: &str) -> Option<(u128, i32)> {
    let (num, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = match num.split_once('.') {
        Some((a, b)) => (a, b),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return None;
    }
    let m: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let e = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    if !(-60..=60).contains(&e) {
        return None;
    }
    Some((m, e))
}

/// `mantissa · 10^exp10 · mult` as an exact integer, or None when it is not whole or overflows.
fn exact_integer(m: u128, e: i32, mult: u128) -> Option<u128> {
    let mut v = m.checked_mul(mult)?;
    if e >= 0 {
        for _ in 0..e {
            v = v.checked_mul(10)?;
        }
    } else {
        for _ in 0..(-e) {
            if v % 10 != 0 {
                return None;
            }
            v /= 10;
        }
    }
    Some(v)
}

/// Splits `"40 KiB"` into `("40", "KiB")`.
fn split_suffix(s: &str) -> (&str, &str) {
    let s = s.trim();
    // The number ends at the first char that cannot belong to a decimal (an `e` followed by a
    // digit or sign is an exponent).
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let exp = (c == b'e' || c == b'E')
            && i + 1 < b.len()
            && (b[i + 1].is_ascii_digit()
                || ((b[i + 1] == b'-' || b[i + 1] == b'+')
                    && i + 2 < b.len()
                    && b[i + 2].is_ascii_digit()));
        if c.is_ascii_digit() || c == b'.' {
            i += 1;
        } else if exp {
            i += 2;
        } else {
            break;
        }
    }
    (&s[..i], s[i..].trim())
}

/// Shortest `value / unit` with at most 3 decimals, e.g. (5_500_000, 1e6) -> Some("5.5").
fn short(value: u128, unit: u128) -> Option<String> {
    let scaled = value.checked_mul(1000)?;
    if scaled % unit != 0 {
        return None;
    }
    let milli = scaled / unit;
    let (int, frac) = (milli / 1000, milli % 1000);
    if frac == 0 {
        Some(int.to_string())
    } else {
        Some(format!(
            "{int}.{}",
            format!("{frac:03}").trim_end_matches('0')
        ))
    }
}

/// Label text for `value` with the largest unit (from `units`, largest first) that writes it with
/// at most 3 decimals and a non-zero integer part.
fn canonical(value: u128, units: &[(u128, &str)], plain: &str) -> String {
    for &(u, name) in units {
        if let Some(s) = short(value, u).filter(|_| value >= u) {
            return format!("{s}{name}");
        }
    }
    format!("{value}{plain}")
}

impl Budget {
    /// Parses a `--max-bops` value: `5M`, `5000K`, `1.5G`, `5e6`, `123456`.
    /// Err(Budget) names the flag and value for an unknown suffix, a fraction of a BOP, zero,
    /// or a value beyond u64.
    pub fn parse_max_bops(s: &str) -> Result<Budget> {
        let flag = "--max-bops";
        let (num, suf) = split_suffix(s);
        let (m, e) = parse_decimal(num).ok_or_else(|| {
            bad(
                flag,
                s,
                "expected a number with an optional K/M/G/T suffix, e.g. 5M",
            )
        })?;
        let mult: u128 = match suf.to_ascii_uppercase().as_str() {
            "" => 1,
            "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => {
                return Err(bad(
                    flag,
                    s,
                    format!("unknown suffix '{suf}': use K (1e3), M (1e6), G (1e9) or T (1e12)"),
                ));
            }
        };
        let v = exact_integer(m, e, mult)
            .ok_or_else(|| bad(flag, s, "not a whole number of BOPs (or too large)"))?;
        let v = u64::try_from(v).map_err(|_| bad(flag, s, "too large (beyond 2^64)"))?;
        if v == 0 {
            return Err(bad(flag, s, "a budget of 0 BOPs admits no policy"));
        }
        let units = [
            (1_000_000_000_000u128, "T"),
            (1_000_000_000, "G"),
            (1_000_000, "M"),
            (1_000, "K"),
        ];
        Ok(Budget {
            kind: BudgetKind::MaxBops(v),
            label: format!("bops-{}", canonical(v as u128, &units, "")),
        })
    }

    /// Parses a `--max-size` value in bytes (`40KB`, `40KiB`, `1.5MB`, `40000`, `512B`) into bits.
    /// Err(Budget) for an ambiguous or unknown suffix, a fraction of a byte, zero, or overflow.
    pub fn parse_max_size(s: &str) -> Result<Budget> {
        let flag = "--max-size";
        let (num, suf) = split_suffix(s);
        let (m, e) = parse_decimal(num)
            .ok_or_else(|| bad(flag, s, "expected a size in bytes, e.g. 40KB or 40KiB"))?;
        let (mult, binary): (u128, bool) = match suf {
            "" | "B" => (1, false),
            "KB" | "kB" => (1_000, false),
            "MB" => (1_000_000, false),
            "GB" => (1_000_000_000, false),
            "KiB" | "kiB" => (1 << 10, true),
            "MiB" => (1 << 20, true),
            "GiB" => (1 << 30, true),
            x if x.ends_with('b') => {
                return Err(bad(
                    flag,
                    s,
                    "a lowercase 'b' means bits; sizes are given in bytes: use B, KB (1000 B) or KiB (1024 B)",
                ));
            }
            "K" | "k" | "M" | "G" => {
                return Err(bad(
                    flag,
                    s,
                    format!(
                        "'{suf}' is ambiguous: write {suf}B (SI, powers of 1000) or {suf}iB (binary, powers of 1024)"
                    ),
                ));
            }
            _ => {
                return Err(bad(
                    flag,
                    s,
                    format!(
                        "unknown suffix '{suf}': use B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024)"
                    ),
                ));
            }
        };
        let bytes = exact_integer(m, e, mult)
            .ok_or_else(|| bad(flag, s, "not a whole number of bytes (or too large)"))?;
        let bits = bytes
            .checked_mul(8)
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| bad(flag, s, "too large"))?;
        if bits == 0 {
            return Err(bad(flag, s, "a budget of 0 bytes admits no policy"));
        }
        let label = if binary {
            canonical(
                bytes,
                &[(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")],
                "B",
            )
        } else {
            canonical(
                bytes,
                &[(1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "KB")],
                "B",
            )
        };
        Ok(Budget {
            kind: BudgetKind::MaxSizeBits(bits),
            label: format!("size-{label}"),
        })
    }

    /// Parses a `--bops-frac` value: a fraction in (0, 1] (`0.1`) or a percentage (`10%`).
    /// Err(Budget) for NaN, ≤ 0, > 1 (e.g. `10` meant as 10%), or a non-number.
    pub fn parse_bops_frac(s: &str) -> Result<Budget> {
        let flag = "--bops-frac";
        let t = s.trim();
        let (num, pct) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        let v: f64 = num.parse().map_err(|_| {
            bad(
                flag,
                s,
                "expected a fraction such as 0.1 or a percentage such as 10%",
            )
        })?;
        let f = if pct { v / 100.0 } else { v };
        if !f.is_finite() || f <= 0.0 {
            return Err(bad(flag, s, "must be a positive fraction of the w8a8 BOPs"));
        }
        if f > 1.0 {
            return Err(bad(
                flag,
                s,
                "is a fraction of the unpruned w8a8 BOPs and must be at most 1 (0.1 = 10%; or write 10%)",
            ));
        }
        Ok(Budget {
            kind: BudgetKind::BopsFrac(f),
            label: format!("frac-{f}"),
        })
    }

    /// Parses a `--bops-uniform` value `wXaY` (`w3a3`, `W4A8`): the BOPs of the unpruned
    /// network at uniform X-bit weights and Y-bit activations. Err(Budget) for another form or
    /// a bit-width outside 1..=16.
    pub fn parse_bops_uniform(s: &str) -> Result<Budget> {
        let flag = "--bops-uniform";
        let t = s.trim().to_ascii_lowercase();
        let form = || {
            bad(
                flag,
                s,
                "expected wXaY, e.g. w3a3 (3-bit weights, 3-bit activations)",
            )
        };
        let rest = t.strip_prefix('w').ok_or_else(form)?;
        let (w, a) = rest.split_once('a').ok_or_else(form)?;
        let parse = |x: &str| -> Result<u32> {
            let v: u32 = x.parse().map_err(|_| form())?;
            if (1..=16).contains(&v) {
                Ok(v)
            } else {
                Err(bad(flag, s, format!("bit-width {v} is outside 1..=16")))
            }
        };
        let (wbits, abits) = (parse(w)?, parse(a)?);
        Ok(Budget {
            kind: BudgetKind::BopsUniform { wbits, abits },
            label: format!("bops-w{wbits}a{abits}"),
        })
    }

    /// Absolute limits against `space`'s network: `BopsFrac(f)` becomes `max_bops = ⌊f ·
    /// w8a8⌋` ([`SearchSpace::w8a8_bops`]), `BopsUniform` the BOPs of that uniform policy
    /// ([`SearchSpace::uniform_bops`]), absolute budgets stay as given (docs/method.md §2).
    ///
    /// Errors: those of [`SearchSpace::w8a8_bops`] / [`SearchSpace::uniform_bops`].
    pub fn resolve(&self, space: &SearchSpace) -> Result<ResolvedBudget> {
        let (max_bops, max_size_bits) = match self.kind {
            BudgetKind::MaxBops(b) => (Some(b), None),
            BudgetKind::MaxSizeBits(b) => (None, Some(b)),
            BudgetKind::BopsFrac(f) => (Some((f * space.w8a8_bops()? as f64).floor() as u64), None),
            BudgetKind::BopsUniform { wbits, abits } => {
                (Some(space.uniform_bops(wbits, abits)?), None)
            }
        };
        Ok(ResolvedBudget {
            label: self.label.clone(),
            kind: self.kind,
            max_bops,
            max_size_bits,
        })
    }
}

impl ResolvedBudget {
    /// `policy-<label>.json`: the chosen policy's file name in the run directory.
    pub fn policy_file(&self) -> String {
        format!("policy-{}.json", self.label)
    }
    /// `model-<label>.safetensors`: the exported model's file name in the run directory.
    pub fn model_file(&self) -> String {
        format!("model-{}.safetensors", self.label)
    }
    /// Whether costs `(bops, size_bits)` are within every limit of this budget.
    pub fn admits(&self, bops: u64, size_bits: u64) -> bool {
        self.max_bops.is_none_or(|b| bops <= b) && self.max_size_bits.is_none_or(|s| size_bits <= s)
    }
}

/// All budgets from the four flags' values (each value may be a comma-separated list), in the
/// order BOPs, size, fraction, uniform-equivalent. Err(Budget) for a bad value or the same budget twice; Err(NoBudget)
/// when none is given.
pub fn parse_budgets(
    max_bops: &[String],
    max_size: &[String],
    bops_frac: &[String],
    bops_uniform: &[String],
) -> Result<Vec<Budget>> {
    let mut out: Vec<Budget> = Vec::new();
    type Parser = fn(&str) -> Result<Budget>;
    let groups: [(&[String], Parser); 4] = [
        (max_bops, Budget::parse_max_bops),
        (max_size, Budget::parse_max_size),
        (bops_frac, Budget::parse_bops_frac),
        (bops_uniform, Budget::parse_bops_uniform),
    ];
    for (values, parse) in groups {
        for v in values.iter().flat_map(|v| v.split(',')) {
            let b = parse(v)?;
            if out.iter().any(|o| o.label == b.label) {
                return Err(Error::Budget {
                    flag: "budgets".into(),
                    value: v.to_string(),
                    msg: format!("budget {} is given twice", b.label),
                });
            }
            out.push(b);
        }
    }
    if out.is_empty() {
        return Err(Error::NoBudget);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bops(s: &str) -> u64 {
        match Budget::parse_max_bops(s).unwrap().kind {
            BudgetKind::MaxBops(v) => v,
            k => panic!("{k:?}"),
        }
    }
    fn size_bits(s: &str) -> u64 {
        match Budget::parse_max_size(s).unwrap().kind {
            BudgetKind::MaxSizeBits(v) => v,
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn bops_suffixes() {
        assert_eq!(bops("5M"), 5_000_000);
        assert_eq!(bops("5m"), 5_000_000);
        assert_eq!(bops("5000K"), 5_000_000);
        assert_eq!(bops("1.5G"), 1_500_000_000);
        assert_eq!(bops("1.1G"), 1_100_000_000);
        assert_eq!(bops("5e6"), 5_000_000);
        assert_eq!(bops(" 2.5 M "), 2_500_000);
        assert_eq!(bops("123456"), 123_456);
        assert_eq!(bops("0.000001T"), 1_000_000);
        assert_eq!(Budget::parse_max_bops("5000K").unwrap().label, "bops-5M");
        assert_eq!(Budget::parse_max_bops("5.5M").unwrap().label, "bops-5.5M");
        assert_eq!(Budget::parse_max_bops("1234").unwrap().label, "bops-1.234K");
        assert_eq!(
            Budget::parse_max_bops("1234567").unwrap().label,
            "bops-1234.567K"
        );
        assert_eq!(Budget::parse_max_bops("999").unwrap().label, "bops-999");
    }

    #[test]
    fn size_suffixes() {
        assert_eq!(size_bits("40KB"), 40_000 * 8);
        assert_eq!(size_bits("40kB"), 40_000 * 8);
        assert_eq!(size_bits("40KiB"), 40 * 1024 * 8);
        assert_eq!(size_bits("1.5MiB"), 3 * 512 * 1024 * 8);
        assert_eq!(size_bits("2MB"), 2_000_000 * 8);
        assert_eq!(size_bits("512"), 512 * 8);
        assert_eq!(size_bits("512B"), 512 * 8);
        assert_eq!(Budget::parse_max_size("40KiB").unwrap().label, "size-40KiB");
        assert_eq!(
            Budget::parse_max_size("40960B").unwrap().label,
            "size-40.96KB"
        );
        assert_eq!(Budget::parse_max_size("0.04MB").unwrap().label, "size-40KB");
        assert_eq!(Budget::parse_max_size("100").unwrap().label, "size-100B");
    }

    /// ResNet-20 at 32×32×3, every layer searchable, with candidates lacking 8 bits and prune
    /// 0: its w8a8 reference is still 40,551,040 MACs × 64.
    fn resnet20_space() -> SearchSpace {
        use crate::{SpaceConfig, builtin};
        let spec = builtin("resnet20", Some("32x32x3".parse().unwrap()), None).unwrap();
        let cfg = SpaceConfig {
            prune_ratios: vec![0.25, 0.5],
            wbits: vec![2, 4],
            abits: vec![2, 4],
            fix_first: false,
            fix_last: false,
            ..SpaceConfig::default()
        };
        SearchSpace::new(spec, cfg).unwrap()
    }

    #[test]
    fn frac() {
        let space = resnet20_space();
        let b = Budget::parse_bops_frac("0.1").unwrap();
        assert_eq!(b.label, "frac-0.1");
        assert_eq!(b.resolve(&space).unwrap().max_bops, Some(259_526_656));
        assert_eq!(Budget::parse_bops_frac("10%").unwrap().label, "frac-0.1");
        let r = Budget::parse_max_size("1KB")
            .unwrap()
            .resolve(&space)
            .unwrap();
        assert_eq!((r.max_bops, r.max_size_bits), (None, Some(8000)));
        let r = Budget::parse_max_bops("5M")
            .unwrap()
            .resolve(&space)
            .unwrap();
        assert_eq!((r.max_bops, r.max_size_bits), (Some(5_000_000), None));
    }

    /// `--bops-uniform wXaY` resolves to the BOPs of that uniform policy: by hand, Σ MACs ·
    /// w · a over the layers, the first conv reading the 8-bit image. ResNet-20 at 32×32×3:
    /// the first conv has 3·16·9·32·32 = 442,368 MACs, the rest 40,108,672.
    #[test]
    fn uniform_equivalent() {
        let space = resnet20_space();
        let first = 442_368u64;
        let rest = 40_551_040u64 - first;
        for (w, a) in [(2u32, 2u32), (3, 3), (4, 4), (4, 8), (8, 8)] {
            let b = Budget::parse_bops_uniform(&format!("w{w}a{a}")).unwrap();
            assert_eq!(b.label, format!("bops-w{w}a{a}"));
            let want = first * u64::from(w) * 8 + rest * u64::from(w * a);
            assert_eq!(b.resolve(&space).unwrap().max_bops, Some(want), "w{w}a{a}");
        }
        // w8a8 is the --bops-frac reference.
        assert_eq!(
            space.uniform_bops(8, 8).unwrap(),
            space.w8a8_bops().unwrap()
        );
        // Where the bit-widths and prune 0 are candidates (the default space, first and last
        // layers fixed at 8 bits), it is the uniform policy's BOPs.
        let spec = crate::builtin("resnet20", Some("32x32x3".parse().unwrap()), None).unwrap();
        let full = SearchSpace::new(spec, crate::SpaceConfig::default()).unwrap();
        for (w, a) in [(4, 2), (3, 3), (8, 8)] {
            let p = full.uniform(w, a, 0.0).unwrap();
            let t = full.totals_indices(&full.to_indices(&p).unwrap()).unwrap();
            assert_eq!(full.uniform_bops(w, a).unwrap(), t.bops, "w{w}a{a}");
        }
        assert_eq!(
            Budget::parse_bops_uniform(" W3A3 ").unwrap().label,
            "bops-w3a3"
        );
        for (s, needle) in [
            ("3", "expected wXaY"),
            ("w3", "expected wXaY"),
            ("wxa3", "expected wXaY"),
            ("w0a4", "outside 1..=16"),
            ("w4a17", "outside 1..=16"),
            ("a3w3", "expected wXaY"),
        ] {
            let e = Budget::parse_bops_uniform(s).unwrap_err().to_string();
            assert!(
                e.contains("--bops-uniform") && e.contains(needle),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (s, needle) in [
            ("5X", "unknown suffix"),
            ("", "expected a number"),
            ("M", "expected a number"),
            ("-5M", "expected a number"),
            ("0.5", "whole number"),
            ("1.0000001K", "whole number"),
            ("0", "0 BOPs"),
            ("99999999999T", "too large"),
            ("nan", "expected a number"),
        ] {
            let e = Budget::parse_max_bops(s).unwrap_err().to_string();
            assert!(e.contains("--max-bops") && e.contains(needle), "{s}: {e}");
        }
        for (s, needle) in [
            ("40Kb", "bits"),
            ("40K", "ambiguous"),
            ("40 KB B", "unknown suffix"),
            ("0.5B", "whole number"),
            ("0KB", "0 bytes"),
        ] {
            let e = Budget::parse_max_size(s).unwrap_err().to_string();
            assert!(e.contains("--max-size") && e.contains(needle), "{s}: {e}");
        }
        for (s, needle) in [
            ("10", "at most 1"),
            ("0", "positive"),
            ("-0.1", "positive"),
            ("NaN", "positive"),
            ("abc", "expected"),
        ] {
            let e = Budget::parse_bops_frac(s).unwrap_err().to_string();
            assert!(e.contains("--bops-frac") && e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn w8a8_reference_and_files() {
        let space = resnet20_space();
        assert_eq!(space.w8a8_bops().unwrap(), 40_551_040 * 64);
        let r = Budget::parse_bops_frac("0.1")
            .unwrap()
            .resolve(&space)
            .unwrap();
        assert_eq!(
            (r.policy_file(), r.model_file()),
            (
                "policy-frac-0.1.json".into(),
                "model-frac-0.1.safetensors".into()
            )
        );
        assert!(r.admits(259_526_656, u64::MAX) && !r.admits(259_526_657, 0));
    }

    #[test]
    fn several_at_once() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let b = parse_budgets(
            &v(&["2M,5M"]),
            &v(&["40KB"]),
            &v(&["0.1", "15%"]),
            &v(&["w2a2,w3a3"]),
        )
        .unwrap();
        let labels: Vec<_> = b.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "bops-2M",
                "bops-5M",
                "size-40KB",
                "frac-0.1",
                "frac-0.15",
                "bops-w2a2",
                "bops-w3a3"
            ]
        );
        let e = parse_budgets(&v(&["5M", "5000K"]), &[], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bops-5M") && e.contains("twice"), "{e}");
        assert!(matches!(
            parse_budgets(&[], &[], &[], &[]),
            Err(Error::NoBudget)
        ));
        for l in labels {
            assert!(
                l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'),
                "{l}"
            );
        }
    }
}
