#!/usr/bin/env python3
"""forge's load to first token, timed from outside: process start to the report of a one-token
generation on stdout (`seconds`), and to the process's end (`exit_seconds`), as one JSON line; with
FORGE_PROFILE set, forge's start-up sections (`sections`: the device, the folder, the tokenizer, the
weights) and the rest of its sections summed (`forward_seconds`: the prompt's forward and the token).

    python3 bench/first_token.py FORGE_BINARY MODEL_DIR

The clock starts after this script's own start-up, as the peer's (bench_torch.py `--task load`)
starts after Python has imported torch and transformers; forge's counts its whole process start.
"""
import json, subprocess, sys, time

forge, model = sys.argv[1:3]
start = time.perf_counter()
p = subprocess.Popen([forge, "generate", "-q", "--json", "--device", "cuda", "--model", model, "--prompt", "hello",
                      "--max-new-tokens", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
line = p.stdout.readline()
first = time.perf_counter() - start
err = p.communicate()[1].decode()
ended = time.perf_counter() - start
if p.returncode != 0 or not line:
    sys.exit(f"forge failed ({p.returncode}): {err[-2000:]}")
out = {"seconds": first, "exit_seconds": ended}
profile = next((json.loads(l)["profile"] for l in err.splitlines() if l.startswith('{"profile"')), None)
if profile is not None:
    startup = lambda name: name.startswith(("start:", "load:"))
    out["sections"] = {k: round(v["seconds"], 4) for k, v in profile.items() if startup(k)}
    out["forward_seconds"] = sum(v["seconds"] for k, v in profile.items() if not startup(k))
print(json.dumps(out))
