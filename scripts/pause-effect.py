#!/usr/bin/env python3
"""How much slower a batch runs after a pause than right after the previous one, on this machine's CPU.

Starts one `dilu worker` (no quota) serving SqueezeNet, sends ROUNDS sequential requests with no pause and then
with a PAUSE between them, alternating, and prints the mean executor time of a batch of one from the worker's
own `dilu_worker_batch_seconds` (the figure `dilu sim calibrate` puts in a table) and the client's median end to
end, per setting. `dilu sim calibrate --round-gap-ms` exists because of this (docs/sim-vs-live.md).

    scripts/pause-effect.py [--dilu target/debug/dilu] [--pause-ms 200] [--rounds 30] [--repeat 3]

Needs the example models (`dilu models fetch`, or scripts/fetch-models.sh) in $DILU_MODEL_CACHE
(default ~/.cache/dilu/models).
"""
import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dilu", default="target/debug/dilu")
    ap.add_argument("--pause-ms", type=float, default=200.0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    cache = os.environ.get("DILU_MODEL_CACHE", os.path.expanduser("~/.cache/dilu/models"))
    model = os.path.join(cache, "onnx-light", "light_squeezenet.onnx")
    body = open(os.path.join(cache, "inputs", "squeezenet.json"), "rb").read()
    worker = subprocess.Popen(
        [a.dilu, "worker", "--name", "m", "--listen", "127.0.0.1:0", "--model", model, "--max-batch", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in worker.stdout:
            m = re.match(r"dilu worker listening on (\S+)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            sys.exit("the worker did not start")

        def infer():
            req = urllib.request.Request(url + "/v2/models/m/infer", data=body,
                                         headers={"content-type": "application/json"})
            for _ in range(600):
                try:
                    return urllib.request.urlopen(req, timeout=60).read()
                except OSError:
                    time.sleep(0.05)  # loading the model: 503 until it serves
            sys.exit("the worker did not answer")

        def executor_seconds():
            text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
            total = {"sum": 0.0, "count": 0.0}
            for m in re.finditer(r"^dilu_worker_batch_seconds_(sum|count)\{[^}]*\} (\S+)$", text, re.M):
                total[m.group(1)] += float(m.group(2))
            return total["sum"], total["count"]

        infer()
        print(f"{'pause':>8} {'executor ms (mean)':>20} {'end to end ms (median)':>24}")
        for _ in range(a.repeat):
            for pause in (0.0, a.pause_ms / 1000.0):
                s0, n0 = executor_seconds()
                lat = []
                for _ in range(a.rounds):
                    time.sleep(pause)
                    t = time.perf_counter()
                    infer()
                    lat.append(time.perf_counter() - t)
                s1, n1 = executor_seconds()
                lat.sort()
                print(f"{pause * 1000:6.0f}ms {(s1 - s0) / max(n1 - n0, 1) * 1e3:20.1f} {lat[len(lat) // 2] * 1e3:24.1f}")
    finally:
        worker.terminate()
        worker.wait()


if __name__ == "__main__":
    main()
