// Host emulation of the few CUDA built-ins our kernels use, so `cargo xtask cuda-check` can run
// the unmodified kernels/*.cu on a machine without a GPU (emu_check.cpp).
//
// Semantics kept: every block runs its SEER_BLOCK threads as real OS threads, so
// __syncthreads() is a real barrier and shared memory is really shared; blocks run one after
// another, so a function-local `static` array is one block's shared memory. Arithmetic
// intrinsics map to plain IEEE f32 operations (compile with -ffp-contract=off so nothing is
// fused, like the __f*_rn intrinsics on the GPU). Not emulated: warps, memory-model races
// between blocks (our kernels have none), launch limits.
#pragma once

#include <math.h>

#include <barrier>
#include <cmath>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline dim3 blockIdx, gridDim, blockDim;  // the same for every thread of the running block
inline thread_local dim3 threadIdx;
inline std::barrier<>* seer_emu_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { seer_emu_barrier->arrive_and_wait(); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
using std::isfinite;

inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    static std::mutex m;
    std::lock_guard<std::mutex> g(m);
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}

// Runs kernel `k` over `grid` blocks of `threads` threads with `args`.
template <class... P, class... A>
void emu_launch(void (*k)(P...), dim3 grid, unsigned threads, A... args) {
    gridDim = grid;
    blockDim = dim3{threads, 1, 1};
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3{bx, by, 0};
            std::barrier<> bar(threads);
            seer_emu_barrier = &bar;
            std::vector<std::thread> ts;
            ts.reserve(threads);
            for (unsigned t = 0; t < threads; ++t) {
                ts.emplace_back([=] {
                    threadIdx = dim3{t, 0, 0};
                    k(args...);
                });
            }
            for (auto& t : ts) t.join();
        }
    }
}
