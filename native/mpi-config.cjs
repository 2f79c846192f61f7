// Finds MPI for the optional zn_mpi addon (binding.gyp and CMakeLists.txt ask it):
//   node native/mpi-config.cjs found   -> "true" when an MPI C compiler wrapper answers, else "false"
//   node native/mpi-config.cjs cflags  -> its compile flags (-I..., -D...)
//   node native/mpi-config.cjs libs    -> its link flags (-L... -lmpi ...)
// MPI_CC names the wrapper (default mpicc). Open MPI's wrapper answers --showme:compile/link,
// MPICH's -compile-info/-link-info (whose first word is the compiler itself, dropped here).
const { execFileSync } = require('child_process');

const wrapper = process.env.MPI_CC || 'mpicc';

function ask(args) {
  try {
    return execFileSync(wrapper, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function flags(kind) {
  const openMpi = ask([`--showme:${kind}`]);
  if (openMpi !== null) return openMpi.split(/\s+/).filter(Boolean);
  const mpich = ask([kind === 'compile' ? '-compile-info' : '-link-info']);
  if (mpich !== null) return mpich.split(/\s+/).slice(1).filter((f) => /^-[IDLlW]/.test(f));
  return null;
}

const what = process.argv[2];
const compile = flags('compile');
if (what === 'found') {
  process.stdout.write(compile !== null && flags('link') !== null ? 'true' : 'false');
} else if (what === 'cflags') {
  process.stdout.write((compile || []).filter((f) => f !== '-pthread').join(' '));
} else if (what === 'libs') {
  process.stdout.write((flags('link') || []).filter((f) => f !== '-pthread').join(' '));
} else {
  console.error('usage: node native/mpi-config.cjs found|cflags|libs');
  process.exit(1);
}
