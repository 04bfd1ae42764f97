#!/usr/bin/env bash
# tests/slurm/cluster.sh: start a throw-away single-node Slurm (munged, slurmctld, slurmd) in a
# temporary directory. Source it from a bash script: it defines `slurm_start` (installs the Debian
# packages slurm-wlm and munge when missing, writes the configuration, starts the three daemons
# in the foreground of background jobs, exports SLURM_CONF and waits until the node is idle) and
# `slurm_stop` (stops exactly the daemons it started, by PID). The caller sets the trap.
# Configuration: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# SelectType=select/cons_tres, no accounting database (so `sacct` is not available: the
# driver polls `squeue`).

SLURM_PIDS=()
SLURM_TMP=""

# First free TCP port at or above $1 (bash's /dev/tcp: a port nobody answers on is free).
_free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

slurm_install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  echo "slurm: installing slurm-wlm and munge (Debian packages)" >&2
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "slurm: need root and apt-get to install slurm-wlm and munge" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null
}

slurm_start() {
  slurm_install
  SLURM_TMP=$(mktemp -d /tmp/seernet-slurm.XXXXXX)
  local t=$SLURM_TMP host cpus ctld_port d_port
  host=$(hostname -s)
  cpus=$(nproc)
  mkdir -p "$t/munge" "$t/state" "$t/spool" "$t/log"
  chmod 700 "$t/munge"
  mungekey --create --keyfile="$t/munge/munge.key" >/dev/null
  chmod 400 "$t/munge/munge.key"
  munged --foreground --force --key-file="$t/munge/munge.key" \
    --socket="$t/munge/munge.socket" --pid-file="$t/munge/munged.pid" \
    --log-file="$t/log/munged.log" --seed-file="$t/munge/munged.seed" >>"$t/log/munged.out" 2>&1 &
  SLURM_PIDS+=($!)
  for _ in $(seq 50); do [ -S "$t/munge/munge.socket" ] && break; sleep 0.1; done
  ctld_port=$(_free_port 16817)
  d_port=$(_free_port $((ctld_port + 1)))
  cat >"$t/slurm.conf" <<CONF
ClusterName=seernet-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$t/munge/munge.socket
StateSaveLocation=$t/state
SlurmdSpoolDir=$t/spool
SlurmctldPidFile=$t/slurmctld.pid
SlurmdPidFile=$t/slurmd.pid
SlurmctldLogFile=$t/log/slurmctld.log
SlurmdLogFile=$t/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$t/slurm.conf"
  slurmctld -D -f "$SLURM_CONF" >>"$t/log/slurmctld.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurmd -D -f "$SLURM_CONF" >>"$t/log/slurmd.out" 2>&1 &
  SLURM_PIDS+=($!)
  for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
      echo "slurm: single node $host ($cpus CPUs) up, config $SLURM_CONF" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "slurm: the node did not become idle; logs in $t/log" >&2
  sinfo >&2 || true
  tail -n 20 "$t/log/"*.log >&2 || true
  return 1
}

slurm_stop() {
  local i pid
  # Jobs still queued or running: cancel them and give their steps a moment to end, so that no
  # task outlives the cluster.
  if [ -n "$SLURM_TMP" ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 75); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for ((i = ${#SLURM_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${SLURM_PIDS[$i]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SLURM_PIDS=()
  if [ -n "$SLURM_TMP" ]; then rm -rf "$SLURM_TMP"; fi
  SLURM_TMP=""
}
