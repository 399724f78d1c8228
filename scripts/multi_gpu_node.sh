#!/usr/bin/env bash
# One node, several GPUs. By default one lbtf process per GPU, each training and measuring its
# share of the experiment's runs (--shard=i/N, CUDA_VISIBLE_DEVICES=i), all in one run folder;
# then the same command without --shard writes results.json, the report and the figures.
# A study is many small runs: one run per GPU keeps every GPU busy, with XLA, and no collectives.
#
#   scripts/multi_gpu_node.sh flags/table2_C1.flags my_c1_run [extra flags...]
#   MODE=mirrored scripts/multi_gpu_node.sh flags/table2_C1.flags my_c1_run   # one large run
#
# MODE=mirrored runs each run on every GPU at once (MirroredStrategy, one replica per GPU): the
# global batch (--sb_batch_size / --lb_batch_size) must split evenly over the GPUs, and BN still
# normalises over the whole global batch (synchronized), ghost BN over ghosts of the global batch:
# the same experiment as on one device. GPUS=0,1,2 picks the GPUs (default: every GPU nvidia-smi
# lists). If the job dies, the same command resumes: finished runs and measurements are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  echo "usage: [MODE=shards|mirrored] [GPUS=0,1,...] $0 FLAGFILE RUN_NAME [extra flags...]" >&2
  exit 2
fi
flagfile=$1 run_name=$2
shift 2
python=${PYTHON:-.venv/bin/python}
mode=${MODE:-shards}
if [[ $mode == mirrored ]]; then
  exec "$python" run_experiments.py --flagfile="$flagfile" --strategy=mirrored \
    --run_name="$run_name" "$@"
fi
if [[ $mode != shards ]]; then
  echo "error: MODE must be shards or mirrored, not '$mode'" >&2
  exit 2
fi
gpus=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)}
IFS=, read -r -a ids <<< "${gpus:-0}"
n=${#ids[@]}
pids=()
for i in "${!ids[@]}"; do
  CUDA_VISIBLE_DEVICES=${ids[$i]} "$python" run_experiments.py --flagfile="$flagfile" \
    --run_name="$run_name" --shard="$i/$n" "$@" > "outputs/${run_name}.shard$i.log" 2>&1 &
  pids+=($!)
done
echo "started $n shard(s) of $run_name on GPUs ${gpus:-0}; logs: outputs/${run_name}.shard*.log"
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "shard $i/$n failed: see outputs/${run_name}.shard$i.log" >&2; status=1; }
done
if [[ $status -ne 0 ]]; then
  echo "error: a shard failed; run this script again to resume the unfinished runs" >&2
  exit 1
fi
# Every record is there: results, report and figures (on the first GPU).
CUDA_VISIBLE_DEVICES=${ids[0]} exec "$python" run_experiments.py --flagfile="$flagfile" \
  --run_name="$run_name" "$@"
