#!/usr/bin/env python3
"""Hand-built ResNet-20 policies at the w3a3 budget, each fine-tuned and scored on validation.

Issue 15 asks the main job's w3a3-budget model to beat uniform w3a3 by 0.3 points. This script
asks whether any of a dozen structured policies at that budget does: block-internal pruning
bought back with more bits, weights against activations, bits graded by stage, and 4-bit
weights with a few 3-bit activations on 2-bit ones. Each policy goes through the same
`seernet finetune` (`--steps`, default 300; batch 64, lr 0.01: the main job's final
fine-tune without distillation, `--slim`) and `seernet eval --split val` (5,000 images). The test split is
never read. Stdlib only; not part of CI. docs/benchmarks.md ("Main job", session 27) has
the figures.

    cargo build --release -p seernet-cli
    python3 tools/budget_by_hand.py [--seeds 0,1] [--only w3a3,w4a2] [--steps 300]
        [--out runs/by-hand] [--seernet PATH] [--weight-quant max|lsq]

`--seernet` runs another build of the CLI, e.g. one with an experimental quantizer
(tools/experiments/README.md).

Prints one line per policy and seed, and a JSON summary at the end. A policy whose result
file exists is not fine-tuned again (the run can be stopped and resumed).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEERNET = os.path.join(ROOT, "target", "release", "seernet")
BASELINE = os.path.join(ROOT, "assets", "baselines", "resnet20-fashion-mnist.safetensors")

# `seernet space --arch resnet20 --input 28x28x1`: 12 units. Units 1, 5 and 9 are the convs
# writing each stage's residual stream (tied, stage 1's not prunable); the other nine are the
# blocks' first convs, whose outputs stay inside their block.
INTERNAL = {0, 2, 3, 4, 6, 7, 8, 10, 11}


def stage(u):
    return u // 4


def unit(prune, wbits, abits):
    return {"prune": prune, "wbits": wbits, "abits": abits}


POLICIES = {
    "w3a3": lambda u: unit(0.0, 3, 3),
    "w4a3-internal-p0.25": lambda u: unit(0.25 if u in INTERNAL else 0.0, 4, 3),
    "w3a4-internal-p0.25": lambda u: unit(0.25 if u in INTERNAL else 0.0, 3, 4),
    "w4a4-internal-p0.5": lambda u: unit(0.5 if u in INTERNAL else 0.0, 4, 4),
    "w2a4": lambda u: unit(0.0, 2, 4),
    "w4a2": lambda u: unit(0.0, 4, 2),
    "w3-a4/3/2-by-stage": lambda u: unit(0.0, 3, [4, 3, 2][stage(u)]),
    "w4/3/2-by-stage-a3": lambda u: unit(0.0, [4, 3, 2][stage(u)], 3),
    "w2/3/4-by-stage-a3": lambda u: unit(0.0, [2, 3, 4][stage(u)], 3),
    "w4-a3-on-0+2+3+4+8": lambda u: unit(0.0, 4, 3 if u in {0, 2, 3, 4, 8} else 2),
    "w4-a3-on-0+1": lambda u: unit(0.0, 4, 3 if u in {0, 1} else 2),
    "w4-a3-on-8+9": lambda u: unit(0.0, 4, 3 if u in {8, 9} else 2),
    # Session 30 (learned weight steps): 2-bit weights on half the units.
    "w2a3-internal-w4a3-stream": lambda u: unit(0.0, 2 if u in INTERNAL else 4, 3),
    "w4a3-internal-w2a3-stream": lambda u: unit(0.0, 4 if u in INTERNAL else 2, 3),
    "w2a4-internal-w3a3-stream": lambda u: unit(0.0, *((2, 4) if u in INTERNAL else (3, 3))),
}


def run(args, capture=True):
    r = subprocess.run(args, capture_output=capture, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0", help="fine-tune seeds, comma-separated")
    ap.add_argument("--only", default="", help="policy names, comma-separated (default all)")
    ap.add_argument("--steps", type=int, default=300, help="fine-tune steps (default 300)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "by-hand"))
    ap.add_argument("--weight-quant", default="max", choices=["max", "lsq"],
                    help="the fine-tune's weight quantizer (default max)")
    ap.add_argument("--seernet", default=SEERNET,
                    help="the seernet binary (default: this checkout's target/release/seernet)")
    a = ap.parse_args()
    seernet = a.seernet
    if not os.path.exists(seernet):
        sys.exit(f"{seernet} not found: cargo build --release -p seernet-cli")
    names = [n for n in a.only.split(",") if n] or list(POLICIES)
    for n in names:
        if n not in POLICIES:
            sys.exit(f"unknown policy {n!r}; known: {', '.join(POLICIES)}")
    os.makedirs(a.out, exist_ok=True)

    def cx(extra):
        return json.loads(run([seernet, "complexity", "--arch", "resnet20", "--input",
                               "28x28x1", "--json"] + extra))

    budget = cx(["--uniform", "w3a3"])["total_bops"]
    rows = []
    for name in names:
        pol = {"format": "seernet-policy", "version": 1, "arch": "resnet20",
               "input": "28x28x1", "units": [POLICIES[name](u) for u in range(12)]}
        pfile = os.path.join(a.out, name.replace("/", "_") + ".json")
        with open(pfile, "w") as f:
            json.dump(pol, f)
        c = cx(["--policy", pfile])
        for s in [int(x) for x in a.seeds.split(",")]:
            steps = "" if a.steps == 300 else f"-{a.steps}steps"
            stem = os.path.join(a.out, f"{name.replace('/', '_')}-s{s}{steps}")
            res = stem + ".val.json"
            if not os.path.exists(res):
                run([seernet, "finetune", "--model", BASELINE, "--policy", pfile,
                     "--steps", str(a.steps), "--batch-size", "64", "--seed", str(s), "--slim",
                     "--weight-quant", a.weight_quant,
                     "--out", stem + ".safetensors", "--json"])
                out = run([seernet, "eval", "--model", stem + ".safetensors", "--split",
                           "val", "--json"])
                with open(res + ".tmp", "w") as f:
                    f.write(out)
                os.replace(res + ".tmp", res)
            with open(res) as f:
                top1 = json.load(f)["top1"]
            row = {"policy": name, "seed": s, "steps": a.steps, "bops": c["total_bops"],
                   "bops_of_budget": round(c["total_bops"] / budget, 4),
                   "macs": c["total_macs"], "val_top1": top1}
            rows.append(row)
            print(f"{name:24} seed {s}  {a.steps} steps  BOPs {row['bops_of_budget']:.3f} of w3a3  "
                  f"MACs {c['total_macs'] / 1e6:5.1f} M  validation {top1:.2f}%", flush=True)
    print(json.dumps({"budget_bops": budget, "rows": rows}))


if __name__ == "__main__":
    main()
