#!/usr/bin/env python3
"""Runs every ONNX QDQ export of a main-job run directory (`RUN/model-*.onnx`, docs/export.md)
in ONNX Runtime on the test split and checks its top-1 predictions against those of our
integer engine on the same images (`seernet infer --predictions --save-images` on the
`model-*.safetensors` beside it): agreement must be at least --min-agreement percent (issue
20: 99.9). Run by .ci/run after the quick ONNX job; exits 1 when a model falls short, when
there is no export to check, and fails (does not skip) when onnxruntime is missing.

Usage: python3 tools/check_qdq_export.py RUN --dataset DATASET [--seernet target/release/seernet]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def engine_predictions(seernet, model, dataset, tmp):
    """The integer engine's test-split predictions, labels and the images (n, C, H, W)."""
    preds, images = Path(tmp) / "predictions.json", Path(tmp) / "images.u8"
    subprocess.run(
        [seernet, "infer", "--model", str(model), "--dataset", dataset, "--no-compare",
         "--predictions", str(preds), "--save-images", str(images), "--json"],
        check=True, stdout=subprocess.DEVNULL)
    info = json.loads(preds.read_text())
    n, (c, h, w) = info["n"], info["shape"]
    px = np.frombuffer(images.read_bytes(), np.uint8).reshape(n, c, h, w)
    return np.array(info["predictions"]), np.array(info["labels"]), px


def onnx_predictions(path, px):
    """ONNX Runtime's top-1 on the images, normalised with the export's own metadata."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    c = px.shape[1]
    mean = np.array(json.loads(meta["input_mean"]), np.float32).reshape(1, c, 1, 1)
    std = np.array(json.loads(meta["input_std"]), np.float32).reshape(1, c, 1, 1)
    out = []
    for s in range(0, len(px), 256):
        x = ((px[s:s + 256].astype(np.float32) / 255 - mean) / std).astype(np.float32)
        out.append(sess.run(None, {"input": x})[0].argmax(axis=1))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory of seernet compress")
    ap.add_argument("--dataset", required=True, help="the run's dataset (as given to compress)")
    ap.add_argument("--seernet", default="target/release/seernet", help="the seernet binary")
    ap.add_argument("--min-agreement", type=float, default=99.9, help="percent")
    a = ap.parse_args()
    models = sorted(a.run.glob("model-*.onnx"))
    if not models:
        print(f"no model-*.onnx in {a.run}: nothing exported to check", file=sys.stderr)
        return 1
    bad = 0
    for onnx in models:
        with tempfile.TemporaryDirectory() as tmp:
            engine, labels, px = engine_predictions(
                a.seernet, onnx.with_suffix(".safetensors"), a.dataset, tmp)
        ours = onnx_predictions(onnx, px)
        n = len(engine)
        same = int((ours == engine).sum())
        agree = 100.0 * same / n
        ok = agree >= a.min_agreement
        bad += not ok
        print(f"{onnx.name}: onnxruntime {ort.__version__}, {onnx.stat().st_size} bytes; "
              f"top-1 agrees with the integer engine on {same}/{n} test images ({agree:.3f}%), "
              f"onnxruntime top-1 {100.0 * (ours == labels).mean():.2f}%, "
              f"engine top-1 {100.0 * (engine == labels).mean():.2f}% "
              f"{'ok' if ok else 'BELOW ' + str(a.min_agreement) + '%'}")
    print(f"{len(models) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
