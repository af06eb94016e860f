#!/usr/bin/env bash
# Prepared for the next session lent a GPU (issue #18 rows not measured yet), one call of ~6 minutes:
# the GPU tests of the fused kernel and strategies, benchmarks/fused_kernel.py (its PGD-40 rows time
# the kernel's input gradient: if fused+tf32 wins, make it "auto" for attacks), then
# gpu_check.py's PGD rows and `hgdefend train --cuda-graph` for 60 s with the default checkpointing,
# then the same run with the fused kernel for training (HGDEFEND_STRATEGY).
# Carry `.gpu_data` and `.whl` (see gpu_setup.sh); results come back as $OUT/results.tar.gz.
set -u
. benchmarks/gpu_setup.sh
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fused_kernel.py tests/test_speed_strategies.py \
  tests/test_graphed_step.py > "$W/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$W/gpu.txt"
timeout 150 python3 benchmarks/fused_kernel.py --out "$W/fused_kernel.json" > "$W/fused_kernel.log" 2>&1
echo "fused_kernel rc=$?" | tee -a "$W/gpu.txt"
timeout 200 python3 benchmarks/gpu_check.py --skip-compile --parts 3,4 --data-root "$R" --train-budget 60 \
  --train-variants graphed --work-dir /tmp/gcw --out "$W/gpu_check.json" > "$W/gpu_check.log" 2>&1
echo "gpu_check rc=$?" | tee -a "$W/gpu.txt"
# the same 60 s run with the fused kernel for training too (compare with part 4 above)
HGDEFEND_STRATEGY="train=fused+tf32,score=fused+tf32,attack=fused+tf32" timeout 150 python3 benchmarks/gpu_check.py \
  --skip-compile --parts 4 --data-root "$R" --train-budget 60 --train-variants graphed --work-dir /tmp/gcw2 \
  --out "$W/gpu_check_train_fused.json" > "$W/gpu_check_train_fused.log" 2>&1
echo "gpu_check (fused training) rc=$?" | tee -a "$W/gpu.txt"
date -u | tee -a "$W/gpu.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" w
