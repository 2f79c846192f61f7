#!/usr/bin/env bash
# The device check (issue 8), one command on a machine with an NVIDIA GPU:
#   bash bench/device-check.sh        # results under $OUT (default out/device-check)
# 1. builds the CUDA backend for the GPU it finds (ZN_CUDA_ARCHS overrides, e.g. 90a-real), with
#    cuBLASLt from NVIDIA's pip wheels in python3's environment (nvidia/cu13) or the toolkit;
# 2. zn_cuda_check: every CUDA kernel against its CPU kernel and a float64 reference (PASS/FAIL),
#    SFT/DPO steps of a small Mistral on the GPU model against the CPU model, and generation
#    (KvCache extend calls: prefill, decoding past the window, join and leave) against the CPU;
# 3. timings: GEMM, attention, the memory-bound kernels and a Mistral-7B decoder layer step
#    (forward + backward), each in its own process;
# 4. bench/torch_device.py: torch.matmul and SDPA / FlexAttention on the same shapes and card;
# 4b. with Node.js (carried): the package's GPU model and trainer against the CPU, and SFT and DPO
#    steps of the small preset on the GPU beside transformers + TRL on the same GPU (bench/steps.ts
#    --peer --device cuda; trl and datasets come as wheels from bench/device-wheels.sh);
# 4c. a whole Mistral-7B DPO step, and a Mistral-7B LoRA DPO step (zephyr-native bench --peft), on the GPU model (bf16 policy with checkpointing and the
#    optimizer offloaded to the host, frozen bf16 reference, 8192 policy tokens; its random bf16
#    weights are written to $TMPDIR, 14.5 GB);
# 4d. with Node.js: the recipe's own optimizer steps on Mistral-7B (issue 21), each in its own
#    process, in order of value: SFT (8 micro-batches of 16 x 2048 packed tokens), DPO (4 of 8
#    pairs x 2 x 1024, the frozen reference in the step), DPO with precomputed reference log-probs;
#    residency chosen by the memory plan; MFU against the cuBLASLt rate of part 3 and the datasheet;
#    the same random weights as 4c;
# 4e. with Node.js: NCCL, data parallel on GPU ranks (bench/nccl-check.ts; `--gpus N` or
#    ZN_DEVICE_GPUS=N to also run N ranks under mpirun when N GPUs are there);
# 5. the CPU test suite (ctest) on this host, with its CPU flags (AVX-512 BF16 paths run here);
# 6. one table (bench/device_report.py), printed last and written to $OUT/table.txt.
# A part that fails is reported and the others still run. The whole run keeps within
# ZN_DEVICE_BUDGET seconds (default 540): each part's time limit shrinks to what is left.
# Which parts run: ZN_DEVICE_PARTS or `--parts LIST`, a comma list of checks, timings, torch,
# package, step7b, recipe, nccl, ctest; `all` (the default) or `open`: what the open issues wait
# on (checks, nccl, recipe; about 8 minutes), for a lease too short for everything.
# With ZN_DEVICE_PREBUILT=DIR (bench/device-prebuild.sh builds it here, carried in .device/) the
# check program, the addons and dist/ come from DIR when they run on this machine, saving the
# build's minutes; otherwise everything is built here as before.
# Files in $OUT: device-check.log (everything), results.jsonl, build.log, ctest.log, table.txt,
# peer-cuda-small.json, peer-cuda-small-peft.json, lora-7b-dpo.json and recipe-*.json (with Node.js).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out/device-check}
build=$(realpath -m "${ZN_DEVICE_BUILD:-build-device}")  # absolute: the node part runs from here too
budget=${ZN_DEVICE_BUDGET:-540}
jobs=${ZN_JOBS:-$(nproc)}
mkdir -p "$out" "$build/results"
rm -f "$build"/results/*.jsonl
exec > >(tee "$out/device-check.log") 2>&1
started=$SECONDS
parts=()
wanted_parts=${ZN_DEVICE_PARTS:-all}
for ((i = 1; i < $#; i++)); do [[ ${!i} == --parts ]] && j=$((i + 1)) && wanted_parts=${!j}; done
case $wanted_parts in
  all) wanted_parts=checks,timings,torch,package,step7b,recipe,nccl,ctest ;;
  open) wanted_parts=checks,nccl,recipe ;;
esac
for name in ${wanted_parts//,/ }; do
  case $name in
    checks | timings | torch | package | step7b | recipe | nccl | ctest) ;;
    *) echo "device-check: unknown part '$name' in '$wanted_parts' (parts: checks timings torch package step7b recipe nccl ctest, or all, open)" >&2; exit 2 ;;
  esac
done
wanted() { [[ ,$wanted_parts, == *,$1,* ]]; }
echo "parts: $wanted_parts"

step() { printf '\n=== %s (%ds)\n' "$1" $((SECONDS - started)); }
# Seconds a part may take: its own limit, or what is left of the budget less a reserve for the table.
limit() {
  local left=$((budget - (SECONDS - started) - 20))
  ((left < $1)) && echo "$left" || echo "$1"
}
# part NAME LIMIT COMMAND...: runs COMMAND under a time limit and records how it ended.
part() {
  local name=$1 seconds
  seconds=$(limit "$2")
  shift 2
  if ((seconds < 10)); then
    parts+=("$name: skipped (time budget spent)")
    return 1
  fi
  timeout --kill-after=5 "$seconds" "$@"
  local rc=$?
  case $rc in
    0) parts+=("$name: ok") ;;
    124 | 137) parts+=("$name: TIMED OUT after ${seconds}s") ;;
    *) parts+=("$name: FAILED (exit $rc)") ;;
  esac
  return $rc
}
info() { printf '{"kind":"info","key":"%s","value":"%s"}\n' "$1" "${2//\"/\'}" >> "$build/results/machine.jsonl"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv 2>&1 || echo "nvidia-smi failed"
lscpu | grep -E '^(Model name|CPU\(s\)|Flags)' || true
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512_bf16|amx_bf16)$' | tr '\n' ' ')
echo "CPU SIMD flags: $cpu_flags"
info cpu_flags "$cpu_flags"
info cpu_model "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"

step "configure and build the CUDA backend"
nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
if [[ -z ${ZN_CUBLAS_ROOT:-} ]]; then
  for dir in $(python3 -c 'import nvidia, os; [print(os.path.join(p, s)) for p in nvidia.__path__ for s in ("cu13", "cublas")]' 2>/dev/null); do
    if [[ -f $dir/include/cublasLt.h ]] && compgen -G "$dir/lib/libcublasLt.so*" >/dev/null; then
      export ZN_CUBLAS_ROOT=$dir
      export LD_LIBRARY_PATH=$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      break
    fi
  done
fi
archs=${ZN_CUDA_ARCHS:-}
if [[ -z $archs ]]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  case $cc in
    90) archs=90a-real ;;
    "") archs="80-real;90a-real" ;;
    *) archs=$cc-real ;;
  esac
fi
echo "nvcc: ${nvcc:-missing} ($("$nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*')); archs: $archs; cuBLASLt: ${ZN_CUBLAS_ROOT:-from the toolkit if it has it}"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# With Node.js and node_modules here (../shared/device/prepare.sh carries them), the addons are
# built too (plain cmake finds the Node-API headers in node_modules), for the package-level part.
with_node=OFF
[[ -d node_modules/node-api-headers ]] && command -v node >/dev/null && with_node=ON
cmake_args=(-S . "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DZN_CUDA=ON -DZN_BUILD_ADDON=$with_node
            "-DCMAKE_CUDA_COMPILER=$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$archs")
check=$build/zn_cuda_check
export ZN_ADDON_PATH=$build/Release/zn_cpu.node ZN_CUDA_ADDON=$build/cuda/zn_cuda.node
# Prebuilt binaries (bench/device-prebuild.sh) go where the build would put them, if they start
# here: the check program must find the GPU and cuBLASLt, the addons must load in Node.
prebuilt=no
if [[ -n ${ZN_DEVICE_PREBUILT:-} ]]; then
  from=${ZN_DEVICE_PREBUILT%/}
  mkdir -p "$build/Release" "$build/cuda"
  if xz -dc "$from/zn_cuda_check.xz" >"$check" && chmod +x "$check" && xz -dc "$from/zn_cpu.node.xz" >"$ZN_ADDON_PATH" &&
    xz -dc "$from/zn_cuda.node.xz" >"$ZN_CUDA_ADDON" && "$check" --no-checks --no-bench && { [[ $with_node == OFF ]] || { xz -dc "$from/dist.tar.xz" | tar -xf - &&
      node -e 'require(process.env.ZN_ADDON_PATH); require(process.env.ZN_CUDA_ADDON)'; }; }; then
    prebuilt=yes
    parts+=("prebuilt binaries of commit $(cat "$from/commit" 2>/dev/null || echo '?') for $(cat "$from/archs" 2>/dev/null || echo '?'): used")
  else
    parts+=("prebuilt binaries in $from: did not start here, built from source instead")
    rm -f "$check" "$ZN_ADDON_PATH" "$ZN_CUDA_ADDON"
  fi
fi
echo "prebuilt binaries: $prebuilt"
# configure: the CMake tree, once (what is prebuilt needs none; ctest and a fallback build do).
configured=no
configure() {
  case $configured in yes) return 0 ;; failed) return 1 ;; esac
  if part "configure" 120 cmake "${cmake_args[@]}" -B "$build" >>"$out/build.log" 2>&1; then configured=yes; else configured=failed; return 1; fi
}
: >"$out/build.log"
if [[ $prebuilt == no ]]; then
  if configure && part "build zn_cuda_check" 300 cmake --build "$build" -j "$jobs" --target zn_cuda_check >>"$out/build.log" 2>&1; then
    :
  else
    echo "the full build failed; retrying without the CPU kernels (float64 references only)"
    check=$build-gpu-only/zn_cuda_check
    part "configure gpu-only" 60 cmake "${cmake_args[@]}" -B "$build-gpu-only" -DZN_CUDA_CHECK_CPU=OFF >>"$out/build.log" 2>&1 &&
      part "build gpu-only" 240 cmake --build "$build-gpu-only" -j "$jobs" --target zn_cuda_check >>"$out/build.log" 2>&1
  fi
  grep -E 'zephyr-native|error' "$out/build.log" | head -n 40
  echo "ptxas: $(grep -c 'bytes spill stores' "$out/build.log") kernels compiled, spills:"
  grep -B2 -E '[1-9][0-9]* bytes spill (stores|loads)' "$out/build.log" | grep -E 'Compiling entry|spill' | head -n 20 || true
fi
# The CPU tests build and run meanwhile, in the background (they need no GPU; the GPU timings are
# of large kernels, which a busy host CPU does not slow).
cpu_tests=
if wanted ctest && configure; then
  (
    if cmake --build "$build" -j "$jobs" --target zn_tests >"$out/ctest.log" 2>&1; then
      ZN_NUM_THREADS=$jobs timeout --kill-after=5 "$(limit 300)" ctest --test-dir "$build" --output-on-failure >>"$out/ctest.log" 2>&1
      rc=$?
      case $rc in
        0) echo "ctest: ok" ;;
        124 | 137) echo "ctest: TIMED OUT" ;;
        *) echo "ctest: FAILED (exit $rc)" ;;
      esac
    else
      echo "ctest: zn_tests did not build (see ctest.log)"
    fi >"$build/results/ctest-status.txt"
  ) &
  cpu_tests=$!
fi

if wanted checks; then
  if [[ -x $check ]]; then
    step "kernel checks: CUDA against CPU kernels and float64 references"
    part "kernel and model checks" 240 "$check" --no-bench --json "$build/results/checks.jsonl"
  else
    parts+=("kernel checks and timings: not run (no zn_cuda_check; see build.log)")
  fi
fi

# The kernel timings and torch's on the same shapes come first: they are quick and make the table;
# the package-level part and the whole 7B step, the longest, follow.
if wanted timings && [[ -x $check ]]; then
  for family in gemm attention memory layer; do
    step "timings: $family"
    part "timings $family" 150 "$check" --no-checks --only "$family" --json "$build/results/bench-$family.jsonl"
  done
fi

if wanted torch; then
  step "torch on the same shapes"
  part "torch" 240 env PYTHONUNBUFFERED=1 python3 bench/torch_device.py --json "$build/results/torch.jsonl"
fi

# The Node.js side (the package, the recipe steps, NCCL): the addons and dist/, prebuilt or built.
node_ready=no
if [[ $with_node == ON ]] && { wanted package || wanted recipe || wanted nccl || wanted step7b; }; then
  if [[ $prebuilt == yes ]]; then
    node_ready=yes
  elif configure && part "build addons" 180 cmake --build "$build" -j "$jobs" --target zn_cpu zn_cuda >>"$out/build.log" 2>&1 &&
    part "tsc" 60 node node_modules/typescript/bin/tsc -p tsconfig.json; then
    node_ready=yes
  fi
elif [[ $with_node == OFF ]]; then
  parts+=("package, recipe steps and NCCL: not run (no node or node_modules: carry .device from ../shared/device/prepare.sh)")
fi

# The package on the GPU: lib/model and the trainer driving the CUDA addon's Model against the
# CPU addon (test/cuda-model.test.ts, test/cuda-addon.test.ts), then the user's bench command.
if wanted package && [[ $node_ready == yes ]]; then
  step "the package on the GPU: model and trainer steps against the CPU, zephyr-native bench"
  part "node tests on the GPU" 150 node --test --test-concurrency=1 dist/test/cuda-model.test.js dist/test/cuda-addon.test.js
  # The small preset's steps beside transformers + TRL on this GPU. The image has torch and
  # transformers; trl, datasets and two of their needs travel as wheels in .device/wheels
  # (bench/device-wheels.sh), installed into a scratch folder. Without them the TRL side is
  # skipped with the reason and ours still runs. mistral-7b's step is timed by zn_cuda_check
  # (step7b below), where TRL on one 80 GB GPU would not fit.
  if ! python3 -c 'import trl, datasets' 2>/dev/null && compgen -G ".device/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/zn-site .device/wheels/*.whl &&
      export PYTHONPATH=/tmp/zn-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  python3 -c 'import trl, datasets; print("TRL", trl.__version__, "datasets", datasets.__version__)' 2>&1 | tail -n 1
  part "small preset beside TRL on the GPU" 180 env ZN_PYTHON=python3 node dist/bench/peer.js --preset small \
    --device cuda --precision bf16 --mode both --steps 3 --warmup 1 --json "$out/peer-cuda-small.json"
  # LoRA (r 16, all-linear) on the same preset beside TRL + PEFT (issue "LoRA").
  part "small preset LoRA beside TRL + PEFT on the GPU" 150 env ZN_PYTHON=python3 node dist/bench/peer.js --preset small \
    --device cuda --precision bf16 --mode both --peft --steps 3 --warmup 1 --json "$out/peer-cuda-small-peft.json"
fi

# step7b and the 7B steps below write 14.5 GB of random weights to $TMPDIR: RAM-backed /dev/shm
# when it has room, so that neither writing (fsync) nor loading waits on the disk.
shm_gb=$(df --output=avail -BG /dev/shm 2>/dev/null | tail -n 1 | tr -dc '0-9')
scratch=${TMPDIR:-/tmp}
((${shm_gb:-0} >= 20)) && scratch=/dev/shm
if wanted step7b && [[ -x $check ]]; then
  step "timings: step7b"
  part "timings step7b" 150 env TMPDIR="$scratch" "$check" --no-checks --only step7b \
    --json "$build/results/bench-step7b.jsonl"
  # Mistral-7B LoRA DPO (r 16, all-linear, bf16 base, checkpointing, 4 pairs x 2 x 1024 tokens,
  # the reference by switching the adapters off): the step the 24 GiB plan is for.
  if [[ $node_ready == yes ]]; then
    part "mistral-7b LoRA DPO step" 180 env TMPDIR="$scratch" node dist/lib/cli/main.js bench --preset mistral-7b \
      --device cuda --mode dpo --precision bf16 --peft --steps 2 --warmup 1 --json "$out/lora-7b-dpo.json"
  fi
fi

# ---- NCCL: data parallel on GPU ranks (issue 23, ZeRO stages 0, 1 and 2) --------------------------
# bench/nccl-check.ts: one rank, each ZeRO stage's NCCL collectives (all-reduce; all-reduce and
# all-gather; reduce-scatter and all-gather) on a communicator of one against the model without
# them, bit for bit (f32, bf16, bf16 + offload_optimizer); with `--gpus N` (this script's
# argument) or ZN_DEVICE_GPUS=N and N > 1 GPUs visible, `mpirun -n N` SFT at zero_stage 0, 1, 2
# (and 2 in bf16 + offload) against one process, and the N-rank ZeRO checkpoint resumed on one
# process
# (needs mpirun and the MPI addon, ZN_MPI_ADDON). libnccl.so.2: the system's, else python3's
# nvidia-nccl-cu13 wheel. Says what it ran and what it could not. Before the recipe steps: it is
# short, and the budget may end inside them.
if wanted nccl && [[ $node_ready == yes && -f dist/bench/nccl-check.js ]]; then
  step "NCCL: data parallel on GPU ranks"
  gpus=${ZN_DEVICE_GPUS:-1}
  for ((i = 1; i < $#; i++)); do [[ ${!i} == --gpus ]] && j=$((i + 1)) && gpus=${!j}; done
  visible=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if ((gpus > ${visible:-0})); then
    echo "asked for $gpus GPUs, ${visible:-0} visible: checking with ${visible:-0}"
    gpus=${visible:-0}
  fi
  nccl_lib=$(python3 -c 'import nvidia, os; [print(os.path.join(p, "nccl", "lib")) for p in nvidia.__path__]' 2>/dev/null | head -n 1)
  [[ -n $nccl_lib && -f $nccl_lib/libnccl.so.2 ]] && export LD_LIBRARY_PATH=$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  nccl_seconds=170
  ((gpus > 1)) && nccl_seconds=300  # seven SFT runs of the several-rank part
  part "NCCL checks ($gpus GPUs)" "$nccl_seconds" env NCCL_DEBUG="${NCCL_DEBUG:-WARN}" node dist/bench/nccl-check.js --gpus "$gpus" --timeout 60
elif wanted nccl; then
  parts+=("NCCL checks: not run (needs the package part: node, node_modules and tsc)")
fi

# 4d. The recipe's optimizer steps (bench/steps.ts --preset mistral-7b-sft|mistral-7b-dpo): one
# warm-up micro-batch and optimizer step, then one timed step each (SFT ~30 s, DPO ~10 s on an
# H100 by the timings of 4c). The most valuable first: the budget may end inside the last.
if wanted recipe && [[ $node_ready == yes ]]; then
  step "recipe steps: Mistral-7B SFT and DPO optimizer steps as the recipe runs them"
  # The best cuBLASLt GEMM rate of part 3 on this card (MFU's measured peak); without part 3 each
  # step's process measures it.
  gemm_tflops=$(python3 -c 'import json, sys
rates = [r["tflops"] for r in map(json.loads, open(sys.argv[1])) if r.get("op") == "gemm" and r.get("impl") == "cublaslt" and r.get("tflops")]
print(max(rates) if rates else "")' "$build/results/bench-gemm.jsonl" 2>/dev/null)
  echo "measured bf16 GEMM rate for MFU: ${gemm_tflops:-none, measured by each step where the addon can} TFLOP/s"
  recipe=(env TMPDIR="$scratch" node dist/bench/steps.js --device cuda --precision bf16 --steps 1 --warmup-micro-batches 1
          ${gemm_tflops:+--gemm-tflops "$gemm_tflops"})
  part "recipe step mistral-7b-sft" 200 "${recipe[@]}" --preset mistral-7b-sft --json "$out/recipe-sft.json"
  part "recipe step mistral-7b-dpo" 150 "${recipe[@]}" --preset mistral-7b-dpo --reference model --json "$out/recipe-dpo.json"
  part "recipe step mistral-7b-dpo, precomputed reference" 120 "${recipe[@]}" --preset mistral-7b-dpo --reference precomputed \
    --json "$out/recipe-dpo-precomputed.json"
fi

if [[ -n $cpu_tests ]]; then
  step "CPU tests (ctest) on this host"
  left=$(limit 300)
  # Wait for the background CPU tests, but not past the budget.
  for ((i = 0; i < left; i++)); do kill -0 "$cpu_tests" 2>/dev/null || break; sleep 1; done
  if kill -0 "$cpu_tests" 2>/dev/null; then
    kill -- -"$cpu_tests" 2>/dev/null || kill "$cpu_tests" 2>/dev/null
    parts+=("ctest: still running when the budget ran out")
  else
    parts+=("$(cat "$build/results/ctest-status.txt" 2>/dev/null || echo 'ctest: no status')")
  fi
  grep -E 'tests passed|tests failed|\(Failed|Timeout|SEGFAULT' "$out/ctest.log" | head -n 20
fi

step "report"
cat "$build"/results/*.jsonl >"$out/results.jsonl" 2>/dev/null
printf '%s\n' "${parts[@]}" >"$build/results/parts.txt"
python3 bench/device_report.py "$out/results.jsonl" --parts "$build/results/parts.txt" --ctest "$out/ctest.log" \
  --peer "$out/peer-cuda-small.json" \
  --recipe "$out/recipe-sft.json" "$out/recipe-dpo.json" "$out/recipe-dpo-precomputed.json" | tee "$out/table.txt"
echo "device check finished in $((SECONDS - started))s; files in $out"
