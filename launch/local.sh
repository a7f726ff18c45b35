#!/usr/bin/env bash
# Runs N copies of a command on this machine as one multi-process JAX job (CPU, gloo
# collectives), joined through a coordinator on 127.0.0.1: the multi-host code paths (process-0
# logging, per-process data shards, collective checkpointing) without a cluster.
#
#   launch/local.sh 2 python -m rewardmap_jax.main --workdir runs/local2
#   DEVICES_PER_PROCESS=4 launch/local.sh 2 python -m rewardmap_jax.main ...
#
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
# rewardmap_jax.main passes to jax.distributed.initialize(). Output of process i goes to
# stdout/stderr prefixed with "[i]". Exit status: the first non-zero one among the processes.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
num="$1"
shift

# A free port, picked by the OS, unless PORT is given.
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS=cpu
export JAX_NUM_CPU_DEVICES="${DEVICES_PER_PROCESS:-1}"
export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}"
export JAX_NUM_PROCESSES="${num}"

pids=()
# On Ctrl-C or an early failure, stop the processes this script started (and only those).
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < num; i++)); do
  ( export JAX_PROCESS_ID="$i"
    exec "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) ) &
  pids+=("$!")
done

# Wait for the processes in the order they finish; the first failure stops the others, which
# would otherwise block forever in their next collective.
status=0
for ((left = num; left > 0; left--)); do
  rc=0
  wait -n || rc=$?
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    cleanup
  fi
done
exit "$status"
