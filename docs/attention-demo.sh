#!/usr/bin/env bash
# Makes docs/attention-demo.png, the README's attention figure, with the project's own code:
# a run of the embedded demo's split 1 (N images, E epochs; the demo's head widths, batch size
# and learning rate, read from params.yaml) in a temporary folder, then `amnet predict
# --attention-maps` on one of its test images.
# Offline, CPU; 4-7 minutes on 2 cores. Run from the repository's root with the venv active:
#   bash docs/attention-demo.sh [IMAGE]      (IMAGE: a name in the demo's test split 1)
# N=2000 E=10 (the demo's own size and epochs) made the committed figure.
set -euo pipefail
N=${N:-2000} E=${E:-10}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python - "$tmp/params.yaml" "$N" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["demo"]["n_images"] = int(sys.argv[2])
p["data"]["splits"] = [1]
yaml.safe_dump(p, open(sys.argv[1], "w"), sort_keys=False)
PY
read -r batch lr < <(python -c 'import yaml; t = yaml.safe_load(open("params.yaml"))["train"]
print(t["batch_size"], t["lr"])')
python pipeline/prepare.py "$tmp/demo" --params "$tmp/params.yaml"
python pipeline/extract.py "$tmp/demo" "$tmp/demo.h5" --params "$tmp/params.yaml"
s="$tmp/demo/splits"
amnet train --cache "$tmp/demo.h5" --train "$s/train_1.txt" --val "$s/val_1.txt" \
    --test "$s/test_1.txt" --out "$tmp/run" --epochs "$E" \
    --feature-dim 256 --hidden-dim 256 --regressor-dim 128 --batch-size "$batch" --lr "$lr" -q
image=${1:-$(head -1 "$s/test_1.txt" | cut -d' ' -f1)}
amnet predict --checkpoint "$tmp/run/head.pt" "$tmp/demo/images/$image" --out "$tmp/scores.csv" \
    --attention-maps "$tmp/figures"
cat "$tmp/scores.csv"
# A dithered palette PNG keeps the figure small (the README wants it under 200 KB).
python - "$tmp/figures/${image%.*}_att.png" docs/attention-demo.png <<'PY'
import os, sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
palette = im.quantize(256, method=Image.Quantize.FASTOCTREE)
im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(sys.argv[2], optimize=True)
print(f"{sys.argv[2]}: {os.path.getsize(sys.argv[2]) // 1024} KB")
PY
