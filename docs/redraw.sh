#!/usr/bin/env bash
# Redraws every table and figure of docs/paper.md from the logs committed in results/, without
# training: bash docs/redraw.sh (from anywhere; it runs in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m resnet_lit.report results/degradation-cpu-seeds12/{plain20,plain56,r20,r56}-s{1,2} \
    --out docs/degradation_seeds.png --table docs/degradation_seeds.md
if [ -f results/responses-seeds12/responses.json ]; then
    $PY -m resnet_lit.responses --load results/responses-seeds12/responses.json \
        --out docs/responses_compressed.png --table docs/responses_compressed.md
fi
