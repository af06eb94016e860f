#!/usr/bin/env bash
# The paper's Table 2 and Figures 3-5 in one device call (issue #13), ready for the next session that
# is lent a GPU (none was left for it on 2026-11-27). Carry `.gpu_data` (the MNIST and Fashion-MNIST
# .gz files of ../shared/data/gz under .gpu_data/t2/{MNIST,FashionMNIST}/, as ../shared/data/README.md
# says) and `.whl` (ART and its two missing dependencies); the results come back as
# $OUT/results.tar.gz. Training is by step count, so the processes sharing the GPU change only how
# long a row takes, not its numbers.
#   Table 2: 6 processes ({full, 5000} x seeds {0, 1, 2}), each HyperGAN (as a CUDA graph), deep
#   ensemble and MC dropout at 10,000 steps; then Figures 3 and 4-5 beside them.
set -u
. benchmarks/gpu_setup.sh
for d in full 5000; do
  for s in 0 1 2; do
    timeout 420 python3 benchmarks/paper_table2.py --device cuda --cuda-graph --threads 2 --datasets "$d" \
      --seeds "$s" --data-root "$R" --out "$W/table2_${d}_$s.json" > "$W/table2_${d}_$s.log" 2>&1 &
  done
done
timeout 420 python3 benchmarks/paper_ood.py --device cuda --threads 2 --data-root "$R" --out-dir "$W" \
  --out "$W/paper_ood.json" > "$W/paper_ood.log" 2>&1 &
timeout 420 python3 benchmarks/paper_adversarial.py --device cuda --threads 2 --data-root "$R" --out-dir "$W" \
  --out "$W/paper_adversarial.json" > "$W/paper_adversarial.log" 2>&1 &
wait
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
