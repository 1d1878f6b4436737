#!/usr/bin/env bash
# The first thing to run on a machine with a GPU: dualnet's GPU tests, a one-epoch training on
# cuda against the same seed on cpu, and the bench with PyTorch and launch counts. Everything it
# writes goes to bench/results/<gpu-name>/, with the versions, the driver and this exact command.
#
# Runs the project from this checkout and installs nothing from the network: array-api-compat and
# array-api-strict (the two dependencies GPU images lack) come as wheels from --wheels DIR, e.g.
#   python3 -m pip download --no-deps -d .whl array-api-compat array-api-strict   # where pip works
#   bash scripts/gpu_acceptance.sh --wheels .whl                                 # on the GPU machine
# Without a usable GPU it still runs, and says that CUDA was skipped and why.
# Options: --wheels DIR, --out DIR (default bench/results), --quick (a smaller bench, for a check).
set -uo pipefail
cd "$(dirname "$0")/.."
cmdline="bash scripts/gpu_acceptance.sh $*"
wheels="" outroot="bench/results" quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --out) outroot="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "gpu_acceptance.sh: unknown option $1 (use --wheels DIR, --out DIR, --quick)" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
if [ -n "$wheels" ]; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || { echo "gpu_acceptance.sh: could not install the wheels in $wheels" >&2; exit 2; }
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
"$py" -c "import dualnet, array_api_compat, array_api_strict" \
  || { echo "gpu_acceptance.sh: dualnet's dependencies are missing: pass --wheels DIR" >&2; exit 2; }

gpu=$("$py" -c "from dualnet.backend import cuda_status as s; st = s()
print(st['devices'][0]['name'] if st['available'] else 'no-gpu')")
slug=$(echo "$gpu" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
out="$outroot/$slug"
mkdir -p "$out"
start=$(date +%s)
{
  echo "command: $cmdline"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  "$py" -m dualnet info
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"
status=0

echo "== 1/3 pytest -m gpu"
"$py" -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$out/pytest-gpu.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1

echo "== 2/3 one epoch on cuda and on cpu, same seed"
for dev in cuda cpu; do
  "$py" -m dualnet train --device "$dev" --dataset digits --epochs 1 --seed 0 --no-progress --no-plots \
      --overwrite --out "$out/train-$dev" > "$out/train-$dev.log" 2>&1
  echo "$dev: exit $? ($(tail -n 1 "$out/train-$dev.log"))"
done
"$py" - "$out" <<'PY' | tee "$out/train-compare.txt"
import json, os, sys
out = sys.argv[1]
runs = {}
for dev in ("cuda", "cpu"):
    p = os.path.join(out, f"train-{dev}", "metrics.json")
    runs[dev] = json.load(open(p)) if os.path.exists(p) else None
if runs["cuda"] is None:
    log = open(os.path.join(out, "train-cuda.log")).read().strip().splitlines()
    print(f"cuda: skipped ({log[-1] if log else 'no output'})")
elif runs["cpu"] is not None:
    a, b = runs["cuda"]["history"], runs["cpu"]["history"]
    d = max(abs(x - y) for x, y in zip(a["test_acc"], b["test_acc"]))
    print(f"test accuracy after 1 epoch: cuda {a['test_acc'][-1]:.4f}, cpu {b['test_acc'][-1]:.4f} (|diff| {d:.4f}); "
          f"images/s cuda {a['images_per_s'][-1]:,.0f}, cpu {b['images_per_s'][-1]:,.0f}")
PY

echo "== 3/3 bench"
if [ "$quick" -eq 1 ]; then
  bench=(--devices cpu,cuda --models simple_convnet,mlp --batch-sizes 32,100 --steps 5 --time-budget 2)
else
  bench=(--devices cpu,cuda --batch-sizes 32,100,256,1024 --time-budget 4)
fi
"$py" -m dualnet bench "${bench[@]}" --compare-torch --count-ops --out "$out" 2>&1 | tee "$out/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
"$py" scripts/bench_table.py "$out/bench.json" > "$out/bench-table.md" 2>&1 || status=1

echo "== done in $(( $(date +%s) - start )) s; results in $out (exit $status)"
exit $status
