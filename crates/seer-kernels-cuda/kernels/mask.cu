// Structured (channel) pruning masks, docs/method.md §3: the CUDA twins of seer-kernels' CPU op
// `channel_mask` (forward and backward). A tensor is viewed as [outer, c, inner] around the
// masked dimension; mask[c] is usually 0 or 1.

#include "common.cuh"

// y[o, ch, i] = x[o, ch, i] * mask[ch], with the CPU op's exact special cases: a mask of 1
// copies, a mask of 0 writes +0.0 (even for Inf/NaN inputs), anything else multiplies.
// The backward dx = dy * mask[ch] is the same kernel applied to dy.
extern "C" __global__ void mask_apply(const float* __restrict__ x, const float* __restrict__ mask,
                                      float* __restrict__ y, long long n, long long c,
                                      long long inner) {
    for (long long i = blockIdx.x * (long long)SEER_BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * SEER_BLOCK) {
        float m = mask[(i / inner) % c];
        y[i] = m == 1.0f ? x[i] : (m == 0.0f ? 0.0f : __fmul_rn(x[i], m));
    }
}

// One block per channel ch: dmask[ch] = sum over o, i of dy[o, ch, i] * x[o, ch, i], products
// in f32 (as on the CPU) summed in f64, rounded to f32 once at the end.
extern "C" __global__ void mask_grad(const float* __restrict__ x, const float* __restrict__ dy,
                                     float* __restrict__ dmask, long long outer, long long c,
                                     long long inner) {
    const long long ch = blockIdx.x;
    const long long per = outer * inner;
    double acc = 0.0;
    for (long long j = threadIdx.x; j < per; j += SEER_BLOCK) {
        long long o = j / inner;
        long long i = (o * c + ch) * inner + (j - o * inner);
        acc += (double)__fmul_rn(dy[i], x[i]);
    }
    double sum = seer_block_sum(acc);
    if (threadIdx.x == 0) dmask[ch] = (float)sum;
}
