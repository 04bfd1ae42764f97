#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench label` (issue 14): ResNet-20 of the CIFAR layout on
28x28x1 input, batch 128, 2 threads, eager mode.

Prints one JSON object with the keys of the Rust bench (`qat_train_img_per_s`,
`f32_train_img_per_s`, `f32_eval_img_per_s`, `fq_eval_img_per_s`,
`conv_fwd_bwd_fraction_of_gemm`) plus the variants the issue's table quotes. Needs only
`torch` (`pip install torch`); not part of CI.

    python3 tools/torch_anchor.py [--threads 2] [--reps 7] [--batch 128] [--labels] [--avx2]

`--avx2` caps ATen, oneDNN and MKL at AVX2 (to compare with our `SEER_KERNELS_NO_AVX512=1`
run on an AVX-512 host, as the issue's machine has no AVX-512).

Figures are medians of `--reps` timed repetitions after two warm-ups.
- f32 training step: option-A (zero-padding) shortcuts, SGD with momentum, cross-entropy.
- QAT training step: projection (1x1 conv + BN) shortcuts so every conv+BN(+ReLU) fuses,
  `fuse_modules_qat` then `prepare_qat` with the x86 qconfig (per-channel weights).
- f32 evaluation: option A in eval mode, and the BN-fused projection-shortcut network.
- fake-quantized evaluation: the prepared QAT network in eval mode (observers frozen).
- conv 16->16 28x28 forward+backward GFLOP/s as a fraction of a 1024^3 f32 matmul: the
  kernels alone (`aten::convolution_backward` on a given output gradient of ones), and as
  `_autograd` through autograd (`y.backward(ones)`) and as `_sum_all` through a `.sum()` loss.
- `--labels`: one label of the Rust bench's protocol for each of its 5 policies, timed end to
  end as a PyTorch user would run it (`label_seconds_median`, `label_seconds`): the network
  at the policy's slim widths (uniform prune p of every prunable unit: the block-internal
  convs and the stage-2/3 residual streams, stage 1 kept at 16 as the first conv is fixed),
  option-A shortcuts as ours, `fuse_modules_qat` + `prepare_qat` (x86 qconfig: 8-bit fake
  quantization costs what 3-6 bits do), 4 calibration forward passes of 128 images, 100 SGD
  steps of batch 64 with pad-2 random crops and horizontal flips, then the fake-quantized
  evaluation of 5,000 images in batches of 128. Random images (loading excluded, as it is
  from memory on our side too).
"""

import argparse
import json
import os
import statistics
import sys
import time

if "--avx2" in sys.argv:
    # An AVX2-only CPU (the Zen 3) on an AVX-512 host: ATen's kernels, oneDNN's
    # convolutions and MKL's GEMM each have their own switch, read when torch loads.
    # (ATEN_CPU_CAPABILITY alone leaves oneDNN's AVX-512 convolutions on.)
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        sys.exit(0)
    sys.exit("tools/torch_anchor.py needs PyTorch: pip install torch (see --help)")


class ShortcutA(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, projection):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.add = torch.ao.nn.quantized.FloatFunctional()
        self.relu2 = nn.ReLU()
        self.short = None
        if stride != 1 or cin != cout:
            if projection:
                self.short = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )
            else:
                self.short = ShortcutA(cin, cout, stride)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return self.relu2(self.add.add(y, s))


def kept(c, p):
    """Channels kept of `c` at prune ratio `p` (docs/method.md section 1)."""
    return max(1, round((1 - p) * c))


class ResNet20(nn.Module):
    def __init__(self, projection=False, cin=1, classes=10, prune=0.0):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        blocks, c = [], 16
        for stage, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
            # Stage 1's stream is tied to the fixed first conv, so it is never pruned.
            cout = width if stage == 0 else kept(width, prune)
            for i in range(3):
                b = Block(c, cout, stride if i == 0 else 1, projection)
                mid = kept(width, prune)
                if mid != cout:
                    b.conv1 = nn.Conv2d(c, mid, 3, stride if i == 0 else 1, 1, bias=False)
                    b.bn1 = nn.BatchNorm2d(mid)
                    b.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
                blocks.append(b)
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.dequant(self.fc(x))

    def fuse_groups(self):
        groups = [["conv", "bn", "relu"]]
        for i, b in enumerate(self.blocks):
            p = f"blocks.{i}."
            groups += [[p + "conv1", p + "bn1", p + "relu1"], [p + "conv2", p + "bn2"]]
            if isinstance(b.short, nn.Sequential):
                groups.append([p + "short.0", p + "short.1"])
        return groups


def median_time(f, reps):
    f()
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def train_rate(model, x, y, reps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return x.shape[0] / median_time(step, reps)


def eval_rate(model, x, reps):
    model.eval()

    def run():
        with torch.inference_mode():
            model(x)

    return x.shape[0] / median_time(run, reps)


# The Rust bench's 5 policies: (weight bits, activation bits, prune ratio).
POLICIES = [(4, 3, 0.0), (5, 4, 0.25), (4, 4, 0.25), (6, 4, 0.5), (4, 4, 0.5)]


def augment(x):
    """Pad-2 random crops and random horizontal flips of a batch (the label's augmentation)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2))
    i, j = torch.randint(0, 5, (2,)).tolist()
    x = xp[:, :, i : i + h, j : j + w]
    flip = torch.rand(n) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def label_seconds(prune, train_x, train_y, val_x):
    """Seconds of one label (prepare, fine-tune, validate) at prune ratio `prune`."""
    t0 = time.perf_counter()
    m = ResNet20(False, prune=prune).train()
    m = torch.ao.quantization.fuse_modules_qat(m, m.fuse_groups())
    m.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    torch.ao.quantization.prepare_qat(m, inplace=True)
    with torch.no_grad():
        for b in range(4):
            m(train_x[b * 128 : (b + 1) * 128])
    t1 = time.perf_counter()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for s in range(100):
        i = (s * 64) % (train_x.shape[0] - 64)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(augment(train_x[i : i + 64])), train_y[i : i + 64]).backward()
        opt.step()
    t2 = time.perf_counter()
    m.apply(torch.ao.quantization.disable_observer)
    m.apply(torch.nn.intrinsic.qat.freeze_bn_stats)
    m.eval()
    with torch.inference_mode():
        for b in range(0, val_x.shape[0], 128):
            m(val_x[b : b + 128])
    t3 = time.perf_counter()
    return {"prepare": t1 - t0, "finetune": t2 - t1, "validate": t3 - t2, "total": t3 - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--labels", action="store_true", help="also time the 5 policies' labels")
    ap.add_argument("--avx2", action="store_true", help="cap ATen, oneDNN and MKL at AVX2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = a.batch
    x = torch.randn(n, 1, 28, 28)
    y = torch.randint(0, 10, (n,))
    out = {
        "torch": torch.__version__,
        "threads": a.threads,
        "batch": n,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "load_average_start": os.getloadavg()[0],
    }

    out["f32_train_img_per_s"] = train_rate(ResNet20(False), x, y, a.reps)
    out["f32_eval_img_per_s_option_a"] = eval_rate(ResNet20(False), x, a.reps)

    proj = ResNet20(True).eval()
    fused = torch.ao.quantization.fuse_modules(proj, proj.fuse_groups())
    out["f32_eval_img_per_s"] = eval_rate(fused, x, a.reps)

    qat = ResNet20(True).train()
    qat = torch.ao.quantization.fuse_modules_qat(qat, qat.fuse_groups())
    qat.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    torch.ao.quantization.prepare_qat(qat, inplace=True)
    out["qat_train_img_per_s"] = train_rate(qat, x, y, a.reps)
    qat.apply(torch.ao.quantization.disable_observer)
    qat.apply(torch.nn.intrinsic.qat.freeze_bn_stats)
    out["fq_eval_img_per_s"] = eval_rate(qat, x, a.reps)

    # conv 16->16 28x28 forward+backward vs f32 GEMM, back to back.
    xc = torch.randn(n, 16, 28, 28, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    conv_flop = 3 * 2 * n * 16 * 28 * 28 * 16 * 9

    gy = torch.ones(n, 16, 28, 28)

    def conv_kernels():
        # The kernels alone: forward, then the backward on a given output gradient.
        with torch.no_grad():
            F.conv2d(xc, w, padding=1)
            torch.ops.aten.convolution_backward(
                gy, xc, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
            )

    def conv():
        # Through autograd, the output gradient (ones) given.
        xc.grad, w.grad = None, None
        y = F.conv2d(xc, w, padding=1)
        y.backward(torch.ones_like(y))

    def conv_sum():
        xc.grad, w.grad = None, None
        F.conv2d(xc, w, padding=1).sum().backward()

    m1, m2 = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t_mm = median_time(lambda: torch.mm(m1, m2), a.reps)
    out["gemm_gflops"] = 2 * 1024**3 / t_mm / 1e9
    for key, f in [("", conv_kernels), ("_autograd", conv), ("_sum_all", conv_sum)]:
        gflops = conv_flop / median_time(f, a.reps) / 1e9
        out[f"conv_fwd_bwd{key}_gflops"] = gflops
        out[f"conv_fwd_bwd{key}_fraction_of_gemm"] = gflops / out["gemm_gflops"]
    if a.labels:
        train_x, train_y = torch.randn(6400, 1, 28, 28), torch.randint(0, 10, (6400,))
        val_x = torch.randn(5000, 1, 28, 28)
        rows = {}
        for wb, ab, p in POLICIES:
            rows[f"w{wb}a{ab} prune {p}"] = label_seconds(p, train_x, train_y, val_x)
        out["label_seconds"] = rows
        out["label_seconds_median"] = statistics.median(r["total"] for r in rows.values())
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
