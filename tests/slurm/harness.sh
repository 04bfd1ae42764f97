#!/usr/bin/env bash
# tests/slurm/harness.sh: the cluster tests of issue 19 on a real single-node Slurm.
#
# Usage: tests/slurm/harness.sh [LOCAL_RUN]
#   LOCAL_RUN: a finished `seernet compress --quick` run with the local executor to compare
#   with (.ci/run passes runs/ci-quick); without it one is run first.
#
# It installs slurm-wlm and munge (Debian packages) when missing, starts munged, slurmctld and
# slurmd from a configuration in a temporary directory (tests/slurm/cluster.sh), builds the
# release `seernet`, and then runs the recipes of docs/cluster.md as written:
#  1. the Slurm recipe (the quick main job with --executor slurm), while it runs:
#     - a second driver on the same run directory is refused;
#     - two tasks of the first array are cancelled with scancel: its last pending task (it
#       must be resubmitted) and a running one (resubmitted unless its log shows that its label
#       was made before the cancel arrived);
#     - once the first active round is submitted, the driver is killed with SIGKILL, and the
#       recipe is run again (it must finish without labelling anything twice);
#     then tests/slurm/check.py: labels.jsonl records and policy-*.json equal the local run's
#     (timings aside), every label computed once;
#  2. the Kubernetes recipe: the Indexed Job is rendered and checked, each pod's command is run
#     here with JOB_COMPLETION_INDEX set, and the results are merged.
# It stops exactly the daemons it started (by PID) on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LOCAL_RUN=${1:-}
[ -n "$LOCAL_RUN" ] && LOCAL_RUN=$(realpath "$LOCAL_RUN")

# shellcheck source=tests/slurm/cluster.sh
source tests/slurm/cluster.sh

WORK=$(mktemp -d /tmp/seernet-cluster-test.XXXXXX)
DRIVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -9 "$DRIVER_PID" 2>/dev/null || true
  fi
  slurm_stop
  if [ "$rc" = 0 ]; then rm -rf "$WORK"; else echo "cluster test failed; files kept in $WORK" >&2; fi
}
trap cleanup EXIT

fail() {
  echo "cluster test FAILED: $*" >&2
  for f in "$WORK"/runs/quick-slurm/run.log "$WORK"/driver*.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
  done
  [ -n "${SLURM_TMP:-}" ] && tail -n 15 "$SLURM_TMP"/log/*.log >&2 || true
  exit 1
}

# Waits up to $1 seconds for the command $2 to succeed.
wait_for() {
  local deadline=$((SECONDS + $1))
  until eval "$2" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# The fenced block after `<!-- recipe: NAME -->` in docs/cluster.md.
recipe() {
  awk -v want="<!-- recipe: $1 -->" '
    $0 == want { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' "$ROOT/docs/cluster.md"
}

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "cluster test: installing python3-yaml (to read the rendered Kubernetes Job)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null
fi

cargo build --release --quiet -p seernet-cli
export PATH="$ROOT/target/release:$PATH"
slurm_start

t0=$SECONDS
if [ -z "$LOCAL_RUN" ]; then
  LOCAL_RUN=$WORK/local
  seernet compress --quick --quiet --out "$LOCAL_RUN" >/dev/null
  echo "cluster test: local quick run in $((SECONDS - t0)) s" >&2
fi

# 1. The Slurm recipe, with a cancelled task, a refused second driver and a SIGKILLed driver.
SLURM_RECIPE=$(recipe slurm)
[ -n "$SLURM_RECIPE" ] || fail "no slurm recipe in docs/cluster.md"
RUN=$WORK/runs/quick-slurm
cd "$WORK"
t1=$SECONDS
bash -euo pipefail -c "$SLURM_RECIPE" >"$WORK/driver1.log" 2>&1 &
BASH_PID=$!
wait_for 120 "[ -s '$RUN/driver.lock' ]" || fail "the driver did not take its lock"
DRIVER_PID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$RUN/driver.lock")

if bash -euo pipefail -c "$SLURM_RECIPE" >"$WORK/second.log" 2>&1; then
  fail "a second driver on the same run directory was not refused"
fi
grep -q "held by another driver (PID $DRIVER_PID" "$WORK/second.log" \
  || fail "the second driver's error does not name the holder: $(cat "$WORK/second.log")"
echo "cluster test: a second driver is refused" >&2

# Two tasks of the initial array are cancelled. A running task may finish its label between
# squeue and scancel (a label takes 0.3 s), so whether its cancel cut the label short is read
# from its log afterwards; the last pending task has not started, so it must be resubmitted.
wait_for 120 "grep -q 'batch initial: job' '$RUN/run.log'" || fail "the initial array was not submitted"
JOB=$(sed -n 's/.*batch initial: job \([0-9]*\) submitted.*/\1/p' "$RUN/run.log" | head -n 1)
last_pending() { squeue -h -r -t PENDING -o '%i' | awk -F_ -v j="$JOB" '$1 == j { print $2 }' | sort -n | tail -n 1; }
PENDING_TASK=$(last_pending)
[ -n "$PENDING_TASK" ] || fail "no task of the initial array $JOB was pending"
scancel "${JOB}_$PENDING_TASK" || fail "could not cancel pending task ${JOB}_$PENDING_TASK"
echo "cluster test: cancelled pending task ${JOB}_$PENDING_TASK of the initial array" >&2
running_initial() { squeue -h -t RUNNING -o '%i %j' | awk '$2 ~ /-initial$/ { print $1; exit }'; }
# A task may finish between squeue and scancel: then scancel fails and another one is taken.
TASK=""
for _ in $(seq 20); do
  wait_for 300 '[ -n "$(running_initial)" ]' || fail "no task of the initial array ran"
  t=$(running_initial)
  if scancel "$t" 2>"$WORK/scancel.err" && ! grep -q error "$WORK/scancel.err"; then TASK=$t; break; fi
done
[ -n "$TASK" ] || fail "could not cancel a running task of the initial array"
echo "cluster test: cancelled running task $TASK of the initial array" >&2

wait_for 600 "grep -q 'batch active-1: job' '$RUN/run.log'" || fail "the first active round was not submitted"
kill -9 "$DRIVER_PID"
wait "$BASH_PID" 2>/dev/null || true
echo "cluster test: driver $DRIVER_PID killed with SIGKILL after submitting active-1" >&2
DRIVER_PID=""

bash -euo pipefail -c "$SLURM_RECIPE" >"$WORK/driver2.log" 2>&1 || fail "the restarted driver failed"
echo "cluster test: the restarted driver finished ($((SECONDS - t1)) s for the slurm run)" >&2

# The resubmitted tasks: each cancelled one whose log does not show that its label was made
# before the cancel arrived (the pending one had not started).
RESUB=$(sed -n 's/.*batch initial: .* (tasks \([0-9,-]*\)): resubmitted as job.*/\1/p' "$RUN/run.log")
[ -n "$RESUB" ] || fail "the cancelled tasks were not resubmitted"
LOGS=$RUN/cluster/initial/logs
python3 - "$RESUB" "$JOB" "$PENDING_TASK" "${TASK##*_}" "$LOGS" <<'PY' || fail "the resubmitted tasks are wrong"
import os, re, sys
spec, job, logs = sys.argv[1], sys.argv[2], sys.argv[5]
pending, running = int(sys.argv[3]), int(sys.argv[4])
tasks = set()
for part in spec.split(","):
    a, _, b = part.partition("-")
    tasks.update(range(int(a), int(b or a) + 1))
# A cancelled task is resubmitted unless its log holds its label line, which `seernet label`
# prints once the result file is in place. A task cancelled before it started has no log.
def made_its_label(task):
    path = os.path.join(logs, f"{job}_{task}.out")
    if not os.path.exists(path):
        return False
    with open(path, errors="replace") as f:
        return re.search(r"\] policy [0-9a-f]{32} \(id \d+\): val top-1", f.read()) is not None
want = {t for t in (pending, running) if not made_its_label(t)}
assert tasks == want, f"resubmitted tasks {sorted(tasks)}, expected {sorted(want)}"
print(f"cluster test: tasks {sorted(tasks)} resubmitted (cancelled: pending {pending}, running {running})", file=sys.stderr)
PY
grep -q "took over the driver lock" "$RUN/run.log" || fail "the stale lock was not reported"
[ "$(grep -c 'batch active-1: job .* submitted' "$RUN/run.log")" = 1 ] \
  || fail "the restarted driver submitted active-1 again"
[ ! -e "$RUN/driver.lock" ] || fail "the lock was left behind"
python3 "$ROOT/tests/slurm/check.py" "$LOCAL_RUN" "$RUN" || fail "slurm and local runs differ"
python3 - "$LOCAL_RUN/summary.json" "$RUN/summary.json" <<'PY' >&2
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"cluster test: local run {a['seconds']:.0f} s, slurm run (second driver) {b['seconds']:.0f} s")
PY

# 2. The Kubernetes recipe: render, check, run every pod's command here, merge.
# Run from a directory that looks like the clone (the recipe copies the committed baseline).
export DATA=$WORK/k8s
mkdir -p "$DATA" "$WORK/clone"
ln -s "$ROOT/assets" "$WORK/clone/assets"
cd "$WORK/clone"
bash -euo pipefail -c "$(recipe k8s-render)" || fail "the k8s-render recipe failed"
mv job.yaml "$WORK/job.yaml"
python3 - "$WORK/job.yaml" <<'PY' || fail "the Indexed Job is wrong or one of its pods failed"
import json, os, subprocess, sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
spec = job["spec"]
assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1", job
assert spec["completionMode"] == "Indexed", spec
assert (spec["completions"], spec["parallelism"]) == (3, 2), spec
pod = spec["template"]["spec"]
assert pod["restartPolicy"] == "Never"
assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "seernet-data"
c = pod["containers"][0]
assert c["volumeMounts"][0]["mountPath"] == os.environ["DATA"]
for i in range(spec["completions"]):
    env = dict(os.environ, JOB_COMPLETION_INDEX=str(i))
    subprocess.run(c["command"], env=env, check=True, stdout=subprocess.DEVNULL)
print(f"cluster test: Indexed Job of {spec['completions']} pods rendered; each pod's command ran", file=sys.stderr)
PY
bash -euo pipefail -c "$(recipe k8s-merge)" | grep -q "3 added" || fail "k8s-merge did not add the 3 labels"
echo "cluster test: passed in $((SECONDS - t0)) s" >&2
