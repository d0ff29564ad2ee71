# Shared by the GPU benchmark scripts: `record TOOL WHAT COMMAND...` runs a command and appends its last
# stdout line (a JSON object), tagged with TOOL and WHAT, to $results; a failure is recorded, not fatal.
record() {
  local tool=$1 what=$2; shift 2
  local line status start=$SECONDS
  # Callers set -o pipefail, so the status is the command's, not tail's.
  line=$("$@" 2>>"$out/stderr.log" | tail -1); status=$?
  # wall_s (the whole command, loading included) is what a one-call plan has to fit into the device's limit.
  if [ "$status" -eq 0 ] && [ -n "$line" ]; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.pop("losses", None); d.update(tool=sys.argv[1], what=sys.argv[2], wall_s=int(sys.argv[4])); print(json.dumps(d))' "$tool" "$what" "$line" $((SECONDS - start)) >> "$results"
  else
    echo "{\"tool\": \"$tool\", \"what\": \"$what\", \"error\": \"exit $status (see stderr.log)\"}" >> "$results"
  fi
}

# checkpoint ARCH: writes (once) the peer's random checkpoint of ARCH with the bundled tokenizer of its
# family; prints its folder.
checkpoint() {
  local ck=$ckpts/$1 tokenizer=$here/examples/tiny-qwen3
  case $1 in qwen3.5-*) tokenizer=$here/examples/tiny-qwen35 ;; esac
  [ -f "$ck/config.json" ] || python3 "$peer/models.py" --arch "$1" --out "$ck" --tokenizer "$tokenizer" >> "$out/stderr.log" 2>&1
  echo "$ck"
}

# The generation benchmarks' prompt (43 tokens with examples/tiny-qwen35's tokenizer).
prompt='fn parse(input: &str) -> Result<Vec<Token>, Error> {
    let mut tokens = Vec::new();
    for (i, c) in input.char_indices() {'

# load_seconds DIR: forge ($forge) from process start to the first generated token's report on stdout
# (`seconds`; `exit_seconds` when the process has ended: on an H200 the driver's teardown of the
# context adds 0.11 s at qwen2.5-0.5b, session 15's call T), as a JSON line. The peer's load stops
# at its first forward's end, before any teardown, and starts after its imports.
load_seconds() {
  python3 "$here/bench/first_token.py" "$forge" "$1"
}

# load_rows ARCH DIR: the four load rows of ARCH's checkpoint DIR, forge's then the peer's, each first
# from empty caches, as on a machine where nothing has run (the driver's JIT cache, CUDA_CACHE_PATH, and
# for the peer Triton's too: flash-linear-attention's kernels, for Qwen3.5), then again reusing them.
# Leaves forge's JIT cache folder in $jit_forge.
load_rows() {
  local arch=$1 ck=$2 jit_peer triton_peer
  jit_forge=$(mktemp -d) jit_peer=$(mktemp -d) triton_peer=$(mktemp -d)
  CUDA_CACHE_PATH=$jit_forge record forge "$arch load first" load_seconds "$ck"
  CUDA_CACHE_PATH=$jit_forge record forge "$arch load again" load_seconds "$ck"
  CUDA_CACHE_PATH=$jit_peer TRITON_CACHE_DIR=$triton_peer record peer "$arch load first" python3 "$peer/bench_torch.py" --model "$ck" --task load
  CUDA_CACHE_PATH=$jit_peer TRITON_CACHE_DIR=$triton_peer record peer "$arch load again" python3 "$peer/bench_torch.py" --model "$ck" --task load
}
