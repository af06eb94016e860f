#!/usr/bin/env bash
# Prepared for a session lent a GPU (issue #14), one call of ~7 minutes: the PGD warm-up recipe that
# reached 3.8 % missed-and-wrong at eps 0.3 after 5,400 s of CPU (RESULTS.md), for the HyperGAN and
# the adversarially trained deep ensemble side by side on one GPU, 240 s of training each (several
# times the CPU run's steps), 500 attacked inputs. Run it on its own call (gpu_next.sh takes ~6 min).
# Carry `.gpu_data` and `.whl` (see gpu_setup.sh); results come back as $OUT/results.tar.gz.
set -u
. benchmarks/gpu_setup.sh
for m in hypergan-adv deep-ensemble-adv; do
  timeout 420 python3 benchmarks/robust_mnist.py --methods "$m" --adv-method pgd --adv-eps-warmup 3000 \
    --budget 240 --device cuda --threads 4 --n-inputs 500 --steps 50 --check-inputs 100 \
    --square-queries 200 --data-root "$R" --out "$W/robust_$m.json" > "$W/robust_$m.log" 2>&1 &
done
wait
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
