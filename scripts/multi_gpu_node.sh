#!/usr/bin/env bash
# One node, several GPUs: MirroredStrategy over every visible GPU (one replica per GPU).
#
#   scripts/multi_gpu_node.sh flags/table2_C1.flags my_c1_run [extra flags...]
#
# The global batch (--sb_batch_size / --lb_batch_size) is split evenly over the GPUs and must be a
# multiple of their count; the start of the log shows the per-replica batch. Plain BN then
# normalises each GPU's share (ghost batches of B / #GPUs); add --bn_layer=sync for statistics over the
# whole batch. The run folder is outputs/<run name>: if the job dies (node failure, time limit),
# the same command resumes from the last epoch's checkpoint and skips finished runs.
# Restrict the GPUs with CUDA_VISIBLE_DEVICES=0,1 as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  echo "usage: $0 FLAGFILE RUN_NAME [extra flags...]" >&2
  exit 2
fi
flagfile=$1 run_name=$2
shift 2
exec "${PYTHON:-.venv/bin/python}" run_experiments.py --flagfile="$flagfile" --strategy=mirrored \
  --run_name="$run_name" "$@"
