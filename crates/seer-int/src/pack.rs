//! Packed low-bit tensor formats: signed per-output-channel weights and unsigned activations.
//!
//! # Layout
//! **Weights** ([`PackedWeights`]) are a `rows × cols` matrix of signed `b`-bit codes
//! (`b ∈ 2..=8`), one row per output channel. For a convolution `rows = C_out` and
//! `cols = C_in·K_h·K_w` in the framework's OIHW order (column `(ci·K_h + kh)·K_w + kw`);
//! for a linear layer `cols = in_features`. Each row is one little-endian bit stream: code
//! `j` occupies bits `[j·b, (j+1)·b)`, bit `i` of the stream being bit `i mod 8` of byte
//! `⌊i/8⌋` (LSB first), stored in two's complement. Rows start on a byte boundary:
//! `row_bytes = ⌈cols·b/8⌉` (the last byte of a row is zero-padded). Because 8 codes of `b`
//! bits fill exactly `b` bytes, every group of 8 consecutive codes is byte aligned, which is
//! what the unpacker exploits. Codes lie in `[−(2^{b−1}−1), 2^{b−1}−1]` (symmetric: the code
//! `−2^{b−1}` is never written). Row `c` dequantizes as `w = q · scale[c]` with one f32 scale
//! per output channel and zero point 0 (docs/method.md §3).
//!
//! **Activations** are unsigned `b`-bit codes `q ∈ [0, 2^b−1]`, zero point 0, representing
//! `x = q · α/(2^b−1)` for the layer's clip range `α` (docs/method.md §3). In the kernels they are
//! held one code per `u8` (NHWC order); [`pack_unsigned`] stores them densely with the same
//! LSB-first bit stream as one weight row.

use crate::error::{Error, Result, check_bits, check_len, invalid};

/// Largest signed weight code at `bits` bits: `2^{bits−1} − 1` (docs/method.md §3).
pub fn qmax_signed(bits: u32) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// Largest unsigned activation code at `bits` bits: `2^bits − 1` (docs/method.md §3).
pub fn qmax_unsigned(bits: u32) -> u32 {
    (1u32 << bits) - 1
}

/// Bytes taken by `n` codes of `bits` bits packed densely: `⌈n·bits/8⌉`.
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Packs `vals` (two's complement, low `bits` bits kept) into `out` (length `packed_len`).
fn pack_bits(vals: impl ExactSizeIterator<Item = u8>, bits: u32, out: &mut [u8]) {
    let b = bits as usize;
    let mask = (1u64 << b) - 1;
    let mut acc = 0u64;
    let mut filled = 0usize; // codes in `acc`
    let mut pos = 0usize; // byte position in `out`
    for v in vals {
        acc |= (v as u64 & mask) << (filled * b);
        filled += 1;
        if filled == 8 {
            out[pos..pos + b].copy_from_slice(&acc.to_le_bytes()[..b]);
            pos += b;
            acc = 0;
            filled = 0;
        }
    }
    if filled > 0 {
        let nbytes = (filled * b).div_ceil(8);
        out[pos..pos + nbytes].copy_from_slice(&acc.to_le_bytes()[..nbytes]);
    }
}

/// Reads group `g` (8 codes) of a packed stream into a u64 (missing tail bytes read as 0).
#[inline]
fn read_group(src: &[u8], g: usize, b: usize) -> u64 {
    let start = g * b;
    let mut buf = [0u8; 8];
    let end = (start + b).min(src.len());
    buf[..end - start].copy_from_slice(&src[start..end]);
    u64::from_le_bytes(buf)
}

/// Unpacks `out.len()` signed `bits`-bit codes from `src` (sign-extended to i8).
pub(crate) fn unpack_signed_into(src: &[u8], bits: u32, out: &mut [i8]) {
    let b = bits as usize;
    let shift = 64 - b as u32;
    for (g, chunk) in out.chunks_mut(8).enumerate() {
        let acc = read_group(src, g, b);
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = (((acc >> (j * b)) << shift) as i64 >> shift) as i8;
        }
    }
}

/// Unpacks `out.len()` unsigned `bits`-bit codes from `src`.
fn unpack_unsigned_into(src: &[u8], bits: u32, out: &mut [u8]) {
    let b = bits as usize;
    let mask = (1u64 << b) - 1;
    for (g, chunk) in out.chunks_mut(8).enumerate() {
        let acc = read_group(src, g, b);
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = ((acc >> (j * b)) & mask) as u8;
        }
    }
}

/// A weight matrix quantized per output channel (symmetric, signed, zero point 0) and
/// bit-packed densely at 2..=8 bits; see the module docs for the byte layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    bits: u32,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
}

impl PackedWeights {
    /// Quantizes `w` (`[rows, cols]` row-major f32, one row per output channel) to `bits`
    /// bits per output channel, symmetric: `scale_c = max|w_c| / (2^{b−1}−1)` (an all-zero
    /// row gets scale 1 and stays zero), `q = round(w / scale_c)` (half away from zero)
    /// clamped to `±(2^{b−1}−1)` (docs/method.md §3).
    ///
    /// Errors: `InvalidBits` if `bits ∉ 2..=8`, `ShapeMismatch` if `w.len() != rows·cols`,
    /// `NonFinite` for NaN/∞ weights, `InvalidArgument` if `rows` or `cols` is 0.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, bits: u32) -> Result<Self> {
        check_bits("weights", bits)?;
        check_len("weights", rows * cols, w.len())?;
        if rows == 0 || cols == 0 {
            return Err(invalid("weights", format!("empty shape [{rows}, {cols}]")));
        }
        if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "weights".into(),
                index,
                value,
            });
        }
        let qmax = qmax_signed(bits) as f32;
        let mut codes = vec![0i8; rows * cols];
        let mut scales = Vec::with_capacity(rows);
        for (row, out) in w.chunks_exact(cols).zip(codes.chunks_exact_mut(cols)) {
            let scale = weight_scale(row, bits);
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x / scale).round().clamp(-qmax, qmax) as i8;
            }
            scales.push(scale);
        }
        Self::from_codes(&codes, rows, cols, bits, scales)
    }

    /// Packs already-quantized codes (`[rows, cols]` row-major) with their per-row scales.
    ///
    /// Errors: `InvalidBits`, `ShapeMismatch` (codes or scales), `CodeOutOfRange` for a code
    /// outside `±(2^{b−1}−1)`, `InvalidArgument` for a non-positive or non-finite scale.
    pub fn from_codes(
        codes: &[i8],
        rows: usize,
        cols: usize,
        bits: u32,
        scales: Vec<f32>,
    ) -> Result<Self> {
        check_bits("weights", bits)?;
        check_len("weight codes", rows * cols, codes.len())?;
        check_len("weight scales", rows, scales.len())?;
        let qmax = qmax_signed(bits);
        if let Some((index, &q)) = codes
            .iter()
            .enumerate()
            .find(|(_, q)| (**q as i32).abs() > qmax)
        {
            return Err(Error::CodeOutOfRange {
                what: "weight codes".into(),
                index,
                value: q as i32 as u32,
                bits,
            });
        }
        check_scales(&scales)?;
        let row_bytes = packed_len(cols, bits);
        let mut data = vec![0u8; rows * row_bytes];
        if cols > 0 {
            for (row, out) in codes
                .chunks_exact(cols)
                .zip(data.chunks_exact_mut(row_bytes))
            {
                pack_bits(row.iter().map(|&q| q as u8), bits, out);
            }
        }
        Ok(Self::assemble(bits, rows, cols, data, scales))
    }

    /// The struct from checked parts (`data`: `rows` rows of `⌈cols·bits/8⌉` bytes).
    fn assemble(bits: u32, rows: usize, cols: usize, data: Vec<u8>, scales: Vec<f32>) -> Self {
        Self {
            bits,
            rows,
            cols,
            row_bytes: packed_len(cols, bits),
            data,
            scales,
        }
    }

    /// Wraps packed bytes read from a file. Errors: `InvalidBits`, `ShapeMismatch` if
    /// `data.len() != rows·⌈cols·bits/8⌉` (or that size overflows) or `scales.len() != rows`,
    /// `InvalidArgument` for an empty shape or a bad scale, `CodeOutOfRange` for the
    /// never-written code `−2^{b−1}`. The shape is checked against `data` before anything is
    /// allocated.
    pub fn from_raw(
        bits: u32,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        check_bits("weights", bits)?;
        if rows == 0 || cols == 0 {
            return Err(invalid("weights", format!("empty shape [{rows}, {cols}]")));
        }
        let want = cols
            .checked_mul(bits as usize)
            .map(|b| b.div_ceil(8))
            .and_then(|row_bytes| row_bytes.checked_mul(rows));
        let Some(want) = want else {
            return Err(invalid(
                "packed weight bytes",
                format!("shape [{rows}, {cols}] at {bits} bits overflows the address space"),
            ));
        };
        check_len("packed weight bytes", want, data.len())?;
        check_len("weight scales", rows, scales.len())?;
        check_scales(&scales)?;
        let w = Self::assemble(bits, rows, cols, data, scales);
        let min = -(qmax_signed(bits) + 1);
        let mut row = vec![0i8; cols];
        for r in 0..rows {
            w.unpack_row_into(r, &mut row);
            if let Some(j) = row.iter().position(|&q| q as i32 == min) {
                return Err(Error::CodeOutOfRange {
                    what: "packed weight codes".into(),
                    index: r * cols + j,
                    value: min as u32,
                    bits,
                });
            }
        }
        Ok(w)
    }

    /// Bit-width of the codes (2..=8).
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Number of rows (output channels).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (reduction length `K`).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per packed row: `⌈cols·bits/8⌉`.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// The packed bytes, `rows · row_bytes` long.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Per-output-channel scales (f32, `rows` long).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Storage size in bytes: packed codes plus 4 bytes per scale.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
    /// The packed bytes of row `r`. Panics if `r >= rows`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// Unpacks row `r` into `out` (`cols` long) as sign-extended codes. Panics on bad sizes.
    pub fn unpack_row_into(&self, r: usize, out: &mut [i8]) {
        assert_eq!(out.len(), self.cols, "unpack_row_into: output length");
        unpack_signed_into(self.row(r), self.bits, out);
    }
    /// All codes as `[rows, cols]` row-major i8.
    pub fn unpack(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.rows * self.cols];
        if self.cols > 0 {
            for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
                self.unpack_row_into(r, o);
            }
        }
        out
    }
    /// The dequantized weights `q · scale_c` as `[rows, cols]` row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let q = self.unpack();
        q.iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.scales[i / self.cols])
            .collect()
    }
}

/// The per-channel scale of docs/method.md §3: `max|w| / (2^{b−1}−1)`, or 1 for an all-zero row.
pub fn weight_scale(row: &[f32], bits: u32) -> f32 {
    let m = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
    if m == 0.0 {
        1.0
    } else {
        m / qmax_signed(bits) as f32
    }
}

fn check_scales(scales: &[f32]) -> Result<()> {
    if let Some((i, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(invalid(
            "weight scales",
            format!("scale {s} of channel {i} is not a positive finite number"),
        ));
    }
    Ok(())
}

/// Quantizes activations to unsigned `bits`-bit codes with clip range `alpha`:
/// `q = round(clamp(x, 0, α) / s)`, `s = α / (2^b − 1)` (half away from zero), zero point 0
/// (docs/method.md §3) — the same f32 operations as the training op `fake_quant_act`, so the
/// codes are exactly its levels. Returns one code per `u8`.
///
/// Errors: `InvalidBits`, `InvalidArgument` if `alpha` is not positive and finite,
/// `NonFinite` for NaN/∞ inputs.
pub fn quantize_activations(x: &[f32], alpha: f32, bits: u32) -> Result<Vec<u8>> {
    check_bits("activations", bits)?;
    check_alpha("activation clip range", alpha)?;
    let step = activation_scale(alpha, bits);
    x.iter()
        .enumerate()
        .map(|(index, &v)| {
            if v.is_finite() {
                Ok((v.clamp(0.0, alpha) / step).round() as u8)
            } else {
                Err(Error::NonFinite {
                    what: "activations".into(),
                    index,
                    value: v,
                })
            }
        })
        .collect()
}

/// The real value of one activation code step: `α / (2^b − 1)`.
pub fn activation_scale(alpha: f32, bits: u32) -> f32 {
    alpha / qmax_unsigned(bits) as f32
}

/// Dequantizes activation codes: `x = q · α / (2^b − 1)`.
pub fn dequantize_activations(q: &[u8], alpha: f32, bits: u32) -> Vec<f32> {
    let s = activation_scale(alpha, bits);
    q.iter().map(|&q| q as f32 * s).collect()
}

pub(crate) fn check_alpha(what: &str, alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!("clip range {alpha} must be a positive finite number"),
        ))
    }
}

/// Packs unsigned `bits`-bit activation codes densely (LSB-first stream, `⌈n·b/8⌉` bytes).
///
/// Errors: `InvalidBits`, `CodeOutOfRange` for a code `≥ 2^bits`.
pub fn pack_unsigned(codes: &[u8], bits: u32) -> Result<Vec<u8>> {
    check_bits("activations", bits)?;
    let qmax = qmax_unsigned(bits);
    if let Some((index, &q)) = codes.iter().enumerate().find(|(_, q)| **q as u32 > qmax) {
        return Err(Error::CodeOutOfRange {
            what: "activation codes".into(),
            index,
            value: q as u32,
            bits,
        });
    }
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    pack_bits(codes.iter().copied(), bits, &mut out);
    Ok(out)
}

/// Unpacks `n` unsigned `bits`-bit codes written by [`pack_unsigned`].
///
/// Errors: `InvalidBits`, `ShapeMismatch` if `src.len() != ⌈n·bits/8⌉`.
pub fn unpack_unsigned(src: &[u8], bits: u32, n: usize) -> Result<Vec<u8>> {
    check_bits("activations", bits)?;
    check_len("packed activation bytes", packed_len(n, bits), src.len())?;
    let mut out = vec![0u8; n];
    unpack_unsigned_into(src, bits, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Slow reference packer: one bit at a time.
    fn pack_ref(vals: &[i32], bits: u32) -> Vec<u8> {
        let mut out = vec![0u8; packed_len(vals.len(), bits)];
        for (j, &v) in vals.iter().enumerate() {
            for t in 0..bits {
                if (v >> t) & 1 == 1 {
                    let i = j * bits as usize + t as usize;
                    out[i / 8] |= 1 << (i % 8);
                }
            }
        }
        out
    }

    #[test]
    fn from_raw_refuses_claimed_sizes_before_allocating() {
        // 0 rows of 2^40 columns: no bytes expected, but a 2^40-byte row buffer would follow.
        let e = PackedWeights::from_raw(4, 0, 1 << 40, vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("empty shape"), "{e}");
        // 2^20 x 2^20 codes (2^39 bytes at 4 bits) claimed, 3 bytes present.
        let e = PackedWeights::from_raw(4, 1 << 20, 1 << 20, vec![0; 3], vec![1.0; 1 << 20])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("expected 549755813888 elements, got 3"),
            "{e}"
        );
        // A size whose byte count overflows usize is refused, not wrapped.
        let e =
            PackedWeights::from_raw(8, 2, usize::MAX / 2, vec![0; 3], vec![1.0; 2]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn known_layout_3_bits() {
        // codes 1, -1, 3, -3 at 3 bits: 001, 111, 011, 101 -> stream LSB first.
        let w = PackedWeights::from_codes(&[1, -1, 3, -3], 1, 4, 3, vec![1.0]).unwrap();
        // stream (LSB first): 1 0 0 | 1 1 1 | 1 1 0 | 1 0 1 -> byte0 = 0b1111_1001,
        // byte1 = 0b0000_1010 (bits 8.. = 0 1 0 1).
        assert_eq!(w.data(), &[0b1111_1001, 0b0000_1010]);
        assert_eq!(w.row_bytes(), 2);
    }

    #[test]
    fn quantize_matches_method_convention() {
        let w = [3.5f32, -7.0, -2.5, 0.0, 0.0, 0.0];
        let p = PackedWeights::quantize(&w, 2, 3, 4).unwrap();
        assert_eq!(p.scales(), &[1.0, 1.0]);
        assert_eq!(p.unpack(), vec![4, -7, -3, 0, 0, 0]); // ties round away from zero
        assert!(PackedWeights::quantize(&w, 2, 3, 9).is_err());
        assert!(PackedWeights::quantize(&w, 3, 3, 4).is_err());
        assert!(PackedWeights::quantize(&[f32::NAN], 1, 1, 4).is_err());
    }

    #[test]
    fn activations_quantize_and_reject_bad_input() {
        let q = quantize_activations(&[-1.0, 0.0, 0.5, 1.0, 7.0], 1.0, 2).unwrap();
        assert_eq!(q, vec![0, 0, 2, 3, 3]);
        assert!(quantize_activations(&[0.0], 0.0, 4).is_err());
        assert!(quantize_activations(&[f32::INFINITY], 1.0, 4).is_err());
        assert!(pack_unsigned(&[4], 2).is_err());
    }

    #[test]
    fn from_raw_rejects_bad_files() {
        assert!(PackedWeights::from_raw(4, 2, 3, vec![0; 3], vec![1.0, 1.0]).is_err());
        assert!(PackedWeights::from_raw(4, 1, 2, vec![0x08], vec![1.0]).is_err()); // code -8
        assert!(PackedWeights::from_raw(4, 1, 2, vec![0x07], vec![-1.0]).is_err());
        assert!(PackedWeights::from_raw(4, 1, 2, vec![0x07], vec![1.0]).is_ok());
    }

    fn codes_strategy() -> impl Strategy<Value = (u32, usize, usize, Vec<i8>)> {
        (2u32..=8, 1usize..6, 1usize..40).prop_flat_map(|(bits, rows, cols)| {
            let q = qmax_signed(bits) as i8;
            (
                Just(bits),
                Just(rows),
                Just(cols),
                proptest::collection::vec(-q..=q, rows * cols),
            )
        })
    }

    proptest! {
        #[test]
        fn weights_round_trip((bits, rows, cols, codes) in codes_strategy()) {
            let p = PackedWeights::from_codes(&codes, rows, cols, bits, vec![0.5; rows]).unwrap();
            prop_assert_eq!(p.data().len(), rows * packed_len(cols, bits));
            for r in 0..rows {
                let row: Vec<i32> = codes[r * cols..(r + 1) * cols].iter().map(|&q| q as i32).collect();
                prop_assert_eq!(p.row(r), &pack_ref(&row, bits)[..]);
            }
            prop_assert_eq!(p.unpack(), codes.clone());
            let again = PackedWeights::from_raw(bits, rows, cols, p.data().to_vec(), p.scales().to_vec()).unwrap();
            prop_assert_eq!(again, p);
        }

        #[test]
        fn quantize_is_within_half_step(bits in 2u32..=8, rows in 1usize..4, cols in 1usize..20,
                                        seed in proptest::collection::vec(-3.0f32..3.0, 80)) {
            let w: Vec<f32> = (0..rows * cols).map(|i| seed[i % seed.len()] * (i % 7) as f32).collect();
            let p = PackedWeights::quantize(&w, rows, cols, bits).unwrap();
            let d = p.dequantize();
            for (i, (&x, &y)) in w.iter().zip(&d).enumerate() {
                let s = p.scales()[i / cols];
                prop_assert!((x - y).abs() <= 0.5 * s * (1.0 + 1e-5), "{x} vs {y} (scale {s})");
            }
        }

        #[test]
        fn activations_round_trip(bits in 2u32..=8, n in 0usize..100, seed in any::<u64>()) {
            let qmax = qmax_unsigned(bits) as u64;
            let codes: Vec<u8> = (0..n as u64)
                .map(|i| ((seed.rotate_left(i as u32 % 64) ^ i.wrapping_mul(0x9E37_79B9)) % (qmax + 1)) as u8)
                .collect();
            let packed = pack_unsigned(&codes, bits).unwrap();
            let vals: Vec<i32> = codes.iter().map(|&q| q as i32).collect();
            prop_assert_eq!(&packed, &pack_ref(&vals, bits));
            prop_assert_eq!(unpack_unsigned(&packed, bits, n).unwrap(), codes);
        }
    }
}
