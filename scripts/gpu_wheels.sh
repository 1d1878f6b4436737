#!/usr/bin/env bash
# Download, where pip works, every wheel a GPU image without network lacks to run
# scripts/gpu_acceptance.sh: the test tools, the plots, array-api-compat and array-api-strict, and
# what each of them needs -- for CPython 3.12 on manylinux x86-64, each one version, no dependency
# left to resolve at install time (gpu_acceptance.sh installs them with --no-deps).
#   bash scripts/gpu_wheels.sh .whl      then, on the GPU machine:
#   bash scripts/gpu_acceptance.sh --quick --wheels .whl --out gpu-results
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu_wheels.sh DIR" >&2; exit 2; }
dir=$1
mkdir -p "$dir"
# array-api-compat and array-api-strict pinned to the versions the suite runs with here.
packages=(
  "array-api-compat==1.16.0" "array-api-strict==2.6.1"
  pytest pluggy iniconfig packaging pygments
  matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six
  tqdm threadpoolctl
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "${packages[@]}"
echo "wrote $(ls "$dir"/*.whl | wc -l) wheels to $dir ($(du -sh "$dir" | cut -f1)):"
ls "$dir"
