#!/usr/bin/env python3
"""tests/slurm/check.py: compare a Slurm-executor run with a local one (issue 19).

Usage: check.py LOCAL_RUN SLURM_RUN
- labels.jsonl: the same header and the same records in the same order, except each record's
  wall time (`seconds`) and its line checksum (`check`, which covers `seconds`);
- policy-*.json: the same files with the same JSON;
- no policy labelled twice: across all task logs of SLURM_RUN/cluster/*/logs/, each policy hash
  is reported finished ("policy <hash> (id ..): val top-1") once, and exactly the store's
  policies are.
Prints one summary line; exits 1 with the differences otherwise.
"""
import glob
import json
import os
import re
import sys


def records(run):
    with open(os.path.join(run, "labels.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    for r in lines[1:]:
        r.pop("seconds")
        r.pop("check")
    return lines


def main():
    local, slurm = sys.argv[1], sys.argv[2]
    errors = []
    a, b = records(local), records(slurm)
    if a[0] != b[0]:
        errors.append("label store headers differ")
    if len(a) != len(b):
        errors.append(f"{len(a) - 1} local records vs {len(b) - 1} slurm records")
    for i, (x, y) in enumerate(zip(a[1:], b[1:])):
        if x != y:
            errors.append(f"record {i + 1}: local {x['hash']} {x['top1']} vs slurm {y['hash']} {y['top1']}")
    pa = sorted(os.path.basename(p) for p in glob.glob(os.path.join(local, "policy-*.json")))
    pb = sorted(os.path.basename(p) for p in glob.glob(os.path.join(slurm, "policy-*.json")))
    if not pa or pa != pb:
        errors.append(f"policy files: {pa} vs {pb}")
    for name in pa:
        with open(os.path.join(local, name)) as f, open(os.path.join(slurm, name)) as g:
            if json.load(f) != json.load(g):
                errors.append(f"{name} differs")
    done = {}
    pat = re.compile(r"\] policy ([0-9a-f]{32}) \(id \d+\): val top-1")
    for log in glob.glob(os.path.join(slurm, "cluster", "*", "logs", "*.out")):
        with open(log, errors="replace") as f:
            for h in pat.findall(f.read()):
                done[h] = done.get(h, 0) + 1
    twice = {h: n for h, n in done.items() if n > 1}
    if twice:
        errors.append(f"labelled more than once: {twice}")
    stored = {r["hash"] for r in b[1:]}
    if set(done) != stored:
        errors.append(
            f"task logs report {len(done)} labels, the store holds {len(stored)} "
            f"(only in logs: {sorted(set(done) - stored)}, only in store: {sorted(stored - set(done))})"
        )
    if errors:
        print("slurm run differs from the local run:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print(
        f"slurm run = local run: {len(b) - 1} records (timings aside), {len(pa)} policy files; "
        f"each of the {len(done)} labels computed once"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
