#!/usr/bin/env bash
# One GPU session, prepared to fit a short lease: versions, the engine's parity tests on the
# GPU, then the benchmark against cuDNN (torch.nn.LSTM on CUDA and jax.experimental.rnn).
#
#   OUT=out/gpu bash benchmarks/gpu_session.sh   # tests.txt, bench_gpu.{txt,json}, bench_parallel.*
#
# Needs data/tinyshakespeare.txt (scripts/prepare_data.py) and python3 with jax[cuda], torch
# (CUDA), flax and optax. Budgets: TEST_S for the tests, BENCH_S for the benchmark (PEERS picks
# its peers), whose JSON
# is rewritten after every workload, so a run cut short keeps what it measured. The workloads
# run in the order of the GPU goal (W3, W4 first). torch-loop and autograd are left out: on a
# GPU they measure Python's loop, not the engine.
set -u
OUT=${OUT:-out/gpu}
TEST_S=${TEST_S:-100}
BENCH_S=${BENCH_S:-240}
PARALLEL_S=${PARALLEL_S:-200}  # W6 / W7: the parallel-in-time forms (0 skips them)
SCALE_S=${SCALE_S:-150}        # W6p (packed sequences vs cuDNN) and W8 (a sweep of 8 models)
PEERS=${PEERS:-jaxrnn,torch,flax,jax-cudnn}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAXRNN_TINYSHAKESPEARE=${JAXRNN_TINYSHAKESPEARE:-$PWD/data/tinyshakespeare.txt}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PYTHON -c "import sys, jax, jaxlib, flax, optax, torch; print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} 2>&1 | tee "$OUT/versions.txt"

# The engine on the GPU against PyTorch (on the CPU) and the tutorial's formulas; TF32 off.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_S" $PYTHON -m pytest -q -p no:cacheprovider --timeout 60 \
  tests/test_engine_parity.py tests/test_fast.py tests/test_charlm_parity.py \
  tests/test_sampling.py tests/test_engine.py tests/test_mincells.py tests/test_newton.py \
  tests/test_kernels.py tests/test_regularizers.py tests/test_sweep.py \
  2>&1 | tee "$OUT/tests.txt"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"

timeout "$BENCH_S" $PYTHON scripts/bench.py --device gpu --tf32 on \
  --workloads W3,W4,W2,S1,W5,W1 --peers "$PEERS" \
  --budget 2 --repeat 5 --no-bracket --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_gpu.txt"

# The parallel-in-time targets (docs/WORKLOADS.md W6, W7): minGRU parallel vs its sequential
# scan, and DEER / ELK layers vs the sequential GRU / LSTM, with the iteration counts.
if [ "$PARALLEL_S" -gt 0 ]; then
  timeout "$PARALLEL_S" $PYTHON scripts/bench.py --device gpu --tf32 on \
    --workloads W6-4096,W6-1024,W7 --w7-hidden 32 --w7-seq-lens 65536,16384 \
    --w7-total-budget $((PARALLEL_S / 2)) --budget 2 --repeat 5 --no-bracket \
    --json "$OUT/bench_parallel.json" 2>&1 | tee "$OUT/bench_parallel.txt"
  echo "parallel bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_parallel.txt"
fi

# Variable lengths against cuDNN's packed LSTM/GRU (W6p), and 8 W2-sized models in one
# program against 8 runs one after another (W8; the GPU goal is >= 6x).
if [ "$SCALE_S" -gt 0 ]; then
  timeout "$SCALE_S" $PYTHON scripts/bench.py --device gpu --tf32 on \
    --workloads W6p,W8 --peers jaxrnn,torch-packed,torch-padded,jaxrnn-unmasked,flax \
    --budget 2 --repeat 5 --no-bracket \
    --json "$OUT/bench_scale.json" 2>&1 | tee "$OUT/bench_scale.txt"
  echo "scale bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_scale.txt"
fi
