#!/usr/bin/env bash
# Fresh machine -> the main job on a bundled example: install, generate the example model,
# show what is inside it, and bench ONNX Runtime against TVM's default build on it, verified.
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
.venv/bin/ago-search bench "datasets/zoo/$MODEL.onnx" $SHAPES --json "out/bench-$MODEL.json"
