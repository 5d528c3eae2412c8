#!/usr/bin/env bash
# Redraws every table and figure of docs/paper.md from the logs committed in results/, without
# training: bash docs/redraw.sh (from anywhere; it runs in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# Claims 1 and 2: the compressed degradation study, seeds 0, 1 and 2.
$PY -m resnet_lit.report results/degradation-cpu/{plain20,plain56,r20,r56}-s{0,1,2} \
    --out docs/degradation_seeds.png --table docs/degradation_seeds.md
# Claim 4: the layer responses of those runs' last checkpoints.
$PY -m resnet_lit.responses --load results/responses-seed0/responses.json results/responses-seeds12/responses.json \
    --out docs/responses_compressed.png --table docs/responses_compressed.md
# Claim 2, longer: ResNet-20 (seeds 0, 1) against ResNet-56 (seeds 0, 1) for 8 epochs (3,432 iterations).
$PY -m resnet_lit.report results/long8/r20-s{0,1} results/long8/r56-s{0,1} --out docs/long8.png --table docs/long8.md
# Claim 5: shortcut options A (the ResNet-20 runs above), B and C, seeds 0, 1 and 2.
$PY -m resnet_lit.report results/degradation-cpu/r20-s{0,1,2} results/shortcut-B/r20-s{0,1,2} results/shortcut-C/r20-s{0,1,2} \
    --out docs/shortcuts.png --table docs/shortcuts.md
