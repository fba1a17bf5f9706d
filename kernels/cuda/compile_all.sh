#!/usr/bin/env bash
# Compile every kernels/cuda/*.cu with nvcc for every GPU generation tinyembed targets (sm_80 A100,
# sm_89 L4/L40/RTX 40xx, sm_90 H100/H200) and every storage dtype (TE_DTYPE 0 float32,
# 1 float16, 2 bfloat16), with all warnings as errors. Exits non-zero on the first failure.
# CI runs it (.ci/run) whenever nvcc exists; at run time CuPy compiles the same sources with
# NVRTC for the GPU it finds, so this is the check that a syntax or type error never lands.
#
#   bash kernels/cuda/compile_all.sh                    # everything, in parallel on all cores
#   ARCHS="90" DTYPES="1" bash kernels/cuda/compile_all.sh
#   RESOURCES=1 bash kernels/cuda/compile_all.sh        # also print registers / shared memory / spills
set -euo pipefail
cd "$(dirname "$0")"

NVCC=${NVCC:-nvcc}
ARCHS=${ARCHS:-"80 89 90"}
DTYPES=${DTYPES:-"0 1 2"}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
shopt -s nullglob
SOURCES=(*.cu)
if [ ${#SOURCES[@]} -eq 0 ]; then
    echo "compile_all.sh: no kernels/cuda/*.cu found" >&2
    exit 1
fi

GENCODE=""
for arch in $ARCHS; do GENCODE="$GENCODE -gencode arch=compute_${arch},code=sm_${arch}"; done
OUTDIR=$(mktemp -d)
trap 'rm -rf "$OUTDIR"' EXIT
export NVCC GENCODE OUTDIR RESOURCES="${RESOURCES:-0}"

compile_one() {  # $1 = source, $2 = dtype
    local src=$1 dtype=$2 log="$OUTDIR/${1%.cu}.$2.log"
    local flags=(-std=c++17 -O3 -DTE_DTYPE="$dtype" -Werror all-warnings -Xcompiler -Wall,-Werror)
    [ "$RESOURCES" = 1 ] && flags+=(--resource-usage)
    # shellcheck disable=SC2086
    if "$NVCC" "${flags[@]}" $GENCODE -c "$src" -o "$OUTDIR/${src%.cu}.$dtype.o" >"$log" 2>&1; then
        echo "ok    $src TE_DTYPE=$dtype"
        [ "$RESOURCES" = 1 ] && grep -E "Function properties|registers|spill|Compiling entry" "$log" | sed 's/^/      /'
        return 0
    fi
    echo "FAIL  $src TE_DTYPE=$dtype" >&2
    cat "$log" >&2
    return 1
}
export -f compile_one

echo "nvcc: $("$NVCC" --version | tail -n 1); archs: $ARCHS; dtypes: $DTYPES; ${#SOURCES[@]} sources; $JOBS jobs"
for src in "${SOURCES[@]}"; do
    for dtype in $DTYPES; do echo "$src $dtype"; done
done | xargs -P "$JOBS" -n 2 bash -c 'compile_one "$0" "$1"'
echo "compile_all.sh: all ${#SOURCES[@]} kernels compiled for sm_{${ARCHS// /,}} x TE_DTYPE {${DTYPES// /,}}"
