#!/usr/bin/env bash
# Downloads, on this machine, the wheels the lent GPU machine lacks for benchmarks/gpu_check.py.
#
# That machine runs Python 3.12 with jax (CUDA), PyTorch, orbax-checkpoint, tensorstore and
# etils installed, and reaches no package index, so the rest travels in .whl/ (ignored by git,
# named in the device call's `carry`). Then, on the GPU machine (see benchmarks/README.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   python3 benchmarks/gpu_check.py --json=$OUT/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 flax==0.12.8 optax==0.2.8 \
  dm-tree more-itertools
du -sh .whl
ls .whl
