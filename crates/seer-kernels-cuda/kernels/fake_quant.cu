// Fake quantisation with the straight-through estimator (STE), docs/method.md §3: the CUDA twins of
// seer-kernels' CPU ops `fake_quant_weight` and `fake_quant_act`.
//
// Exactness: every rounding-sensitive step uses the IEEE round-to-nearest intrinsics
// (__fdiv_rn, __fmul_rn, __fsub_rn: never contracted into FMAs, never approximated) and the
// same operation order as the Rust code, and roundf rounds half away from zero like Rust's
// f32::round, so forward outputs and input gradients are bit-identical to the CPU. Only the
// order of the f64 sum behind the clip-range gradient differs (fixed per launch geometry).

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Weights: per output channel, symmetric, signed. `w` is [c_out, len] row-major f32.
// ---------------------------------------------------------------------------------------------

// One block per output channel c: scales[c] = max|w_c| / qmax, or 1 for an all-zero channel
// (which then stays zero). Flags the first NaN/Inf in `bad`.
extern "C" __global__ void fq_weight_scales(const float* __restrict__ w, float* __restrict__ scales,
                                            unsigned long long* bad, long long len, float qmax) {
    __shared__ float red[SEER_BLOCK];
    const long long c = blockIdx.x;
    const float* row = w + c * len;
    float m = 0.0f;
    for (long long i = threadIdx.x; i < len; i += SEER_BLOCK) {
        float v = row[i];
        if (!isfinite(v)) seer_flag_bad(bad, (unsigned long long)(c * len + i));
        m = fmaxf(m, fabsf(v));
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (unsigned s = SEER_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float mm = red[0];
        scales[c] = mm > 0.0f ? __fdiv_rn(mm, qmax) : 1.0f;
    }
}

// y = clamp(round(w / s_c), -qmax, qmax) * s_c, element-wise over n = c_out * len values.
extern "C" __global__ void fq_weight_forward(const float* __restrict__ w,
                                             const float* __restrict__ scales,
                                             float* __restrict__ y, long long n, long long len,
                                             float qmax) {
    for (long long i = blockIdx.x * (long long)SEER_BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * SEER_BLOCK) {
        float s = scales[i / len];
        float q = fminf(fmaxf(roundf(__fdiv_rn(w[i], s)), -qmax), qmax);
        y[i] = __fmul_rn(q, s);
    }
}

// STE backward: dw = dy where the clamp is inactive (|round(w / s_c)| <= qmax), 0 elsewhere.
// With the max-abs scales of fq_weight_scales every weight is inside, so dw = dy exactly,
// which is what the CPU op returns (the one exception: a channel whose max |w| is so small,
// ≲ 1e-42, that s_c underflows to 0 or to a subnormal too coarse to keep round(w / s_c) within
// ±qmax; the CPU op passes dy there, this kernel 0).
extern "C" __global__ void fq_weight_backward(const float* __restrict__ w,
                                              const float* __restrict__ scales,
                                              const float* __restrict__ dy,
                                              float* __restrict__ dw, long long n, long long len,
                                              float qmax) {
    for (long long i = blockIdx.x * (long long)SEER_BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * SEER_BLOCK) {
        float t = roundf(__fdiv_rn(w[i], scales[i / len]));
        dw[i] = (t >= -qmax && t <= qmax) ? dy[i] : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Activations: unsigned, clip range [0, alpha], step s = alpha / levels, levels = 2^b - 1.
// ---------------------------------------------------------------------------------------------

// y = s * round(clamp(x, 0, alpha) / s). Flags the first NaN/Inf of x in `bad`.
extern "C" __global__ void fq_act_forward(const float* __restrict__ x, float* __restrict__ y,
                                          unsigned long long* bad, long long n, float alpha,
                                          float s) {
    for (long long i = blockIdx.x * (long long)SEER_BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * SEER_BLOCK) {
        float v = x[i];
        if (!isfinite(v)) seer_flag_bad(bad, (unsigned long long)i);
        // Rust's f32::clamp: below min -> min, above max -> max, else unchanged (keeps -0.0).
        float c = v < 0.0f ? 0.0f : (v > alpha ? alpha : v);
        y[i] = __fmul_rn(roundf(__fdiv_rn(c, s)), s);
    }
}

// Backward (PACT/LSQ style): dx = dy for 0 <= x <= alpha, 0 outside; the clip-range gradient
// dalpha = sum of dy for x > alpha plus dy * (round(x/s) - x/s) / levels for 0 <= x <= alpha.
// Each block writes its f64 partial sum to partial[blockIdx.x]; the host adds the partials in
// block order (deterministic for a given grid size).
extern "C" __global__ void fq_act_backward(const float* __restrict__ x,
                                           const float* __restrict__ dy, float* __restrict__ dx,
                                           double* __restrict__ partial, long long n, float alpha,
                                           float s, float levels) {
    double acc = 0.0;
    for (long long i = blockIdx.x * (long long)SEER_BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * SEER_BLOCK) {
        float v = x[i];
        float g = dy[i];
        float d = 0.0f;
        if (v > alpha) {
            acc += (double)g;
        } else if (v >= 0.0f) {
            d = g;
            float t = __fdiv_rn(v, s);
            acc += (double)__fmul_rn(g, __fdiv_rn(__fsub_rn(roundf(t), t), levels));
        }
        dx[i] = d;
    }
    double sum = seer_block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}
