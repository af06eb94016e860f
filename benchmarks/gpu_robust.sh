#!/usr/bin/env bash
# Issue #14 on a lent GPU, one call of ~9 minutes: the PGD warm-up recipe for the HyperGAN and the
# adversarially trained deep ensemble side by side on one GPU, the same wall-clock budget each (BUDGET,
# default 480 s) and batch size (BATCH, default 64), 500 attacked inputs, then the obfuscation checks.
# The two processes share the GPU symmetrically; each writes its own JSON, so one failing does not take
# the other's result with it. RESULTS.md ("On a GPU at 480 s") has the run with the defaults; the next
# run to make is BATCH=256 (a same-run ablation at 180 s raised the HyperGAN's clean accuracy with it).
# Carry `.gpu_data` and `.whl` (see gpu_setup.sh); results come back under $OUT/w.
set -u
BUDGET=${BUDGET:-480}
BATCH=${BATCH:-64}
. benchmarks/gpu_setup.sh
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$W/gpu.txt"
for m in hypergan-adv deep-ensemble-adv; do
  timeout $((BUDGET + 90)) python3 benchmarks/robust_mnist.py --methods "$m" --adv-method pgd \
    --adv-eps-warmup 3000 --budget "$BUDGET" --batch-size "$BATCH" --device cuda --threads 4 \
    --n-inputs 500 --steps 50 --check-inputs 100 --square-queries 200 --data-root "$R" \
    --out "$W/robust_$m.json" > "$W/robust_$m.log" 2>&1 &
done
wait
date -u | tee -a "$W/gpu.txt"
