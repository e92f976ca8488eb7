#!/usr/bin/env bash
# Compress the N-MNIST spiking CNN of the NIR paper (exported by sinabs) to 80 % sparsity with SBC,
# calibrating on 100 training recordings, and compare accuracy on 100 held-out test recordings.
set -euo pipefail
SHARED=${SHARED:-../shared}
BIN=${BIN:-.venv/bin}
DATA=$SHARED/data
OUT=out
mkdir -p "$OUT"
[ -d "$DATA/nmnist_small" ] || { echo "shared data not found at $DATA (set SHARED=...)" >&2; exit 1; }

"$BIN/sbc-onnx" inspect "$DATA/nir_paper/02_cnn/cnn_sinabs.nir"
"$BIN/sbc-onnx" data nmnist "$DATA/nmnist_small/train" "$DATA/nmnist_small/train500.txt" -o "$OUT/nmnist_train500.npz"
"$BIN/sbc-onnx" data nmnist "$DATA/nmnist_small/test" "$DATA/nmnist_small/test100.txt" -o "$OUT/nmnist_test100.npz"
"$BIN/sbc-onnx" compress "$DATA/nir_paper/02_cnn/cnn_sinabs.nir" \
    --calib "$OUT/nmnist_train500.npz" --calib-limit 100 \
    --sparsity 0.8 --method sbc --force \
    -o "$OUT/cnn_sinabs_sbc80.nir" --report "$OUT/cnn_sinabs_sbc80.json" \
    --eval "$OUT/nmnist_test100.npz"
