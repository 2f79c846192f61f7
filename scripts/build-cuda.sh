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
in_toolkit() { compgen -G "$cuda_root/$1" >/dev/null || compgen -G "$cuda_root/targets/*/$1" >/dev/null; }
# NVIDIA's pip wheels the toolkit lacks, into .cuda-libs/nvidia/: cuBLASLt, and nccl.h for data
# parallel on GPUs (libnccl.so.2 itself is loaded at run time; toolkits seldom ship NCCL).
wheels=()
if [[ -z ${ZN_CUBLAS_ROOT:-} ]] && ! in_toolkit "lib64/libcublasLt.so*" && ! in_toolkit "lib/libcublasLt.so*"; then
  compgen -G ".cuda-libs/nvidia/cu13/lib/libcublasLt.so*" >/dev/null || wheels+=(nvidia-cublas)
  cublas_from_wheel=1
fi
if [[ -z ${ZN_NCCL_ROOT:-} ]] && ! in_toolkit "include/nccl.h"; then
  [[ -f .cuda-libs/nvidia/nccl/include/nccl.h ]] || wheels+=(nvidia-nccl-cu13)
  nccl_from_wheel=1
fi
if ((${#wheels[@]})); then
  # One scratch target merged into .cuda-libs/nvidia: pip --target skips a top-level folder
  # (nvidia/) that already exists, which would drop the second wheel of two separate installs.
  pip_args=()
  [[ -d /opt/pypi/simple ]] && pip_args+=(--index-url file:///opt/pypi/simple)
  [[ -d /opt/pypi-more/simple ]] && pip_args+=(--extra-index-url file:///opt/pypi-more/simple)
  scratch=$(mktemp -d)
  if python3 -m pip install -q --disable-pip-version-check --no-deps --target "$scratch" "${pip_args[@]}" "${wheels[@]}"; then
    mkdir -p .cuda-libs/nvidia && cp -a "$scratch"/nvidia/. .cuda-libs/nvidia/
  else
    echo "WARNING: could not install ${wheels[*]}; building without what they provide"
  fi
  rm -rf "$scratch"
fi
[[ -n ${cublas_from_wheel:-} && -d .cuda-libs/nvidia/cu13 ]] && export ZN_CUBLAS_ROOT=$PWD/.cuda-libs/nvidia/cu13
[[ -n ${nccl_from_wheel:-} && -f .cuda-libs/nvidia/nccl/include/nccl.h ]] && export ZN_NCCL_ROOT=$PWD/.cuda-libs/nvidia/nccl
echo "nvcc: $(nvcc --version | grep -o 'release [0-9.]*'); cuBLASLt: ${ZN_CUBLAS_ROOT:-toolkit}; nccl.h: ${ZN_NCCL_ROOT:-toolkit}"
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
