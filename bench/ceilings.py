#!/usr/bin/env python3
"""The card's two ceilings, measured (METHOD.md): a bf16 matrix product and a device-to-device copy.

    python3 bench/ceilings.py   # prints one JSON line: card, matmul_tflops, copy_tb_s
"""
import json, torch

def median_ms(fn, reps=20):
    for _ in range(3): fn()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]

n = 8192
a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
mm = median_ms(lambda: a @ b)
src = torch.randn(1 << 30, device="cuda", dtype=torch.float32)  # 4 GiB
dst = torch.empty_like(src)
cp = median_ms(lambda: dst.copy_(src), reps=10)
print(json.dumps({
    "card": torch.cuda.get_device_name(),
    "matmul_tflops": 2 * n**3 / (mm / 1e3) / 1e12,
    "copy_tb_s": 2 * src.numel() * 4 / (cp / 1e3) / 1e12,
}))
