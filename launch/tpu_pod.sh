#!/usr/bin/env bash
# Cloud TPU pod slice (TPU VM): set up every worker, run training on all of them, or stop it.
#
#   launch/tpu_pod.sh setup NAME ZONE GIT_URL        # clone (or pull) + venv + pip install .[tpu]
#   launch/tpu_pod.sh run   NAME ZONE [main flags]   # python -m rewardmap_jax.main on all workers
#   launch/tpu_pod.sh stop  NAME ZONE                # SIGTERM: each worker saves, then exits
#
#   launch/tpu_pod.sh run my-v5p-64 us-east5-a --config configs/curriculum.py:qwen2_5_vl_7b \
#       --config.model.hf_dir=/mnt/disks/models/Qwen2.5-VL-7B-Instruct --workdir /mnt/runs/7b
#
# Every worker runs the same command (`--worker=all`); REWARDMAP_DISTRIBUTED=1 makes main call
# jax.distributed.initialize(), which finds the coordinator and this worker's id from the TPU
# metadata. The workdir must be a path all workers share (checkpoints: a shared mount or gs://;
# logs are written by process 0). Each worker's output goes to ~/rewardmap.log on that worker,
# its process id to ~/rewardmap.pid (for `stop`).
# Requires `gcloud` with the alpha component and access to the TPU.
set -euo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
action="$1" name="$2" zone="$3"
shift 3
repo_dir="${REPO_DIR:-rewardmap-jax}"  # relative to each worker's home directory

on_all_workers() {
  gcloud alpha compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}

case "$action" in
  setup)
    url="${1:?setup needs the URL of this repository (git clone URL)}"
    on_all_workers "set -e
      if [ -d $repo_dir/.git ]; then git -C $repo_dir pull --ff-only; else git clone $url $repo_dir; fi
      cd $repo_dir && python3 -m venv .venv && . .venv/bin/activate
      pip install -q -U pip && pip install -q -e '.[tpu]'"
    ;;
  run)
    # Quote each flag for the remote shell; nohup keeps training alive if ssh drops.
    flags=""
    if [[ $# -gt 0 ]]; then flags="$(printf '%q ' "$@")"; fi
    # `&` on the nohup line alone, so that $! is python's own pid (for `stop`).
    on_all_workers "cd $repo_dir && . .venv/bin/activate || exit 1
      REWARDMAP_DISTRIBUTED=1 nohup python -m rewardmap_jax.main $flags > ~/rewardmap.log 2>&1 &
      echo \$! > ~/rewardmap.pid"
    echo "started on all workers of $name; follow with:" >&2
    echo "  gcloud alpha compute tpus tpu-vm ssh $name --zone=$zone --worker=0 --command='tail -f ~/rewardmap.log'" >&2
    ;;
  stop)
    # SIGTERM (not SIGKILL): the checkpoint manager saves at the next step, then exits.
    on_all_workers "[ -f ~/rewardmap.pid ] && kill -TERM \$(cat ~/rewardmap.pid) || true"
    ;;
  *)
    usage
    ;;
esac
