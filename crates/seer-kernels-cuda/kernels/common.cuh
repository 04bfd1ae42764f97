// Shared helpers of the seer-kernels-cuda kernels: launch geometry and the non-finite flag.
#pragma once

// Every kernel runs with blocks of this many threads (a power of two; the Rust launcher uses
// the same constant, `BLOCK` in src/cuda.rs).
#define SEER_BLOCK 256

// "No non-finite value seen": the initial value of a `bad` flag.
#define SEER_NO_BAD 0xFFFFFFFFFFFFFFFFull

// Records flat index `i` of a NaN/Inf input; the smallest index wins, as on the CPU, which
// reports the first offending element.
__device__ __forceinline__ void seer_flag_bad(unsigned long long* bad, unsigned long long i) {
    atomicMin(bad, i);
}

// Block-wide sum of one double per thread (blockDim.x == SEER_BLOCK), in a fixed tree order so
// the result does not depend on scheduling. Every thread must call it; thread 0 gets the sum.
__device__ __forceinline__ double seer_block_sum(double v) {
    __shared__ double red[SEER_BLOCK];
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = SEER_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double r = red[0];
    __syncthreads();
    return r;
}
