#!/usr/bin/env bash
# Fresh machine -> the main job on a bundled example: install, generate the example model,
# show what is inside it, and search its partitions, fusion and schedules within a budget
# (BUDGET=10m by default); the search ends timing ONNX Runtime, TVM's default build and the
# plan it found side by side, verified against ONNX Runtime, and writes out/<model>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh zoo
MODEL="${1:-mobilenetv2}"
.venv/bin/python scripts/make_zoo.py --models "$MODEL"
SHAPES=$(.venv/bin/python scripts/make_zoo.py --print-shape-flags "$MODEL")
mkdir -p out
# shellcheck disable=SC2086
.venv/bin/ago-search inspect "datasets/zoo/$MODEL.onnx" $SHAPES
# shellcheck disable=SC2086
.venv/bin/ago-search "datasets/zoo/$MODEL.onnx" $SHAPES --budget "${BUDGET:-10m}" --out "out/$MODEL"
