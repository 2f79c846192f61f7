#!/usr/bin/env bash
# Runs the device check's kernel checks on the CPU, through the emulator in this folder: every
# .cu of the backend is rewritten (launch syntax, dynamic shared memory) and compiled with the host
# compiler against emulated CUDA headers, each CUDA thread a fiber. Slow (a few thousand emulated
# threads per second) but exact about indexing, masks, fragment layouts and barrier placement,
# so a kernel can be checked before a GPU is lent. cuBLASLt is not emulated. Device work runs
# when the host waits for it (ZN_EMULATOR_EAGER=1: at once), so host/device ordering is checked too.
#   native/tests/cuda/emulator/run.sh <build dir with libzn_core.a> [zn_cuda_check args]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
build=$(cd "${1:?usage: run.sh <build dir with libzn_core.a> [args]}" && pwd)
shift
out=$build/emulator
mkdir -p "$out"
cd "$root"
mapfile -t sources < <(node -e "
  const s = require('./native/sources.json');
  console.log([...s.cuda, ...s.cuda_check].join('\n'));" 2>/dev/null ||
  python3 -c "import json; s=json.load(open('native/sources.json')); print('\n'.join(s['cuda']+s['cuda_check']))")
defines=()
for family in gemm attention rmsnorm rope swiglu embedding logprob dpo adamw; do
  grep -q "native/kernels/cpu/$family.cpp" native/sources.json && defines+=("-DZN_HAVE_CPU_${family^^}=1")
done
objects=()
for source in "${sources[@]}"; do
  name=$(echo "$source" | tr '/' '_')
  rewritten=$out/${name%.*}.cpp
  # kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  ::emu::launcher(kernel, grid, ...)(args)
  # extern __shared__ [__align__(n)] T name[];         ->  T* name = (T*)::emu::dynamic_smem();
  python3 - "$source" "$rewritten" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'\b([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<(.*?)>>>\(', r'::emu::launcher(\1, \2)(', text, flags=re.S)
text = re.sub(r'extern __shared__ (?:__align__\(\d+\) )?([\w ]+?) (\w+)\[\];',
              r'\1* \2 = reinterpret_cast<\1*>(::emu::dynamic_smem());', text)
open(sys.argv[2], 'w').write('#line 1 "%s"\n' % sys.argv[1] + text)
PY
  objects+=("$rewritten")
done
objects+=("native/tests/cuda/emulator/emulator.cpp")
flags=(-std=c++17 -O2 -g -Wall -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas
       -Inative/tests/cuda/emulator -Inative -Inative/tests/cuda -DZN_CUDA_CHECK_CPU=1 "${defines[@]}")
printf '%s\n' "${objects[@]}" | xargs -P "${ZN_JOBS:-2}" -I{} sh -c \
  'o="'"$out"'/$(basename "{}" .cpp).o"; [ "$o" -nt "{}" ] || g++ '"${flags[*]}"' -c "{}" -o "$o"'
g++ -o "$out/zn_cuda_check_emulated" "$out"/*.o "$build/libzn_core.a" -lpthread
"$out/zn_cuda_check_emulated" --no-bench --quick "$@"
