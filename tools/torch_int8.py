#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench int` (issue 18): f32 and int8 post-training-quantized
inference of the networks the Rust bench runs, batch 128, 2 threads, eager mode.

Prints one JSON object. Needs only `torch` (`pip install torch`); not part of CI.

    python3 tools/torch_int8.py [--threads 2] [--reps 9] [--batch 128]

Networks (random weights, 28x28x1 input, as in the Rust bench):
- ResNet-20 of the CIFAR layout. f32: eval mode, BatchNorm folded (`fuse_modules`), with
  option-A shortcuts (`f32_option_a_images_per_s`) and with projection shortcuts
  (`f32_images_per_s`). int8: eager PTQ with the x86 (fbgemm) engine and its default qconfig
  (per-channel weights, reduce-range activations), projection shortcuts so that every
  conv+BN(+ReLU) fuses, calibrated on 4 random batches (`int8_images_per_s`).
- LeNet-5 (the default main job's network, unpruned): the same two variants
  (`lenet5_f32_images_per_s`, `lenet5_int8_images_per_s`).
- int8 GEMM on 1024^3 (`torch.ops.quantized.linear`, u8 x i8 -> u8) against the f32 matmul
  (`int8_gemm_gops_1024`, `f32_gemm_gflops_1024`).

Figures are medians of `--reps` timed repetitions after two warm-ups; `*_per_cpu_s` divide by
the process CPU time of those repetitions instead (all threads; less sensitive to other jobs
on a shared machine). The load average at start and end is printed beside them; `*_per_s_best` is the fastest repetition, comparable
with the Rust bench's best-of figures.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_anchor import ResNet20  # noqa: E402  (same network as the label bench)


class LeNet5(nn.Module):
    """conv 5x5 (6, pad 2), max-pool, conv 5x5 (16), max-pool, 120, 84, 10 (ReLUs)."""

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(400, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, 10)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = F.max_pool2d(self.relu1(self.conv1(self.quant(x))), 2)
        x = F.max_pool2d(self.relu2(self.conv2(x)), 2)
        x = x.flatten(1)
        x = self.relu4(self.fc2(self.relu3(self.fc1(x))))
        return self.dequant(self.fc3(x))

    def fuse_groups(self):
        return [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"], ["fc2", "relu4"]]


def median_time(f, reps):
    """Median wall seconds per call, process CPU seconds (all threads) per call, and the
    fastest call (the Rust bench reports best-of times)."""
    f()
    f()
    ts = []
    c0 = time.process_time()
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), (time.process_time() - c0) / reps, min(ts)


RATES = {}


def eval_rate(model, x, reps, key):
    """Images/s (wall, median); images per CPU-second and the best-of images/s go to
    RATES (`*_per_cpu_s`, `*_per_s_best`)."""
    model.eval()

    def run():
        with torch.inference_mode():
            model(x)

    wall, cpu, best = median_time(run, reps)
    RATES[key.replace("_per_s", "_per_cpu_s")] = x.shape[0] / cpu
    RATES[key + "_best"] = x.shape[0] / best
    return x.shape[0] / wall


def ptq(model, calib):
    """Fuses, prepares with the x86 qconfig, calibrates and converts (eager mode)."""
    model.eval()
    model = torch.ao.quantization.fuse_modules(model, model.fuse_groups())
    torch.backends.quantized.engine = "x86"
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    with torch.inference_mode():
        for x in calib:
            model(x)
    return torch.ao.quantization.convert(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = a.batch
    x = torch.rand(n, 1, 28, 28)
    calib = [torch.rand(n, 1, 28, 28) for _ in range(4)]
    out = {
        "torch": torch.__version__,
        "threads": a.threads,
        "batch": n,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": os.getloadavg()[0],
    }

    k = "f32_option_a_images_per_s"
    out[k] = eval_rate(ResNet20(False).eval(), x, a.reps, k)
    proj = ResNet20(True).eval()
    fused = torch.ao.quantization.fuse_modules(proj, proj.fuse_groups())
    out["f32_images_per_s"] = eval_rate(fused, x, a.reps, "f32_images_per_s")
    k = "int8_images_per_s"
    out[k] = eval_rate(ptq(ResNet20(True), calib), x, a.reps, k)
    k = "lenet5_f32_images_per_s"
    out[k] = eval_rate(LeNet5().eval(), x, a.reps, k)
    k = "lenet5_int8_images_per_s"
    out[k] = eval_rate(ptq(LeNet5(), calib), x, a.reps, k)
    out.update(RATES)

    # int8 GEMM 1024^3: quantized linear (u8 activations x per-tensor i8 weights -> u8).
    s = 1024
    af, wf = torch.rand(s, s), torch.randn(s, s)
    aq = torch.quantize_per_tensor(af, 1 / 255, 0, torch.quint8)
    wq = torch.quantize_per_tensor(wf, wf.abs().max().item() / 127, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    t_q = median_time(lambda: torch.ops.quantized.linear(aq, packed, 0.1, 0), a.reps)[0]
    t_f = median_time(lambda: torch.mm(af, wf.t()), a.reps)[0]
    out["int8_gemm_gops_1024"] = 2 * s**3 / t_q / 1e9
    out["f32_gemm_gflops_1024"] = 2 * s**3 / t_f / 1e9
    out["int8_gemm_vs_f32_ratio"] = out["int8_gemm_gops_1024"] / out["f32_gemm_gflops_1024"]
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
