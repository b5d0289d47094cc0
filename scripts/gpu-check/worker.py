"""One GPU instance for scripts/gpu-check.sh: matrix multiplies in a loop, one JSON line of progress per bin.

Runs under libdilu_cuda.so (LD_PRELOAD) with DILU_QUOTA_FILE pointing at its channel. Modes:
  burn SECONDS   - multiply 4096x4096 fp16 matrices, print {"t": seconds_since_start, "iters": n} per 100 ms
  oom CAP_GIB    - allocate 1.5x the cap (must fail with an out-of-memory error), then 0.5x (must succeed)
"""
import json
import sys
import time

import torch


def burn(seconds: float) -> None:
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    start = time.monotonic()
    next_bin = start + 0.1
    iters = 0
    while True:
        for _ in range(4):
            a @ b
        torch.cuda.synchronize()
        iters += 4
        now = time.monotonic()
        if now >= next_bin:
            print(json.dumps({"t": round(now - start, 4), "wall": now, "iters": iters}), flush=True)
            iters = 0
            next_bin += 0.1
        if now - start >= seconds:
            break


def oom(cap_gib: float) -> None:
    total = torch.cuda.mem_get_info()
    result = {"mem_get_info_free": total[0], "mem_get_info_total": total[1]}
    try:
        big = torch.empty(int(cap_gib * 1.5 * 2**30), dtype=torch.uint8, device="cuda")
        result["over_cap"] = "allocated (cap not enforced!)"
        del big
    except torch.cuda.OutOfMemoryError as error:
        result["over_cap"] = "OutOfMemoryError: " + str(error).splitlines()[0][:120]
    torch.cuda.empty_cache()
    try:
        small = torch.empty(int(cap_gib * 0.5 * 2**30), dtype=torch.uint8, device="cuda")
        small.fill_(1)
        torch.cuda.synchronize()
        result["within_cap"] = "allocated and written"
    except Exception as error:  # noqa: BLE001 - report whatever went wrong
        result["within_cap"] = "failed: " + str(error)[:120]
    result["alive"] = True
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "burn":
        burn(float(sys.argv[2]))
    else:
        oom(float(sys.argv[2]))
