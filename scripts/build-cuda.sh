#!/usr/bin/env bash
# Builds the CUDA backend (zn_cuda.node, CUDA tests and bench) into build-cuda/ for sm_80 and
# sm_90a. cuBLASLt and NCCL come from the CUDA toolkit when it has them, else from NVIDIA's pip
# wheels (nvidia-cublas, nvidia-nccl-cu13) installed into .cuda-libs/. On a machine without a
# GPU this compiles and links everything and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "SKIPPED: nvcc not found, the CUDA backend was not compiled"
  exit 0
fi
cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
if [[ -z ${ZN_CUBLAS_ROOT:-} ]] && ! compgen -G "$cuda_root/lib64/libcublasLt.so*" >/dev/null \
   && ! compgen -G "$cuda_root/targets/*/lib/libcublasLt.so*" >/dev/null; then
  if ! compgen -G ".cuda-libs/nvidia/cu13/lib/libcublasLt.so*" >/dev/null; then
    pip_args=()
    [[ -d /opt/pypi/simple ]] && pip_args+=(--index-url file:///opt/pypi/simple)
    [[ -d /opt/pypi-more/simple ]] && pip_args+=(--extra-index-url file:///opt/pypi-more/simple)
    python3 -m pip install -q --disable-pip-version-check --no-deps --target .cuda-libs \
      "${pip_args[@]}" nvidia-cublas nvidia-nccl-cu13 \
      || echo "WARNING: could not install the nvidia-cublas wheel; building without cuBLASLt"
  fi
  [[ -d .cuda-libs/nvidia/cu13 ]] && export ZN_CUBLAS_ROOT=$PWD/.cuda-libs/nvidia/cu13
  [[ -d .cuda-libs/nvidia/nccl ]] && export ZN_NCCL_ROOT=$PWD/.cuda-libs/nvidia/nccl
fi
echo "nvcc: $(nvcc --version | grep -o 'release [0-9.]*'); cuBLASLt: ${ZN_CUBLAS_ROOT:-toolkit}"
npx cmake-js build --out build-cuda --CDZN_CUDA=ON --CDCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  ${ZN_CUDA_ARCHS:+--CDCMAKE_CUDA_ARCHITECTURES="$ZN_CUDA_ARCHS"} 2>&1 | tee build-cuda.log \
  | grep -E 'zephyr-native|error|warning|Linking|[1-9][0-9]* bytes (spill|stack)' || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "CUDA build failed (see build-cuda.log)"; exit 1; }
echo "ptxas: $(grep -c 'bytes spill stores' build-cuda.log) kernel compilations, $(grep -cE '[1-9][0-9]* bytes spill' build-cuda.log) with spills"
ls -l build-cuda/cuda/ 2>/dev/null || echo "no CUDA addon built (no CUDA sources listed yet)"
# ZN_CUDA_EMULATE=1: also run the kernel checks on the CPU emulator of CUDA threads (a few
# minutes on 2 cores): the kernels' indexing, masks and fragment layouts, checked without a GPU.
if [[ ${ZN_CUDA_EMULATE:-0} == 1 ]]; then
  echo "CUDA kernels on the CPU emulator (native/tests/cuda/emulator, quick sizes):"
  log=build-cuda/emulator.log
  emulated=0
  bash native/tests/cuda/emulator/run.sh build-cuda >"$log" 2>&1 || emulated=$?
  grep -E '^(FAIL|checks:)|emulator:' "$log" || true
  [[ $emulated -eq 0 ]] || { echo "emulated kernel checks failed (see $log)"; exit 1; }
fi
