#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench label` (issue 14): ResNet-20 of the CIFAR layout on
28x28x1 input, batch 128, 2 threads, eager mode.

Prints one JSON object with the keys of the Rust bench (`qat_train_img_per_s`,
`f32_train_img_per_s`, `f32_eval_img_per_s`, `fq_eval_img_per_s`,
`conv_fwd_bwd_fraction_of_gemm`) plus the variants the issue's table quotes. Needs only
`torch` (`pip install torch`); not part of CI.

    python3 tools/torch_anchor.py [--threads 2] [--reps 7]

Figures are medians of `--reps` timed repetitions after two warm-ups.
- f32 training step: option-A (zero-padding) shortcuts, SGD with momentum, cross-entropy.
- QAT training step: projection (1x1 conv + BN) shortcuts so every conv+BN(+ReLU) fuses,
  `fuse_modules_qat` then `prepare_qat` with the x86 qconfig (per-channel weights).
- f32 evaluation: option A in eval mode, and the BN-fused projection-shortcut network.
- fake-quantized evaluation: the prepared QAT network in eval mode (observers frozen).
- conv 16->16 28x28 forward+backward GFLOP/s as a fraction of a 1024^3 f32 matmul.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class ResNet20(nn.Module):
    def __init__(self, projection=False, cin=1, classes=10):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        blocks, c = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                blocks.append(Block(c, cout, stride if i == 0 else 1, projection))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
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

    def conv():
        F.conv2d(xc, w, padding=1).sum().backward()

    m1, m2 = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t_conv = median_time(conv, a.reps)
    t_mm = median_time(lambda: torch.mm(m1, m2), a.reps)
    out["conv_fwd_bwd_gflops"] = conv_flop / t_conv / 1e9
    out["gemm_gflops"] = 2 * 1024**3 / t_mm / 1e9
    out["conv_fwd_bwd_fraction_of_gemm"] = out["conv_fwd_bwd_gflops"] / out["gemm_gflops"]
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
