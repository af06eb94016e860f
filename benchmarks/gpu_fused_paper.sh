#!/usr/bin/env bash
# One device call (2026-11-27, fourth session): the fused member kernel (issue #18) on an idle GPU,
# then the paper's Table 2 over 3 seeds and Figures 4-5 with N = 1,000 (issue #13) sharing the GPU.
# Carry `.gpu_data` and `.whl` (see gpu_setup.sh); results come back as $OUT/results.tar.gz.
# Table 2 trains by step count, so the processes sharing the GPU change how long a row takes, not its
# numbers; each process rewrites its JSON after every finished run, so a process stopped by its
# timeout keeps the runs it finished.
set -u
. benchmarks/gpu_setup.sh
# 1. issue #18: the fused kernel's GPU tests, then its benchmark (launch-setting sweep, whole forward)
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_fused_kernel.py -k "gpu or refused or checked" \
  > "$W/fused_tests.log" 2>&1
echo "fused tests rc=$?" | tee -a "$W/gpu.txt"
timeout 150 python3 benchmarks/fused_kernel.py --out "$W/fused_kernel.json" > "$W/fused_kernel.log" 2>&1
echo "fused benchmark rc=$?" | tee -a "$W/gpu.txt"
date -u | tee -a "$W/gpu.txt"
# 2. issue #13: Table 2 ({full, 5000} x seeds {0, 1, 2}, 10,000 steps, HyperGAN as a CUDA graph), and
#    Figures 4-5 at N = 1,000 (and 500 judges) on a 500-step model, as the CPU rows were trained
# every process stops by DEADLINE seconds into the call, leaving time to pack the results
T2=$(( ${DEADLINE:-555} - SECONDS )); echo "table 2 processes get ${T2} s" | tee -a "$W/gpu.txt"
for d in full 5000; do
  for s in 0 1 2; do
    timeout "$T2" python3 benchmarks/paper_table2.py --device cuda --cuda-graph --threads 2 \
      --datasets "$d" --seeds "$s" --data-root "$R" --out "$W/table2_${d}_$s.json" > "$W/table2_${d}_$s.log" 2>&1 &
  done
done
timeout "$T2" python3 benchmarks/paper_adversarial.py --device cuda --threads 2 --steps 500 --sizes 1000 \
  --baselines none --inputs 100 --judges 500 --transfer-inputs 500 --data-root "$R" --out-dir "$W" \
  --out "$W/paper_adversarial_n1000.json" > "$W/paper_adversarial_n1000.log" 2>&1 &
wait
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
