#!/usr/bin/env bash
# One device call, as run on 2026-11-27 (benchmarks/RESULTS.md, "GPU session"). Carry `.gpu_data`
# (MNIST and Fashion-MNIST .gz files from ../shared/data/gz, as its README says) and `.whl` (ART and
# its two missing dependencies). Every part runs under `timeout`; results come back as
# $OUT/results.tar.gz.
#   issue 18: GPU tests of the graphed step, gpu_check parts 1-5 (default attack section);
#   issue 14: the TRADES-trained HyperGAN and deep ensemble, side by side at the same budget.
set -u
. benchmarks/gpu_setup.sh
timeout 60 python3 -m pytest tests/test_graphed_step.py -q -p no:cacheprovider > "$W/pytest_graphed.txt" 2>&1
echo "pytest rc=$?" | tee -a "$W/pytest_graphed.txt"
timeout 190 python3 benchmarks/gpu_check.py --skip-compile --data-root "$R" --train-budget 60 \
  --train-variants best --evaluate-suites default_section --work-dir /tmp/gcw \
  --out "$W/gpu_check.json" > "$W/gpu_check.log" 2>&1
echo "gpu_check rc=$?"
for m in hypergan-adv deep-ensemble-adv; do
  timeout 200 python3 benchmarks/robust_mnist.py --methods "$m" --adv-method trades --budget 110 \
    --device cuda --threads 4 --n-inputs 300 --steps 50 --check-inputs 100 --square-queries 200 \
    --data-root "$R" --out "$W/robust_$m.json" > "$W/robust_$m.log" 2>&1 &
done
wait
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
