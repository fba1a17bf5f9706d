#!/usr/bin/env bash
# The one-call GPU device check: everything a lent GPU must show, in one command under 8 minutes.
#
# Parts, in order, each timed and bounded (a part that would not fit the remaining budget is
# shortened or skipped, and says so):
#   env      nvidia-smi, Python and package versions, nvcc, compute-sanitizer, CPU
#   wheels   install the carried wheels (.devcache/whl: msgspec, httptools, openai, ...) to a temp dir
#   compile  kernels/cuda/compile_all.sh for this GPU's arch with resource usage (when nvcc exists)
#   nvrtc    CudaOps for float16, bfloat16, float32: every kernel compiled by NVRTC through CuPy
#   pytest   `pytest -m gpu tests`: every gpu-marked test in the repo (kernels vs numpy twins, models
#            vs the CPU engine, CUDA graphs and overlap, decoder ops once they exist)
#   serve    bench/gpu_serve_check.py: `tinyembed serve --device cuda` (eager; graphs+overlap) vs a
#            CPU server, real openai-client requests, cosine >= 0.9999
#   bench    bench/gpu.py: ceilings, kernel table, bge-base (+ bge-m3 when time allows) vs
#            transformers fp16 sdpa at 32/128/512 and mixed, 16-token latency, the issue's goals
#   sanitize compute-sanitizer memcheck and racecheck on one small attention call (if time is left)
# Output, all under $OUT (at most 8 files come back from the device): summary.json, check.log,
# pytest.log, serve.log, serve.json, bench.log, bench.json. The last lines printed are the summary.
#
#   python -m bench.gpu_prep                        # here, once: builds .devcache (bench/README.md)
#   bash bench/gpu_check.sh                         # on the device (the exact `run` call: bench/README.md)
#   bash bench/gpu_check.sh --smoke                 # on a CPU: the same plumbing, gpu tests skip,
#                                                   # servers on the CPU, a tiny bench (CI runs this)
# Options: --budget SECONDS (default 450), --devcache DIR (default .devcache), --skip PART,PART (a
# rerun that leaves parts out; the summary then says the check is incomplete).
# Env: PYTHON (default python3), OUT (default .gpu-check-out), GPU_CHECK_PYTEST_ARGS (added to the
# pytest part, e.g. "-k attention -x" to narrow a rerun).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
SKIP=""
BUDGET=450
DEVCACHE=$ROOT/.devcache
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --budget) BUDGET=$2; shift ;;
        --skip) SKIP=$2; shift ;;
        --devcache) DEVCACHE=$(cd "$2" && pwd); shift ;;
        *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/.gpu-check-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/check.log
: >"$LOG"
START=$(date +%s)
MODEL=$DEVCACHE/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/fp16

export HF_HUB_CACHE=$DEVCACHE/hub HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
unset TINYEMBED_CUDA_GRAPHS TINYEMBED_CUDA_OVERLAP  # eager unless a part asks

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# part NAME LIMIT RESERVE LOGFILE COMMAND...: run COMMAND with at most LIMIT seconds, fewer when
# the budget minus RESERVE (seconds kept for the parts after it) is smaller; skip under 10 s.
part() {
    local name=$1 limit=$2 reserve=$3 logfile=$4
    shift 4
    if [[ ",$SKIP," == *",$name,"* ]]; then
        say "=== $name: SKIPPED (--skip)"
        printf '%s\tskipped\t0\t0\n' "$name" >>"$WORK/parts.tsv"
        return 0
    fi
    local room=$(($(left) - reserve))
    [ "$limit" -gt "$room" ] && limit=$room
    if [ "$limit" -lt 10 ]; then
        say "=== $name: SKIPPED (budget: $(left) s left)"
        printf '%s\tskipped\t0\t0\n' "$name" >>"$WORK/parts.tsv"
        return 0
    fi
    say "=== $name (limit ${limit} s, $(left) s of the budget left)"
    local t0 rc ms seconds
    t0=$(date +%s%N)
    # bash -c: COMMAND may be one of the exported functions below; timeout signals its whole
    # process group, so servers and workers a part started go with it
    timeout -k 10 "$limit" bash -c '"$@"' _ "$@" >>"$logfile" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    seconds=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    [ "$rc" = 124 ] && say "    $name: TIMED OUT after $limit s"
    say "    $name: exit $rc in ${seconds} s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$limit" >>"$WORK/parts.tsv"
    return 0
}

env_report() {
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    echo "mode: $([ $SMOKE = 1 ] && echo smoke || echo gpu); budget ${BUDGET} s; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    "$PY" - <<'EOF'
from importlib import metadata
for name in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "torch", "transformers", "sentence-transformers", "tokenizers",
             "safetensors", "msgspec", "httptools", "uvloop", "openai", "pytest", "pytest-timeout"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not found"
    command -v compute-sanitizer >/dev/null && echo "compute-sanitizer: $(command -v compute-sanitizer)" || echo "compute-sanitizer: not found"
    lscpu 2>/dev/null | grep -m1 "Model name" || true
    nproc
}

install_wheels() {
    # On the device: only the wheels whose package is missing or older there. The smoke installs
    # every cp312 wheel for Python 3.12 into a throwaway folder (a check that they install
    # together) and uses none of them.
    local wheels=() device_only=()
    if [ "$SMOKE" = 1 ]; then
        wheels=("$DEVCACHE"/whl/*.whl)
        device_only=(--python-version 3.12 --implementation cp --only-binary=:all:
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
    else
        mapfile -t wheels < <("$PY" -m bench.gpu_prep --needed-wheels "$DEVCACHE/whl" | grep -v '^$')
    fi
    echo "installing ${#wheels[@]} wheels: ${wheels[*]##*/}"
    [ ${#wheels[@]} -eq 0 ] && return 0
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "${device_only[@]}" "${wheels[@]}"
}

nvrtc_check() {
    "$PY" - "$SMOKE" <<'EOF'
import sys, time
from tinyembed.engine.ops import cuda_ops as ops_cuda
reason = ops_cuda.unavailable_reason()
if reason is not None:
    print(f"no GPU: {reason}")
    sys.exit(0 if sys.argv[1] == "1" else 1)
for dtype in ("float16", "bfloat16", "float32"):
    t0 = time.perf_counter()
    ops = ops_cuda.CudaOps(0, dtype)
    print(f"{dtype}: {len(ops._kernels)} kernels compiled and loaded in {time.perf_counter() - t0:.1f} s: {sorted(ops._kernels)}")
EOF
}

sanitize_case() {  # one small attention call: lengths 65, 7, 1; head_dim 64 and 128; max_len 1 too
    cat >"$WORK/sanitize_case.py" <<'EOF'
import numpy as np
from tinyembed.engine.families.bert import Batch
from tinyembed.engine.ops.cuda_ops import CudaOps
ops = CudaOps(0, "float16")
batch = Batch.pack([np.arange(n, dtype=np.int32) for n in (65, 7, 1)])
_, _, cu = ops.upload_batch(batch)
for head_dim, max_len in ((64, batch.max_len), (128, batch.max_len), (64, 1)):
    qkv = ops.param(np.random.default_rng(0).standard_normal((batch.num_tokens, 3 * 2 * head_dim)).astype(np.float32))
    out = ops.to_host(ops.attention(qkv, cu, max_len, 2))
    assert np.isfinite(out).all(), (head_dim, max_len)
print("attention ok")
EOF
    for tool in memcheck racecheck; do
        echo "--- compute-sanitizer --tool $tool"
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" "$WORK/sanitize_case.py" || return $?
    done
}

bench_args() {  # the bench that fits what is left of the budget
    local room=$1
    if [ $SMOKE = 1 ]; then
        echo "--smoke --contenders tinyembed --models smoke-bert --json"
    elif [ "$room" -ge 270 ]; then
        echo "--models bge-base,bge-m3 --tokens 65536 --repeats 3 --timeout $((room / 7)) --json"
    elif [ "$room" -ge 150 ]; then
        echo "--models bge-base --tokens 32768 --repeats 2 --timeout $((room / 4)) --json"
    else
        echo "--models bge-base --tokens 16384 --repeats 1 --only models,latency --contenders tinyembed,transformers --timeout $((room / 3)) --json"
    fi
}

# -- the parts --------------------------------------------------------------------------------------
export -f env_report install_wheels nvrtc_check sanitize_case
export PY SMOKE WORK DEVCACHE BUDGET
part env 30 0 "$LOG" env_report
if compgen -G "$DEVCACHE/whl/*.whl" >/dev/null; then
    part wheels 60 0 "$LOG" install_wheels
    [ $SMOKE = 0 ] && export PYTHONPATH=$WORK/site:$PYTHONPATH
fi
if [ $SMOKE = 1 ]; then
    say "=== compile: not in the smoke (CI's .ci/run compiles every kernel wherever nvcc exists)"
elif command -v nvcc >/dev/null; then
    ARCH=$("$PY" -c 'import cupy; print("".join(map(str, cupy.cuda.Device(0).compute_capability)))' 2>/dev/null || echo 90)
    ARCH=${ARCH//[^0-9]/}
    part compile 120 240 "$LOG" env ARCHS="${ARCH:-90}" RESOURCES=1 JOBS="$(nproc)" bash kernels/cuda/compile_all.sh
else
    say "=== compile: no nvcc here (CuPy's NVRTC compiles the same sources in the nvrtc part)"
fi
part nvrtc 120 220 "$LOG" nvrtc_check
TIMEOUT_OPT=$("$PY" -c 'import pytest_timeout' 2>/dev/null && echo "--timeout=150")
part pytest 240 180 "$OUT/pytest.log" "$PY" -m pytest -m gpu tests -q -rfEs -p no:cacheprovider --durations=15 \
    --junitxml="$WORK/pytest.xml" $TIMEOUT_OPT ${GPU_CHECK_PYTEST_ARGS:-}
if [ -d "$MODEL" ]; then
    SERVE_ARGS=(--model "$MODEL" --out "$OUT/serve.json")
    [ $SMOKE = 1 ] && SERVE_ARGS+=(--device cpu --quick) || SERVE_ARGS+=(--device cuda)
    part serve 120 100 "$OUT/serve.log" "$PY" -m bench.gpu_serve_check "${SERVE_ARGS[@]}"
else
    say "=== serve: FAILED: no model at $MODEL (run python -m bench.gpu_prep first)"
    printf 'serve\t1\t0\t0\n' >>"$WORK/parts.tsv"
fi
ROOM=$(($(left) - 15))
# shellcheck disable=SC2046
part bench "$ROOM" 0 "$OUT/bench.log" "$PY" -m bench.gpu $(bench_args "$ROOM")
tail -n 1 "$OUT/bench.log" | grep '^{' >"$OUT/bench.json" || rm -f "$OUT/bench.json"
if [ $SMOKE = 0 ] && command -v compute-sanitizer >/dev/null; then
    part sanitize 90 5 "$LOG" sanitize_case
fi

"$PY" -m bench.gpu_check_summary --parts "$WORK/parts.tsv" --junit "$WORK/pytest.xml" --out "$OUT" \
    --mode "$([ $SMOKE = 1 ] && echo smoke || echo gpu)" --budget "$BUDGET" --elapsed $(($(date +%s) - START)) \
    | tee -a "$LOG"
