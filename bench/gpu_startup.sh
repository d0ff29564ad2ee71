#!/usr/bin/env bash
# Where forge's load to first token goes, for the "load again" target on small models, where a fixed
# start-up cost is most of it.
#
#   bench/gpu_startup.sh FORGE_BINARY OUT_DIR MODEL_DIR ...
#
# For each model, three loads to first token (bench/first_token.py, warm JIT cache) with FORGE_PROFILE
# set: the time to the first token's report and to the process's end, and forge's sections (opening
# the device, the folder, the tokenizer, the weights; the prompt's forward). Then the pieces that are
# not forge's, timed alone: the dynamic loader's start-up of the binary (LD_DEBUG=statistics on `forge
# --version`, which opens no device), and from Python over ctypes the driver's start, the primary
# context, cuBLAS's and cuRAND's set-up as candle's device makes them, and a context's teardown with
# 1 GiB allocated. Everything lands in OUT_DIR/startup.txt.
set -uo pipefail
forge=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
{
  for model in "$@"; do
    for run in 1 2 3; do
      echo "$model: $(FORGE_PROFILE=1 python3 "$here/bench/first_token.py" "$forge" "$model")"
    done
  done
  LD_DEBUG=statistics "$forge" --version 2>&1 | grep -i "total startup time\|relocation processing" | head -3
  python3 - <<'PY'
import ctypes, time
t = time.perf_counter
def lap(what, f):
    s = t(); r = f(); print(f"  {what}: {t() - s:.3f} s"); return r
cu = lap("dlopen libcuda", lambda: ctypes.CDLL("libcuda.so.1"))
lap("cuInit", lambda: cu.cuInit(0))
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
cu.cuDeviceGet(ctypes.byref(dev), 0)
lap("primary context", lambda: (cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), cu.cuCtxSetCurrent(ctx)))
blas = lap("dlopen libcublas (with cuBLASLt)", lambda: ctypes.CDLL("libcublas.so.13"))
h = ctypes.c_void_p()
lap("cublasCreate", lambda: blas.cublasCreate_v2(ctypes.byref(h)))
rand = lap("dlopen libcurand", lambda: ctypes.CDLL("libcurand.so.10"))
g = ctypes.c_void_p()
lap("curandCreateGenerator + seed", lambda: (rand.curandCreateGenerator(ctypes.byref(g), 100),
                                             rand.curandSetPseudoRandomGeneratorSeed(g, ctypes.c_ulonglong(299792458))))
p = ctypes.c_ulonglong()
lap("cuMemAlloc 1 GiB", lambda: cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 30)))
lap("context teardown (cuDevicePrimaryCtxReset)", lambda: cu.cuDevicePrimaryCtxReset_v2(dev))
PY
} 2>&1 | tee "$out/startup.txt"
