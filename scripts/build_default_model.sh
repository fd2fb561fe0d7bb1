#!/usr/bin/env bash
# Train, export, evaluate and embed the default model (about 1.5 h on 2 CPU cores).
# Needs ../shared/datasets/fashion-products and the training extra (bash scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/fashion-products/catalog.csv}
RUN=${RUN:-runs/default}
BEAM=${BEAM:-3}
.venv/bin/catcap train "$DATA" --out "$RUN" --fine-tune-blocks 1 \
    --attribute-cols gender,baseColour,subCategory --epochs 30 --patience 3 --seed 13
.venv/bin/catcap export "$RUN" --out "$RUN-bundle"
.venv/bin/catcap evaluate "$RUN/val.csv" --model "$RUN-bundle" --reference "$RUN/train.csv" \
    --out "$RUN-eval" --beam-size "$BEAM"
.venv/bin/python scripts/embed_default_model.py "$RUN-bundle" "$RUN-eval/report.json" "$RUN/val.csv" --beam-size "$BEAM"
