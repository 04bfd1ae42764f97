#!/usr/bin/env python3
"""Re-runs ONNX Runtime on the committed fixtures (tests/fixtures/onnx) and checks that its
logits on the 64 committed images equal the committed `<model>.ort-logits.f32` (which the
Rust test `seer-onnx fixtures_match_onnx_runtime_logits` compares the importer against)
within 1e-5 relative to each image's largest logit. Run by .ci/run; exits 1 on a mismatch
and fails (does not skip) when onnxruntime is missing.

Usage: python3 tools/check_onnx_fixtures.py
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

MEAN, STD = 0.2860, 0.3530
DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "onnx"


def main():
    x = np.frombuffer((DIR / "eq-images.u8").read_bytes(), np.uint8).reshape(64, 1, 28, 28)
    x = ((x.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)
    bad = 0
    names = ["resnet_proj", "mbv2", "vgg", "inception", "lenet_avg"]
    for name in names:
        sess = ort.InferenceSession(str(DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x})[0]
        want = np.frombuffer((DIR / f"{name}.ort-logits.f32").read_bytes(), "<f4").reshape(got.shape)
        scale = np.maximum(np.abs(want).max(axis=1, keepdims=True), 1e-6)
        worst = float((np.abs(got - want) / scale).max())
        ok = worst <= 1e-5
        bad += not ok
        print(f"{name}: onnxruntime {ort.__version__}, worst relative difference {worst:.2e}"
              f" {'ok' if ok else 'MISMATCH'}")
    print(f"{len(names) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
