#!/usr/bin/env bash
# MultiWorkerMirroredStrategy without a scheduler: N worker processes on this machine (or, with
# HOSTS="host1 host2", one per host started by you), each given its TF_CONFIG. Useful to try the
# multi-worker path on a laptop; tests/test_scale_out.py does the same with two CPU workers.
#
#   N=2 scripts/multi_worker_local.sh flags/table2_F1_cpu.flags try_mw [extra flags...]
#
# Worker 0 is the chief: it writes outputs/<run name>; the others write to scratch folders.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  echo "usage: N=2 $0 FLAGFILE RUN_NAME [extra flags...]" >&2
  exit 2
fi
flagfile=$1 run_name=$2
shift 2
n=${N:-2} port=${PORT_BASE:-23456}
workers=$(for ((i = 0; i < n; i++)); do printf '"127.0.0.1:%d",' $((port + i)); done)
cluster="{\"worker\": [${workers%,}]}"
logs=${LOG_DIR:-outputs}
mkdir -p "$logs"
pids=()
for ((i = 0; i < n; i++)); do
  TF_CONFIG="{\"cluster\": $cluster, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    "${PYTHON:-.venv/bin/python}" run_experiments.py --flagfile="$flagfile" \
    --strategy=multi_worker --run_name="$run_name" "$@" > "$logs/$run_name-worker$i.log" 2>&1 &
  pids+=($!)
done
echo "workers ${pids[*]}; logs in $logs/$run_name-worker*.log"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
