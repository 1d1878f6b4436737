#!/usr/bin/env bash
# The first thing to run on a machine with a GPU. It passes only when CUDA really ran:
#   1. CUDA answers: the probe (a kernel, a matrix product, a random draw) works on GPU 0;
#   2. pytest -m gpu: every test that takes the device fixture, on cuda; none may fail, and some must run;
#   3. training on cuda and on cpu with the same seed (3 epochs of the embedded digits) both finish
#      and their test accuracies agree within TRAIN_BOUND;
#   4. the bench (cpu and cuda, PyTorch beside, op counts) has cuda rows.
# Anything else ends it at once with exit 1 and one line "gpu_acceptance: FAIL: <why>" (also in
# DIR/result.txt). Results, logs, versions, driver, GPU name and this exact command go to DIR.
#
# It installs nothing from the network and runs the project from this checkout (not pip-installed).
# GPU images lack some of dualnet's dependencies: make their wheels where pip works, carry them over:
#   bash scripts/gpu_wheels.sh .whl                                          # where pip works
#   bash scripts/gpu_acceptance.sh --quick --wheels .whl --out gpu-results   # on the GPU machine
#
# Options: --out DIR (required), --wheels DIR, --quick (a smaller bench: well under 8 minutes).
# For the script's own test: --device sim runs the same stages on the simulated device (no GPU
# needed), and --tests EXPR narrows stage 2 to pytest -k EXPR.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmdline="bash scripts/gpu_acceptance.sh $*"
out="" wheels="" quick=0 device=cuda tests=""
usage() { echo "gpu_acceptance.sh: $1 (usage: --out DIR [--quick] [--wheels DIR])" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage "--out needs a folder"; out="$2"; shift 2 ;;
    --wheels) [ $# -ge 2 ] || usage "--wheels needs a folder"; wheels="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --device) [ $# -ge 2 ] || usage "--device needs cuda or sim"; device="$2"; shift 2 ;;
    --tests) [ $# -ge 2 ] || usage "--tests needs a pytest -k expression"; tests="$2"; shift 2 ;;
    *) usage "unknown option $1" ;;
  esac
done
[ -n "$out" ] || usage "--out DIR is required: results must outlive a machine that is given back"
case "$device" in cuda) marker=gpu ;; sim) marker=sim ;; *) usage "--device must be cuda or sim" ;; esac
mkdir -p "$out" && out=$(cd "$out" && pwd) || usage "cannot create --out $out"
[ -z "$wheels" ] || wheels=$(cd "$wheels" 2>/dev/null && pwd) || usage "no wheels folder $wheels"
cd "$root"
rm -f "$out/result.txt"
fail() { echo "gpu_acceptance: FAIL: $*" | tee "$out/result.txt" >&2; exit 1; }
py=${PYTHON:-python3}
start=$(date +%s)

# -- 0. dependencies from the wheels folder, the project from this checkout
site=""
if [ -n "$wheels" ]; then
  site=$(mktemp -d)
  ls "$wheels"/*.whl >/dev/null 2>&1 || fail "no .whl files in $wheels (make them with scripts/gpu_wheels.sh DIR)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$wheels"/*.whl > "$out/wheels.log" 2>&1 || fail "could not install the wheels in $wheels (see $out/wheels.log)"
fi
# Children (pytest's subprocess tests, the CLI runs) inherit this path: the checkout first.
export PYTHONPATH="$root${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# CuPy compiles kernels at first use into its cache: a writable temp folder on a read-only image.
export CUPY_CACHE_DIR=$(mktemp -d)
missing=$("$py" -c "
import importlib.util as u
print(' '.join(m for m in ('numpy', 'array_api_compat', 'array_api_strict', 'pytest', 'tqdm', 'threadpoolctl')
               if u.find_spec(m) is None))")
[ -z "$missing" ] || fail "missing Python packages: $missing; pass --wheels DIR (scripts/gpu_wheels.sh DIR makes it where pip works)"

{
  echo "command: $cmdline"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  "$py" -m dualnet info
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  else
    echo "nvidia-smi: not found"
  fi
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"
"$py" -c "import json; from dualnet.backend import versions; print(json.dumps(versions(), indent=1))" > "$out/versions.json"

# -- 1. CUDA answers (a driver that answers while CUDA cannot start is a failure, not a skip)
echo "== 1/4 the device"
if [ "$device" = cuda ]; then
  probe=$("$py" -c "
from dualnet.backend import cuda_status
st = cuda_status()
print('ok ' + st['devices'][0]['name'] if st['available'] else 'no ' + st['reason'])" 2>&1 | tail -n 1)
  if [ "${probe%% *}" != ok ]; then
    reason=${probe#* }
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L > "$out/nvidia-smi.txt" 2>&1; then
      fail "nvidia-smi answers ($(head -n 1 "$out/nvidia-smi.txt")) but CUDA is unusable: $reason"
    fi
    fail "no GPU answers here (nvidia-smi is missing or fails) and CUDA is unusable: $reason"
  fi
  echo "${probe#ok }" > "$out/gpu-name.txt"
else
  echo "simulated device (the script's own test)" > "$out/gpu-name.txt"
fi
echo "device under test: $device ($(cat "$out/gpu-name.txt"))"

# -- 2. the test suite on the device
echo "== 2/4 pytest -m $marker${tests:+ -k \"$tests\"}"
"$py" -m pytest -m "$marker" ${tests:+-k "$tests"} -q -p no:cacheprovider -rs --junitxml "$out/pytest.xml" \
    2>&1 | tee "$out/pytest.log"
counts=$("$py" - "$out/pytest.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).iter("testcase"))
bad = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
print(len(cases) - len(bad) - len(skipped), len(bad), len(skipped),
      ", ".join(c.get("name") for c in bad[:5]) + (" ..." if len(bad) > 5 else ""))
PY
) || fail "pytest wrote no readable report (see $out/pytest.log)"
read -r passed failed skipped names <<< "$counts"
[ "$failed" -eq 0 ] || fail "$failed $device test(s) failed: $names (see $out/pytest.log)"
[ "$passed" -gt 0 ] || fail "no $device test ran ($skipped skipped: $(grep -m1 -o 'SKIPPED.*' "$out/pytest.log" || echo 'none selected'))"
echo "$device tests: $passed passed, $skipped skipped"

# -- 3. the same training on the device and on the CPU
echo "== 3/4 3 epochs on $device and on cpu, same seed"
for dev in "$device" cpu; do
  "$py" -m dualnet train --device "$dev" --dataset digits --epochs 3 --seed 0 --no-progress --no-plots \
      --overwrite --out "$out/train-$dev" > "$out/train-$dev.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || fail "training on $dev failed (exit $rc): $(tail -n 1 "$out/train-$dev.log")"
done
"$py" - "$out" "$device" <<'PY' | tee "$out/train-compare.txt" || fail "training on $device disagrees with cpu: $(tail -n 1 "$out/train-compare.txt")"
import json, os, sys
out, device = sys.argv[1], sys.argv[2]
# Same seed, but the batches are shuffled by each device's own generator (cuRAND's Philox on a GPU,
# NumPy's PCG64 on the CPU), so the two runs differ as two seeds do: over 8 seeds on the CPU, 3 epochs'
# test accuracy on digits spread over TRAIN_SPREAD; a gap beyond TRAIN_BOUND is a wrong result.
TRAIN_SPREAD, TRAIN_BOUND = "0.937-0.963", 0.06
m = {d: json.load(open(os.path.join(out, f"train-{d}", "metrics.json"))) for d in (device, "cpu")}
spec = m[device]["device"]["spec"]
if not spec.startswith(device):
    print(f"the run asked for {device} ran on {spec}"); sys.exit(1)
a, b = m[device]["test_acc"], m["cpu"]["test_acc"]
ips = {d: m[d]["history"]["images_per_s"][-1] for d in m}
print(f"test accuracy after 3 epochs: {device} {a:.4f}, cpu {b:.4f} (|diff| {abs(a - b):.4f}, bound {TRAIN_BOUND}; "
      f"cpu seeds spread {TRAIN_SPREAD}); images/s {device} {ips[device]:,.0f}, cpu {ips['cpu']:,.0f}")
sys.exit(0 if abs(a - b) <= TRAIN_BOUND else 1)
PY

# -- 4. the bench
echo "== 4/4 bench"
if [ "$quick" -eq 1 ]; then
  bench=(--models simple_convnet,mlp --batch-sizes 32,100 --steps 5 --time-budget 2)
else
  bench=(--batch-sizes 32,100,256,1024 --time-budget 4)
fi
"$py" -m dualnet bench --devices "cpu,$device" "${bench[@]}" --compare-torch --count-ops --out "$out" 2>&1 | tee "$out/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "the bench failed: $(tail -n 1 "$out/bench.log")"
rows=$("$py" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(sum(1 for x in r['records'] if x['impl'] == 'dualnet' and x['device'].startswith(sys.argv[2])))" \
  "$out/bench.json" "$device") || fail "the bench wrote no readable bench.json"
[ "$rows" -gt 0 ] || fail "the bench has no $device rows: $(grep -m1 "skipped $device" "$out/bench.log" || echo 'none measured')"
"$py" scripts/bench_table.py "$out/bench.json" > "$out/bench-table.md" 2>&1 || fail "bench_table.py failed on $out/bench.json"

echo "gpu_acceptance: PASS: $device ran: $passed tests, training within bound, $rows bench rows; $(( $(date +%s) - start )) s; results in $out" \
  | tee "$out/result.txt"
