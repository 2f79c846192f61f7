#!/usr/bin/env bash
# Builds here, ahead of a device run, what bench/device-check.sh would otherwise spend its first
# minutes of device time building: the CUDA check program, both Node addons and the compiled
# TypeScript, into .device/prebuilt/ (which `carry: [".device"]` takes along with Node.js and
# node_modules from ../shared/device/prepare.sh). The device check uses them when they run there
# and builds from source when they do not (other system libraries), so carrying them only saves
# time. No GPU is needed to build them.
#   bash bench/device-prebuild.sh           # sm_90a (H100, H200); ZN_CUDA_ARCHS overrides
# The binaries link cuBLASLt dynamically (the device machine has NVIDIA's wheels under python3's
# nvidia/ folder, as here) and load libnccl.so.2 at run time; the CPU addon dispatches its SIMD
# paths at run time, so a binary built on this CPU runs on the device machine's host CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "device-prebuild: nvcc not found: nothing built" >&2; exit 1; }
archs=${ZN_CUDA_ARCHS:-90a-real}
build=build-device-prebuilt
into=.device/prebuilt
mkdir -p .device
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude

# cuBLASLt and nccl.h as scripts/build-cuda.sh finds them (the toolkit, else the pip wheels it
# installs into .cuda-libs/); running it once leaves them there.
[[ -d .cuda-libs/nvidia/cu13 ]] || bash scripts/build-cuda.sh >/dev/null
[[ -z ${ZN_CUBLAS_ROOT:-} && -d .cuda-libs/nvidia/cu13 ]] && export ZN_CUBLAS_ROOT=$PWD/.cuda-libs/nvidia/cu13
[[ -z ${ZN_NCCL_ROOT:-} && -f .cuda-libs/nvidia/nccl/include/nccl.h ]] && export ZN_NCCL_ROOT=$PWD/.cuda-libs/nvidia/nccl

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
echo "device-prebuild: CUDA archs $archs into $into (log: $build/build.log)"
mkdir -p "$build"
cmake -S . "${generator[@]}" -B "$build" -DCMAKE_BUILD_TYPE=Release -DZN_CUDA=ON -DZN_BUILD_ADDON=ON \
  "-DCMAKE_CUDA_COMPILER=$(command -v nvcc)" "-DCMAKE_CUDA_ARCHITECTURES=$archs" >"$build/build.log" 2>&1
cmake --build "$build" -j "$(nproc)" --target zn_cuda_check zn_cpu zn_cuda >>"$build/build.log" 2>&1 ||
  { tail -n 40 "$build/build.log"; echo "device-prebuild: the build failed" >&2; exit 1; }
npm run --silent build:ts

rm -rf "$into.tmp" && mkdir -p "$into.tmp"
# xz: what a device run carries is limited (64 MiB with Node.js and node_modules).
for binary in "$build/zn_cuda_check" "$build/Release/zn_cpu.node" "$build/cuda/zn_cuda.node"; do
  xz -T2 -6 -c "$binary" > "$into.tmp/$(basename "$binary").xz"
done
tar -cf - dist | xz -T2 -3 > "$into.tmp/dist.tar.xz"
git rev-parse HEAD > "$into.tmp/commit"
echo "$archs" > "$into.tmp/archs"
rm -rf "$into" && mv "$into.tmp" "$into"
du -sh "$into"/* | sed 's/^/prebuilt: /'
du -sh .device | sed 's/^/all that `carry: [".device"]` takes (at most 64 MiB with the working tree): /'
echo "carry: [\".device\"]; on the device: source .device/env.sh && ZN_DEVICE_PREBUILT=.device/prebuilt bash bench/device-check.sh"
