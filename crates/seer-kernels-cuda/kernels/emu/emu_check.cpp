// Runs the unmodified CUDA kernels (../*.cu) on the host through cuda_host_emu.h and checks
// them against plain references (method.md §3 formulas, the packed layout of seer-kernels'
// int/pack.rs). Built and run by `cargo xtask cuda-check`:
//   g++ -std=c++20 -O1 -ffp-contract=off -pthread -Wno-unknown-pragmas emu_check.cpp
// Exit status 0 and "emu_check: N passed, 0 failed" when every check holds.

#include "cuda_host_emu.h"

// The kernels, exactly as compiled to PTX.
#include "../dequant_gemm.cu"
#include "../fake_quant.cu"
#include "../mask.cu"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

static int passed = 0, failed = 0;

static void check(bool ok, const char* what, int a = 0, int b = 0) {
    if (ok) {
        ++passed;
    } else {
        ++failed;
        std::printf("FAILED: %s (%d, %d)\n", what, a, b);
    }
}

static bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0 || a == b; }

// Deterministic values in [-1, 1).
static std::vector<float> values(uint64_t seed, size_t n) {
    std::vector<float> v(n);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 12345;
    for (auto& x : v) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x = (float)((s >> 40) & 0xFFFFFF) / (float)(1 << 24) * 2.0f - 1.0f;
    }
    return v;
}

static unsigned grid_for(size_t n, unsigned cap) {
    size_t b = (n + SEER_BLOCK - 1) / SEER_BLOCK;
    return (unsigned)(b < 1 ? 1 : (b > cap ? cap : b));
}

static void test_weight() {
    for (int bits = 2; bits <= 8; ++bits) {
        const long long c_out = 5, len = 300;
        float qmax = (float)((1 << (bits - 1)) - 1);
        auto w = values(bits, c_out * len);
        std::fill(w.begin() + len, w.begin() + 2 * len, 0.0f);  // all-zero channel
        for (long long j = 0; j < len; ++j) w[3 * len + j] = j == 0 ? 1.0f : ((j % (int)qmax) + 0.5f) / qmax;
        std::vector<float> scales(c_out), y(w.size()), dw(w.size());
        unsigned long long bad = SEER_NO_BAD;
        emu_launch(fq_weight_scales, dim3{(unsigned)c_out, 1, 1}, SEER_BLOCK, (const float*)w.data(),
                   scales.data(), &bad, len, qmax);
        check(bad == SEER_NO_BAD, "weight: no NaN flagged", bits);
        long long n = c_out * len;
        emu_launch(fq_weight_forward, dim3{grid_for(n, 3), 1, 1}, SEER_BLOCK, (const float*)w.data(),
                   (const float*)scales.data(), y.data(), n, len, qmax);
        auto dy = values(100 + bits, w.size());
        emu_launch(fq_weight_backward, dim3{grid_for(n, 2), 1, 1}, SEER_BLOCK, (const float*)w.data(),
                   (const float*)scales.data(), (const float*)dy.data(), dw.data(), n, len, qmax);
        for (long long c = 0; c < c_out; ++c) {
            float m = 0;
            for (long long j = 0; j < len; ++j) m = std::max(m, std::fabs(w[c * len + j]));
            float s = m > 0 ? m / qmax : 1.0f;
            check(same_bits(scales[c], s), "weight scale", bits, (int)c);
            bool ok = true;
            for (long long j = 0; j < len; ++j) {
                float q = std::round(w[c * len + j] / s);
                q = q < -qmax ? -qmax : (q > qmax ? qmax : q);
                ok &= same_bits(y[c * len + j], q * s);
                ok &= same_bits(dw[c * len + j], dy[c * len + j]);
            }
            check(ok, "weight values and STE gradient", bits, (int)c);
        }
        w[2 * len + 17] = NAN;
        w[4 * len + 3] = INFINITY;
        bad = SEER_NO_BAD;
        emu_launch(fq_weight_scales, dim3{(unsigned)c_out, 1, 1}, SEER_BLOCK, (const float*)w.data(),
                   scales.data(), &bad, len, qmax);
        check(bad == (unsigned long long)(2 * len + 17), "weight: first NaN flagged", (int)bad);
    }
}

static void test_act() {
    for (int bits = 2; bits <= 8; ++bits) {
        for (float alpha : {0.05f, 2.7f}) {
            const long long n = 5000;
            float levels = (float)((1 << bits) - 1);
            float s = alpha / levels;
            auto x = values(bits * 3, n);
            for (long long i = 0; i < n; ++i) {
                x[i] = x[i] * 1.5f * alpha + 0.25f * alpha;
                if (i % 9 == 0) x[i] = 0.0f;
                if (i % 9 == 1) x[i] = alpha;
                if (i % 9 == 2) x[i] = ((i % 5) + 0.5f) * s;
            }
            auto dy = values(bits * 5, n);
            std::vector<float> y(n), dx(n);
            unsigned long long bad = SEER_NO_BAD;
            emu_launch(fq_act_forward, dim3{grid_for(n, 4), 1, 1}, SEER_BLOCK, (const float*)x.data(), y.data(),
                       &bad, n, alpha, s);
            check(bad == SEER_NO_BAD, "act: no NaN flagged", bits);
            unsigned g = grid_for(n, 3);
            std::vector<double> partial(g);
            emu_launch(fq_act_backward, dim3{g, 1, 1}, SEER_BLOCK, (const float*)x.data(), (const float*)dy.data(),
                       dx.data(), partial.data(), n, alpha, s, levels);
            bool ok = true;
            double da = 0, mag = 0;
            for (long long i = 0; i < n; ++i) {
                float v = x[i], c = v < 0 ? 0 : (v > alpha ? alpha : v);
                ok &= same_bits(y[i], std::round(c / s) * s);
                float d = 0;
                if (v > alpha) {
                    da += dy[i];
                } else if (v >= 0) {
                    d = dy[i];
                    float t = v / s;
                    da += (double)(dy[i] * ((std::round(t) - t) / levels));
                }
                ok &= same_bits(dx[i], d);
                mag += std::fabs(dy[i]);
            }
            check(ok, "act forward and dx", bits);
            double got = 0;
            for (double p : partial) got += p;
            check(std::fabs(got - da) <= 1e-9 * mag, "act dalpha", bits);
            x[4321] = NAN;
            x[4999] = -INFINITY;
            bad = SEER_NO_BAD;
            emu_launch(fq_act_forward, dim3{grid_for(n, 4), 1, 1}, SEER_BLOCK, (const float*)x.data(), y.data(),
                       &bad, n, alpha, s);
            check(bad == 4321, "act: first NaN flagged", (int)bad);
        }
    }
}

static void test_mask() {
    const long long dims[][3] = {{2, 3, 20}, {1, 300, 1}, {6, 10, 1}, {4, 7, 33}};
    for (auto& d : dims) {
        long long outer = d[0], c = d[1], inner = d[2], n = outer * c * inner;
        auto x = values(c, n), dy = values(c + 1, n);
        std::vector<float> mask(c), y(n), dm(c);
        for (long long j = 0; j < c; ++j) mask[j] = (float[]){1.0f, 0.0f, 0.5f, 1.0f}[j % 4];
        x[0] = INFINITY;      // channel 0, mask 1: copied
        x[inner] = -INFINITY; // channel 1, mask 0: +0, as on the CPU
        emu_launch(mask_apply, dim3{grid_for(n, 2), 1, 1}, SEER_BLOCK, (const float*)x.data(),
                   (const float*)mask.data(), y.data(), n, c, inner);
        x[0] = 0.25f;
        x[inner] = -0.25f;
        emu_launch(mask_grad, dim3{(unsigned)c, 1, 1}, SEER_BLOCK, (const float*)x.data(), (const float*)dy.data(),
                   dm.data(), outer, c, inner);
        bool ok = true;
        std::vector<double> ref(c, 0.0);
        for (long long i = 0; i < n; ++i) {
            long long ch = (i / inner) % c;
            float m = mask[ch];
            float want = i == 0 ? INFINITY : (m == 0 ? 0.0f : x[i] * m);
            if (i == inner) ok &= y[i] == 0.0f;
            ok &= same_bits(y[i], want) && !(m == 0 && std::signbit(y[i]));
            ref[ch] += (double)(dy[i] * x[i]);
        }
        check(ok, "mask apply", (int)c);
        for (long long j = 0; j < c; ++j)
            check(std::fabs(dm[j] - ref[j]) <= 1e-6 * (1 + std::fabs(ref[j])), "mask grad", (int)c, (int)j);
    }
}

// Packs signed codes as seer-kernels' PackedWeights: per row an LSB-first bit stream of
// two's-complement `bits`-bit codes, rows padded to whole bytes.
static std::vector<unsigned char> pack(const std::vector<int>& q, int rows, int cols, int bits, long long& row_bytes) {
    row_bytes = ((long long)cols * bits + 7) / 8;
    std::vector<unsigned char> out(rows * row_bytes, 0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
            for (int t = 0; t < bits; ++t)
                if ((q[r * cols + j] >> t) & 1) {
                    long long i = (long long)j * bits + t;
                    out[r * row_bytes + i / 8] |= (unsigned char)(1 << (i % 8));
                }
    return out;
}

static void test_gemm() {
    const int shapes[][3] = {{1, 1, 1}, {65, 70, 33}, {130, 3, 17}, {2, 64, 64}};
    for (int bits = 2; bits <= 8; ++bits) {
        for (auto& sh : shapes) {
            int m = sh[0], n = sh[1], k = sh[2];
            int qmax = (1 << (bits - 1)) - 1;
            std::vector<int> q(n * k);
            auto r = values(bits * 11 + k, n * k);
            for (int i = 0; i < n * k; ++i) {
                q[i] = (int)std::lround(r[i] * qmax);
                if (i % 13 == 0) q[i] = qmax;
                if (i % 17 == 0) q[i] = -qmax;
            }
            std::vector<float> scales(n);
            for (int c = 0; c < n; ++c) scales[c] = 0.01f * (c + 1);
            long long row_bytes;
            auto w = pack(q, n, k, bits, row_bytes);
            auto x = values(m * 7 + bits, (size_t)m * k);
            std::vector<float> y((size_t)m * n, -1.0f);
            dim3 grid{(unsigned)((n + 63) / 64), (unsigned)((m + 63) / 64), 1};
            if (bits == 8)
                emu_launch(dequant_gemm_i8, grid, SEER_BLOCK, (const float*)x.data(), (const unsigned char*)w.data(),
                           (const float*)scales.data(), y.data(), m, n, k, row_bytes);
            else if (bits == 4)
                emu_launch(dequant_gemm_i4, grid, SEER_BLOCK, (const float*)x.data(), (const unsigned char*)w.data(),
                           (const float*)scales.data(), y.data(), m, n, k, row_bytes);
            // the generic decoder must agree at every width, 8 and 4 included
            std::vector<float> yb((size_t)m * n, -1.0f);
            emu_launch(dequant_gemm_bits, grid, SEER_BLOCK, (const float*)x.data(), (const unsigned char*)w.data(),
                       (const float*)scales.data(), yb.data(), m, n, k, row_bytes, bits);
            bool ok = true;
            for (int i = 0; i < m; ++i)
                for (int c = 0; c < n; ++c) {
                    double acc = 0, mag = 0;
                    for (int j = 0; j < k; ++j) {
                        double p = (double)x[(size_t)i * k + j] * q[c * k + j];
                        acc += p;
                        mag += std::fabs(p);
                    }
                    acc *= scales[c];
                    mag *= scales[c];
                    ok &= std::fabs(yb[(size_t)i * n + c] - acc) <= 1e-5 * (mag + 1e-6);
                    if (bits == 8 || bits == 4) ok &= y[(size_t)i * n + c] == yb[(size_t)i * n + c];
                }
            check(ok, "dequant gemm", bits, m * 10000 + n * 100 + k);
        }
    }
}

int main() {
    test_weight();
    test_act();
    test_mask();
    test_gemm();
    std::printf("emu_check: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
