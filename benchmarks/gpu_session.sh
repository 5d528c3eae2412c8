#!/usr/bin/env bash
# One prepared run on a lent GPU machine: the GPU tests, then benchmarks/gpu.py; everything into $OUT.
#
# The GPU machine has torch, Lightning, torchmetrics and tensorboard but no jsonargparse, no
# internet and no package registry, and only the checkout travels. Prepare on this machine, once:
#
#   echo /.whl/ >>.git/info/exclude && echo /.gpu_data/ >>.git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl "jsonargparse[signatures]==4.53.0" docstring-parser typeshed-client
#   mkdir -p .gpu_data/FashionMNIST/raw && cp SOMEWHERE/FashionMNIST/raw/*.gz .gpu_data/FashionMNIST/raw/
#
# then run it with the device tool (carry .whl and .gpu_data); its parts are capped at 210 + 270 s,
# so with the install and the extraction it ends within 9 minutes:
#
#   bash benchmarks/gpu_session.sh
#
# The .gz files are extracted there without a network (torchvision checks their md5 first).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
# The GPU tests: on-device batches, bf16, CUDA graphs, checkpoints, no host sync between logging steps.
timeout 210 python3 -m pytest -p no:cacheprovider -q tests/test_gpu.py tests/test_host_syncs.py 2>&1 | tee "$OUT/tests.log"
python3 - <<'EOF'
from torchvision.datasets import FashionMNIST
for train in (True, False):  # extracts the carried .gz files, checking their md5
    FashionMNIST(".gpu_data", train=train, download=True)
EOF
timeout 270 python3 benchmarks/gpu.py --data-dir .gpu_data 2>"$OUT/benchmark.err" | tee "$OUT/benchmark.log"
