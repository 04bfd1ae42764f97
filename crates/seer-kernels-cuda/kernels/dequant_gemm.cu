// Dequantising GEMM for packed low-bit weights (docs/method.md §3, §7): y = x · Wᵀ with
//   x: [m, k] row-major f32 activations,
//   W: [n, k] signed codes packed by seer-kernels' `PackedWeights` (int/pack.rs): one LSB-first
//      little-endian bit stream per output channel, code j at bits [j·b, (j+1)·b), rows starting
//      on byte boundaries (row_bytes = ceil(k·b/8)), two's complement,
//   scales: [n] f32 per-output-channel scales (zero point 0),
//   y: [m, n] row-major f32, y[r, c] = scales[c] · Σ_j x[r, j] · q[c, j].
// The same packed bytes serve the CPU integer engine and this kernel.
//
// Tiling: each block of SEER_BLOCK = 256 threads computes a 64×64 tile of y, walking k in
// steps of 16 through shared memory (x tile and dequantised code tile as f32); each thread
// accumulates a 4×4 register micro-tile. Codes are decoded once per tile element; the scale is
// applied once per output.

#include "common.cuh"

#define TM 64
#define TN 64
#define TK 16

// Code j of a packed row at a compile-time bit-width (8 and 4 have fast paths; 0 = run time).
template <int BITS>
__device__ __forceinline__ int decode(const unsigned char* __restrict__ row, long long j, int bits) {
    if (BITS == 8) {
        return (int)(signed char)row[j];
    } else if (BITS == 4) {
        int byte = row[j >> 1];
        int nib = (j & 1) ? (byte >> 4) : (byte & 15);
        return (nib ^ 8) - 8;
    } else {
        long long bit = j * bits;
        long long at = bit >> 3;
        int off = (int)(bit & 7);
        // A code spans at most two bytes (bits <= 8); the second is read only when needed, so
        // the row's last byte is never overrun.
        unsigned v = row[at];
        if (off + bits > 8) v |= (unsigned)row[at + 1] << 8;
        int code = (int)((v >> off) & ((1u << bits) - 1));
        int sign = 1 << (bits - 1);
        return (code ^ sign) - sign;
    }
}

template <int BITS>
__device__ __forceinline__ void dequant_gemm(const float* __restrict__ x,
                                             const unsigned char* __restrict__ w,
                                             const float* __restrict__ scales,
                                             float* __restrict__ y, int m, int n, int k,
                                             long long row_bytes, int bits) {
    __shared__ float xs[TK][TM];
    __shared__ float ws[TK][TN];
    const int tid = threadIdx.x;
    const int tr = tid / (TN / 4);  // 0..15: rows tr*4 .. tr*4+3 of the tile
    const int tc = tid % (TN / 4);  // 0..15: cols tc*4 .. tc*4+3 of the tile
    const long long m0 = (long long)blockIdx.y * TM;
    const long long n0 = (long long)blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;

    for (long long k0 = 0; k0 < k; k0 += TK) {
        // Each thread loads 4 of the 64×16 x elements and decodes 4 of the 64×16 codes.
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int idx = tid + e * SEER_BLOCK;
            int r = idx / TK, kk = idx % TK;
            long long gm = m0 + r, gk = k0 + kk;
            xs[kk][r] = (gm < m && gk < k) ? x[gm * k + gk] : 0.0f;
            long long gn = n0 + r;
            ws[kk][r] = (gn < n && gk < k) ? (float)decode<BITS>(w + gn * row_bytes, gk, bits) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) av[a] = xs[kk][tr * 4 + a];
#pragma unroll
            for (int b = 0; b < 4; ++b) bv[b] = ws[kk][tc * 4 + b];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] += av[a] * bv[b];
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        long long gm = m0 + tr * 4 + a;
        if (gm >= m) continue;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            long long gn = n0 + tc * 4 + b;
            if (gn < n) y[gm * n + gn] = acc[a][b] * scales[gn];
        }
    }
}

// Grid: (ceil(n/64), ceil(m/64)), block: 256 threads.
extern "C" __global__ void dequant_gemm_i8(const float* __restrict__ x,
                                           const unsigned char* __restrict__ w,
                                           const float* __restrict__ scales, float* __restrict__ y,
                                           int m, int n, int k, long long row_bytes) {
    dequant_gemm<8>(x, w, scales, y, m, n, k, row_bytes, 8);
}

extern "C" __global__ void dequant_gemm_i4(const float* __restrict__ x,
                                           const unsigned char* __restrict__ w,
                                           const float* __restrict__ scales, float* __restrict__ y,
                                           int m, int n, int k, long long row_bytes) {
    dequant_gemm<4>(x, w, scales, y, m, n, k, row_bytes, 4);
}

// Any bit-width 2..=8, decoded at run time.
extern "C" __global__ void dequant_gemm_bits(const float* __restrict__ x,
                                             const unsigned char* __restrict__ w,
                                             const float* __restrict__ scales,
                                             float* __restrict__ y, int m, int n, int k,
                                             long long row_bytes, int bits) {
    dequant_gemm<0>(x, w, scales, y, m, n, k, row_bytes, bits);
}
