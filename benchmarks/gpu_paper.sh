#!/usr/bin/env bash
# The paper's Figures 3-5 at the scripts' full budget (10,000 steps per model) in one device call
# (issue #13), for a session lent a GPU. Table 2 (3 seeds, 10,000 steps) was measured with
# gpu_fused_paper.sh on 2026-11-27; Figures 3-5 so far at 500 steps (CPU) and N = 1,000 at 500 steps
# (H200). Carry `.gpu_data` (the MNIST and Fashion-MNIST .gz files of ../shared/data/gz under
# .gpu_data/t2/{MNIST,FashionMNIST}/, as ../shared/data/README.md says) and `.whl` (ART and its two
# missing dependencies); the results come back as $OUT/results.tar.gz.
set -u
. benchmarks/gpu_setup.sh
T=$(( ${DEADLINE:-555} - SECONDS ))
timeout "$T" python3 benchmarks/paper_ood.py --device cuda --threads 2 --data-root "$R" --out-dir "$W" \
  --out "$W/paper_ood.json" > "$W/paper_ood.log" 2>&1 &
timeout "$T" python3 benchmarks/paper_adversarial.py --device cuda --threads 2 --data-root "$R" --out-dir "$W" \
  --out "$W/paper_adversarial.json" > "$W/paper_adversarial.log" 2>&1 &
wait
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
