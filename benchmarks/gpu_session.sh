#!/usr/bin/env bash
# One lease of a lent GPU (the device tool: 15 minutes in all, one command of at most 10), in one command:
#   1. the CUDA tests (tests/test_cuda.py),
#   2. a kernel profile of one compiled Turbo step (benchmarks/kernel_profile.py), with and without CUDA graphs,
#   3. the benchmark table (benchmarks/gpu_table.py; xformers only where it runs),
#   4. the rest of the suite with what time is left.
# Each stage has its own timeout so that the results are always packed. The machine has torch but not diffusers:
# carry the wheels in .whl (diffusers, tomesd, xformers, importlib_metadata; see the device README), e.g.
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Results: $OUT (the device tool's folder) or outputs/gpu-session. SUITE_ARGS (extra
# pytest arguments) and BUDGET_S (seconds for the whole script) shorten a trial run.
set -u
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT" /tmp/logs /tmp/bin
started=$(date +%s)
log() { echo "[$(( $(date +%s) - started )) s] $*" | tee -a /tmp/logs/summary.txt; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=20
if ! python3 -c "import torch, xformers.ops as x; q = torch.randn(1, 64, 2, 32, device='cuda', dtype=torch.half)
x.memory_efficient_attention(q, q, q)" > /tmp/logs/xformers_check.txt 2>&1; then
    log "xformers does not run here (see xformers_check.txt): SDPA only"
    rm -rf /tmp/site/xformers*
fi
printf '#!/bin/sh\nexec python3 -m turbo_diffusion.cli "$@"\n' > /tmp/bin/turbo-diffusion
chmod +x /tmp/bin/turbo-diffusion
export PATH=/tmp/bin:$PATH
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers',
diffusers.__version__, torch.cuda.get_device_name())"
  python3 -c "import xformers; print('xformers', xformers.__version__)" 2>/dev/null; git log -1 --format='commit %H'
} > /tmp/logs/gpu.txt 2>&1
log "$(tr '\n' ' ' < /tmp/logs/gpu.txt)"

# 1. The CUDA tests (about a minute).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs > /tmp/logs/cuda_tests.log 2>&1
log "cuda tests exit $?: $(grep -aE 'passed|failed|skipped' /tmp/logs/cuda_tests.log | tail -n 1)"

# 2. Where a compiled Turbo step's GPU time goes: the top kernels, inductor's default mode and CUDA graphs.
for mode in default reduce-overhead; do
    extra=$([ "$mode" = reduce-overhead ] && echo "--mode reduce-overhead")
    timeout 150 python3 benchmarks/kernel_profile.py --arch sd15-arch --size 512 $extra \
        --out "/tmp/logs/kernel_profile_$mode.txt" > "/tmp/logs/kernel_profile_$mode.log" 2>&1
    log "kernel profile ($mode) exit $?"
done

# 3. The benchmark table (the whole command must end inside the tool's 600 s; the suite gets what is left).
left=$(( ${BUDGET_S:-575} - ($(date +%s) - started) ))
log "benchmark table: $left s left"
timeout $(( left > 30 ? left - 20 : 10 )) python3 benchmarks/gpu_table.py --out /tmp/bench \
    --budget-minutes "$(python3 -c "print(max(0.1, ($left - 150) / 60))")" > /tmp/logs/bench.log 2>&1
log "bench exit $?"

# 4. The rest of the suite (CPU-bound: 14 workers) with whatever is left.
left=$(( ${BUDGET_S:-575} - ($(date +%s) - started) ))
if [ "$left" -gt 40 ]; then
    timeout -k 5 $(( left - 25 )) python3 -m pytest -q -p no:cacheprovider -n 14 --ignore tests/test_cuda.py \
        ${SUITE_ARGS:-} > /tmp/logs/suite.log 2>&1
    log "suite exit $?: $(grep -aE 'passed|failed' /tmp/logs/suite.log | tail -n 1)"
fi

# Pack (the tool returns at most 8 files).
cp /tmp/logs/summary.txt /tmp/logs/cuda_tests.log "$OUT"/ 2>/dev/null
cp /tmp/bench/gpu_table.md "$OUT"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C /tmp logs 2>/dev/null
tar czf "$OUT/bench.tgz" -C /tmp bench 2>/dev/null
cp /tmp/logs/kernel_profile_*.txt "$OUT"/ 2>/dev/null
log "done"
