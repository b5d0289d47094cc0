#!/usr/bin/env python3
"""Checks the `runtime: process` examples standalone, without the platform (scripts/check-examples.sh runs it).

Starts each server the way the platform would (PORT, DILU_FUNCTION, DILU_MAX_BATCH in the environment, a free
port on 127.0.0.1), calls it with the Triton client (`tritonclient.http`) and checks the answers:

  resnet   examples/pytorch/serve.py on the CPU (or the GPU PyTorch sees): liveness, readiness, metadata,
           inference with batch 1 (binary and JSON tensors), 8 concurrent requests (each answer must match the
           same input run alone, so a batch split back in the wrong order fails; the server must have formed
           at least one batch of several requests), one request of batch 8, the 400/404 errors, SIGTERM -> 0,
           no PORT -> 2; and its batcher's failure paths with models that raise on purpose: a CUDA
           out-of-memory error (500 "CUDA out of memory: ...", a batch retried request by request, serving goes
           on) and another CUDA error (500, then the server exits 1).
  train    examples/pytorch/train.py: /health, /status iterations growing with a finite loss, SIGTERM -> 0.
  ctypes   examples/cuda-ctypes/serve.py over the software CUDA driver: the same protocol checks with exact
           answers (input * 2), the kernels and allocations in the driver's log, a request allocation too large
           for the device (500 naming CUDA_ERROR_OUT_OF_MEMORY, then the next request 200), weights too large
           for the device (exit 4 with CUDA_ERROR_OUT_OF_MEMORY on stderr), --train mode, SIGTERM -> 0,
           no PORT -> 2.

  ctypes+interposer  (with --interposer and --dilu) the ctypes server under the platform's CUDA interposer
           with a quota channel of one wave per 10 ms and a 256 MiB cap: a request allocation over the cap is a
           500 naming CUDA_ERROR_OUT_OF_MEMORY, the launches are paced by the budget, weights over the cap exit 4.

Usage: check-examples.py --torch-python PYTHON --driver-dir DIR [--interposer LIB --dilu BIN]
                         [--only resnet,train,ctypes]
Prints one line per check and a summary; exits 1 when a check failed. Needs tritonclient[http] and numpy in
the Python that runs it.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = []
# Logs and the software driver's files; removed at the end unless a check failed.
WORK = tempfile.mkdtemp(prefix="check-examples-")


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    """(status, parsed JSON body) of a GET, or (None, error text) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (OSError, ValueError) as e:
        return None, str(e)


class Process:
    """A server started like the platform starts one; its output goes to a file."""

    def __init__(self, name, command, cwd, env, port):
        self.name = name
        self.port = port
        self.log_path = os.path.join(WORK, f"{name}.log")
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env)
        if port is not None:
            full_env["PORT"] = str(port)
        self.proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, path, timeout):
        """Polls `path` until 200; returns (seconds, statuses seen) or None when the process died or timed out."""
        start = time.monotonic()
        seen = []
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                return None
            status, _ = http_get(self.port, path)
            if status not in seen:
                seen.append(status)
            if status == 200:
                return time.monotonic() - start, seen
            time.sleep(0.2)
        return None

    def terminate(self, timeout=30):
        """Sends SIGTERM and returns the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        self.log.close()
        return self.proc.returncode

    def run_to_end(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode


def protocol_checks(prefix, client, model, input_shape, output_shape):
    """Health, readiness and metadata through the client."""
    check(f"{prefix}: server live", client.is_server_live())
    check(f"{prefix}: server ready", client.is_server_ready())
    check(f"{prefix}: model ready", client.is_model_ready(model))
    check(f"{prefix}: unknown model not ready", not client.is_model_ready(model + "-missing"))
    meta = client.get_model_metadata(model)
    check(f"{prefix}: metadata", meta.get("name") == model
          and meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": input_shape}]
          and meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": output_shape}], json.dumps(meta))
    server = client.get_server_metadata()
    check(f"{prefix}: server metadata names binary_tensor_data", "binary_tensor_data" in server.get("extensions", []))


def infer(client, model, array, binary=True, parameters=None):
    i = triton.InferInput("input", list(array.shape), "FP32")
    i.set_data_from_numpy(array, binary_data=binary)
    outputs = [triton.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer(model, [i], outputs=outputs, parameters=parameters)
    return result.as_numpy("output")


def concurrent_infer(url, model, arrays):
    """Sends every array at once (one client, as many connections); the outputs in order."""
    client = triton.InferenceServerClient(url, concurrency=len(arrays), network_timeout=300.0)
    pending = []
    for array in arrays:
        i = triton.InferInput("input", list(array.shape), "FP32")
        i.set_data_from_numpy(array)
        pending.append(client.async_infer(model, [i]))
    outputs = [p.get_result().as_numpy("output") for p in pending]
    client.close()
    return outputs


def error_of(call):
    """(status, message) of a failed call, None when it succeeded."""
    try:
        call()
    except InferenceServerException as e:
        return str(e.status()), e.message()
    return None


def error_checks(prefix, client, model, good_shape, max_batch):
    wrong = np.zeros([1, 3], dtype=np.float32)
    e = error_of(lambda: infer(client, model, wrong, binary=False))
    check(f"{prefix}: wrong shape -> 400", e is not None and e[0] == "400", str(e))
    e = error_of(lambda: infer(client, model + "-missing", np.zeros(good_shape, dtype=np.float32), binary=False))
    check(f"{prefix}: unknown model -> 404", e is not None and e[0] == "404", str(e))
    too_big = np.zeros([max_batch + 1] + good_shape[1:], dtype=np.float32)
    e = error_of(lambda: infer(client, model, too_big))
    check(f"{prefix}: batch {max_batch + 1} > DILU_MAX_BATCH -> 400", e is not None and e[0] == "400", str(e))


def no_port_check(prefix, command, cwd, env):
    p = Process(prefix + "-noport", command, cwd, env, None)
    status = p.run_to_end(120)
    out = p.output()
    check(f"{prefix}: no PORT -> exit 2 with a message", status == 2 and "PORT is not set" in out,
          f"exit {status}: {out.strip()[-200:]}")


# ---------------------------------------------------------------------------------------------------------


def check_resnet(python):
    prefix, model, max_batch = "resnet", "resnet18", 8
    cwd = os.path.join(ROOT, "examples/pytorch")
    command = [python, "serve.py", "--model", "resnet18"]
    env = {"DILU_FUNCTION": model, "DILU_MAX_BATCH": str(max_batch), "OMP_NUM_THREADS": "1", "LOG_BATCHES": "1"}
    port = free_port()
    server = Process(prefix, command, cwd, env, port)
    try:
        ready = server.wait_ready("/v2/health/ready", 180)
        if not check(f"{prefix}: ready", ready is not None, server.output()[-500:] if ready is None else
                     f"{ready[0]:.1f} s; statuses seen {ready[1]}"):
            return
        start_line = rf"serving resnet18 as model 'resnet18' on http://127\.0\.0\.1:{port}, device (cpu|cuda)"
        check(f"{prefix}: one start line naming device, model and port",
              re.search(start_line, server.output()) is not None, server.output().strip().splitlines()[0])
        url = f"127.0.0.1:{port}"
        client = triton.InferenceServerClient(url, network_timeout=300.0)
        protocol_checks(prefix, client, model, [-1, 3, 224, 224], [-1, 1000])

        rng = np.random.default_rng(0)
        images = rng.random((8, 1, 3, 224, 224), dtype=np.float32)
        alone = [infer(client, model, images[k]) for k in range(8)]
        check(f"{prefix}: batch 1 -> shape [1, 1000], finite",
              all(a.shape == (1, 1000) and np.isfinite(a).all() for a in alone), str(alone[0].shape))
        check(f"{prefix}: different inputs give different outputs", not np.allclose(alone[0], alone[1]))
        as_json = infer(client, model, images[0], binary=False)
        check(f"{prefix}: JSON tensors give the binary answer", np.allclose(as_json, alone[0], rtol=1e-5, atol=1e-5))

        before = server.output().count("from 1 request(s)")
        start = time.monotonic()
        together = concurrent_infer(url, model, [images[k] for k in range(8)])
        elapsed = time.monotonic() - start
        worst = max(float(np.abs(t - a).max()) for t, a in zip(together, alone))
        check(f"{prefix}: 8 concurrent requests answered, each matching its input run alone",
              all(t.shape == (1, 1000) for t in together) and worst < 1e-3,
              f"{elapsed:.2f} s, largest difference {worst:.2e}")
        batches = re.findall(r"batch of (\d+) item\(s\) from (\d+) request\(s\)", server.output())
        grouped = [int(n) for n, r in batches if int(r) > 1]
        check(f"{prefix}: concurrent requests were batched", grouped,
              f"multi-request batches of {grouped}; single-request runs since: "
              f"{server.output().count('from 1 request(s)') - before}")

        eight = infer(client, model, images.reshape(8, 3, 224, 224))
        check(f"{prefix}: one request of batch 8 -> [8, 1000] matching the single runs",
              eight.shape == (8, 1000) and np.abs(eight - np.concatenate(alone)).max() < 1e-3, str(eight.shape))
        error_checks(prefix, client, model, [1, 3, 224, 224], max_batch)
        client.close()
    finally:
        status = server.terminate()
        check(f"{prefix}: SIGTERM -> exit 0", status == 0, f"exit {status}")
    no_port_check(prefix, command, cwd, {"DILU_FUNCTION": model})


# Runs in the torch Python, in examples/pytorch: the batcher's failure paths with models that fail on purpose
# (no GPU is needed to raise torch.cuda.OutOfMemoryError).
BATCHER_FAILURES = r"""
import json, threading, torch, serve

class Flaky(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (batch)")
        if x[0, 0, 0, 0] > 0.5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (big input)")
        return torch.zeros(1, 1000)

class Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

def request(batcher, value, out, k):
    try:
        batcher.submit([torch.full((1, 3, 224, 224), value)], 1)
        out[k] = 200
    except serve.HttpError as e:
        out[k] = [e.status, e.message]

fatal = []
report = {}
batcher = serve.Batcher(Flaky(), torch.device("cpu"), 8, 0.2, fatal.append)
out = [None] * 3
threads = [threading.Thread(target=request, args=(batcher, v, out, k)) for k, v in enumerate([0.0, 1.0, 0.0])]
[t.start() for t in threads]
[t.join() for t in threads]
report["oom_batch"] = out
after = [None]
request(batcher, 0.0, after, 0)
report["after"] = after[0]
broken = serve.Batcher(Broken(), torch.device("cpu"), 8, 0.0, fatal.append)
out = [None]
request(broken, 0.0, out, 0)
report["cuda_error"] = out[0]
report["fatal"] = fatal
print(json.dumps(report))
"""


def check_batcher_failures(python):
    prefix = "resnet batcher"
    cwd = os.path.join(ROOT, "examples/pytorch")
    run = subprocess.run([python, "-c", BATCHER_FAILURES], cwd=cwd, capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        check(f"{prefix}: failure paths ran", False, (run.stdout + run.stderr)[-800:])
        return
    oom = [500, "CUDA out of memory: Tried to allocate 1.00 GiB (big input)"]
    check(f"{prefix}: CUDA OOM on a batch of 3 -> retried one by one; only the request that fails alone -> 500",
          report["oom_batch"] == [200, oom, 200], json.dumps(report["oom_batch"]))
    lines = [line for line in run.stderr.splitlines() if "request failed: CUDA out of memory" in line]
    check(f"{prefix}: CUDA OOM printed on stderr", lines, lines[0] if lines else run.stderr[-300:])
    check(f"{prefix}: the next request after an OOM -> 200", report["after"] == 200, json.dumps(report["after"]))
    check(f"{prefix}: another CUDA error -> 500 and the server is told to exit (status 1)",
          report["cuda_error"][0] == 500 and report["fatal"] == [
              "fatal CUDA error: CUDA error: an illegal memory access was encountered"], json.dumps(report))


def check_train(python):
    prefix = "train"
    cwd = os.path.join(ROOT, "examples/pytorch")
    port = free_port()
    server = Process(prefix, [python, "train.py"], cwd, {"OMP_NUM_THREADS": "1", "BATCH_SIZE": "32"}, port)
    try:
        ready = server.wait_ready("/health", 180)
        if not check(f"{prefix}: /health 200", ready is not None, server.output()[-500:] if ready is None else
                     f"{ready[0]:.1f} s; statuses seen {ready[1]}"):
            return
        _, first = http_get(port, "/status")
        time.sleep(3)
        _, second = http_get(port, "/status")
        check(f"{prefix}: /status iterations grow, loss finite",
              second["iterations"] > first["iterations"] and second["loss"] is not None
              and math.isfinite(second["loss"]), f"{first} -> {second}")
    finally:
        status = server.terminate()
        check(f"{prefix}: SIGTERM -> exit 0", status == 0, f"exit {status}")


def driver_log(path):
    """The software driver's log lines as dicts (fn, rc and the call's fields)."""
    calls = []
    with open(path) as f:
        for line in f:
            calls.append(dict(token.split("=", 1) for token in line.split() if "=" in token))
    return calls


def check_ctypes(driver_dir):
    prefix, model, max_batch = "ctypes", "ctypes-model", 8
    cwd = os.path.join(ROOT, "examples/cuda-ctypes")
    command = [sys.executable, "-S", "serve.py"]  # -S: no site-packages, so the server proves it needs none
    work = tempfile.mkdtemp(prefix="cuda-", dir=WORK)
    device_bytes = 1 << 30
    weights = 64 << 20
    fake = {
        "LD_LIBRARY_PATH": driver_dir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""),
        "DILU_FAKE_CUDA_MEM_BYTES": str(device_bytes),
        "DILU_FAKE_CUDA_STATE": os.path.join(work, "device.state"),
        "DILU_FAKE_CUDA_LOG": os.path.join(work, "driver.log"),
    }
    env = dict(fake, DILU_FUNCTION=model, DILU_MAX_BATCH=str(max_batch), WEIGHTS_BYTES="64MiB",
               KERNEL_BLOCKS="264", KERNEL_THREADS="1024", KERNELS_PER_REQUEST="4")
    port = free_port()
    server = Process(prefix, command, cwd, env, port)
    requests = 0
    try:
        ready = server.wait_ready("/v2/health/ready", 60)
        if not check(f"{prefix}: ready", ready is not None, server.output()[-500:] if ready is None else
                     f"{ready[0]:.1f} s; statuses seen {ready[1]}"):
            return
        url = f"127.0.0.1:{port}"
        client = triton.InferenceServerClient(url, network_timeout=60.0)
        protocol_checks(prefix, client, model, [-1, 4], [-1, 4])

        x = np.array([[1.5, -2.0, 3.25, 1e-3]], dtype=np.float32)
        for binary in (True, False):
            y = infer(client, model, x, binary=binary)
            requests += 1
            check(f"{prefix}: batch 1 ({'binary' if binary else 'JSON'} tensors) -> exactly input * 2",
                  y.shape == (1, 4) and np.array_equal(y, x * 2), str(y.tolist()))
        rng = np.random.default_rng(1)
        arrays = [rng.standard_normal((1, 4), dtype=np.float32) for _ in range(8)]
        together = concurrent_infer(url, model, arrays)
        requests += 8
        check(f"{prefix}: 8 concurrent requests -> each exactly its input * 2",
              all(np.array_equal(t, a * 2) for t, a in zip(together, arrays)))
        batch = rng.standard_normal((8, 4), dtype=np.float32)
        y = infer(client, model, batch)
        requests += 1
        check(f"{prefix}: one request of batch 8 -> exactly input * 2", np.array_equal(y, batch * 2))
        error_checks(prefix, client, model, [1, 4], max_batch)

        fits = 256 << 20
        y = infer(client, model, x, parameters={"alloc_bytes": fits})
        requests += 1
        check(f"{prefix}: alloc_bytes {fits} (fits) -> 200", np.array_equal(y, x * 2))
        too_much = 2 << 30
        e = error_of(lambda: infer(client, model, x, parameters={"alloc_bytes": too_much}))
        expected = f"CUDA_ERROR_OUT_OF_MEMORY (2): allocation of {too_much} bytes failed"
        check(f"{prefix}: alloc_bytes {too_much} (over the device) -> 500 naming CUDA_ERROR_OUT_OF_MEMORY",
              e == ("500", expected), str(e))
        y = infer(client, model, x)
        requests += 1
        check(f"{prefix}: the next request -> 200", np.array_equal(y, x * 2))
        client.close()

        calls = driver_log(fake["DILU_FAKE_CUDA_LOG"])
        launches = [c for c in calls if c.get("fn") == "cuLaunchKernel"]
        shaped = all(c["kernel"] == "dilu_test_kernel" and c["grid"] == "264,1,1" and c["block"] == "1024,1,1"
                     and c["rc"] == "0" for c in launches)
        check(f"{prefix}: driver log has 4 launches per served request ({requests} requests)",
              len(launches) == 4 * requests and shaped, f"{len(launches)} cuLaunchKernel")
        allocs = [(int(c["bytes"]), c["rc"]) for c in calls if c.get("fn") == "cuMemAlloc_v2"]
        frees = [int(c["bytes"]) for c in calls if c.get("fn") == "cuMemFree_v2" and c["rc"] == "0"]
        check(f"{prefix}: driver log has the weights, the request allocation and its free, the failed one",
              allocs == [(weights, "0"), (fits, "0"), (too_much, "2")] and frees == [fits], f"{allocs}; freed {frees}")
        syncs = sum(1 for c in calls if c.get("fn") == "cuStreamSynchronize")
        check(f"{prefix}: one stream synchronize per served request", syncs == requests, f"{syncs}")
    finally:
        status = server.terminate()
        check(f"{prefix}: SIGTERM -> exit 0", status == 0, f"exit {status}")

    big = Process(prefix + "-oom", command, cwd, dict(env, WEIGHTS_BYTES=str(2 * device_bytes)), free_port())
    status = big.run_to_end(60)
    out = big.output()
    check(f"{prefix}: weights over the device -> exit 4 naming CUDA_ERROR_OUT_OF_MEMORY",
          status == 4 and "CUDA_ERROR_OUT_OF_MEMORY" in out, f"exit {status}: {out.strip()[-200:]}")
    no_port_check(prefix, command, cwd, env)

    port = free_port()
    trainer = Process(prefix + "-train", command + ["--train"], cwd, dict(env, DILU_FAKE_CUDA_NS_PER_WAVE="100000"),
                      port)
    try:
        ready = trainer.wait_ready("/health", 60)
        if check(f"{prefix} --train: /health 200", ready is not None, trainer.output()[-500:] if ready is None else
                 f"{ready[0]:.1f} s; statuses seen {ready[1]}"):
            _, first = http_get(port, "/status")
            time.sleep(1)
            _, second = http_get(port, "/status")
            check(f"{prefix} --train: /status iterations grow", second["iterations"] > first["iterations"],
                  f"{first['iterations']} -> {second['iterations']} in 1 s (4 kernels of 100 us per step)")
    finally:
        status = trainer.terminate()
        check(f"{prefix} --train: SIGTERM -> exit 0", status == 0, f"exit {status}")


def check_ctypes_interposer(driver_dir, interposer, dilu):
    """The ctypes server under the platform's CUDA interposer (libdilu_cuda.so) and a quota channel."""
    prefix = "ctypes+interposer"
    cwd = os.path.join(ROOT, "examples/cuda-ctypes")
    work = tempfile.mkdtemp(prefix="interposer-", dir=WORK)
    channel = os.path.join(work, "channel")
    # One full wave (264 x 1024 threads on the simulated device) per 10 ms window, and a 256 MiB cap.
    subprocess.run([dilu, "quota", "create", channel, "--device", "GPU-0000d11a-0000-0000-0000-000000000000",
                    "--budget", "1000000", "--window-ms", "10", "--mem-cap", "256MiB", "--mode", "all"],
                   check=True, stdout=subprocess.DEVNULL)
    env = {
        "LD_LIBRARY_PATH": driver_dir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""),
        "LD_PRELOAD": interposer,
        "DILU_QUOTA_FILE": channel,
        "DILU_FAKE_CUDA_STATE": os.path.join(work, "device.state"),
        "DILU_FUNCTION": "m",
        "WEIGHTS_BYTES": "64MiB",
    }
    command = [sys.executable, "-S", "serve.py"]
    port = free_port()
    server = Process(prefix, command, cwd, env, port)
    try:
        ready = server.wait_ready("/v2/health/ready", 60)
        if not check(f"{prefix}: ready", ready is not None, server.output()[-500:] if ready is None else
                     f"{ready[0]:.1f} s"):
            return
        client = triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60.0)
        x = np.ones((1, 4), dtype=np.float32)
        e = error_of(lambda: infer(client, "m", x, parameters={"alloc_bytes": 300 << 20}))
        check(f"{prefix}: alloc_bytes over the 256 MiB cap -> 500 naming CUDA_ERROR_OUT_OF_MEMORY",
              e is not None and e[0] == "500" and "CUDA_ERROR_OUT_OF_MEMORY (2)" in e[1], str(e))
        start = time.monotonic()
        for _ in range(10):
            infer(client, "m", x)
        elapsed = time.monotonic() - start
        # 40 one-wave kernels at one wave per 10 ms take about 0.4 s (unthrottled: a few ms).
        check(f"{prefix}: the budget paces the launches (10 requests x 4 waves at 1 wave / 10 ms)",
              elapsed >= 0.3, f"{elapsed:.2f} s")
        client.close()
    finally:
        status = server.terminate()
        check(f"{prefix}: SIGTERM -> exit 0", status == 0, f"exit {status}")
    big = Process(prefix + "-oom", command, cwd, dict(env, WEIGHTS_BYTES="512MiB"), free_port())
    status = big.run_to_end(60)
    out = big.output()
    check(f"{prefix}: weights over the cap -> exit 4 naming CUDA_ERROR_OUT_OF_MEMORY",
          status == 4 and "CUDA_ERROR_OUT_OF_MEMORY" in out, f"exit {status}: {out.strip()[-200:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", required=True, help="a Python with torch and torchvision")
    parser.add_argument("--driver-dir", required=True, help="the directory of the software libcuda.so.1")
    parser.add_argument("--interposer", help="libdilu_cuda.so: also run the ctypes server under it")
    parser.add_argument("--dilu", help="the dilu binary (creates the interposer's quota channel)")
    parser.add_argument("--only", default="resnet,train,ctypes", help="comma-separated: resnet, train, ctypes")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    started = time.monotonic()
    if "ctypes" in wanted:
        check_ctypes(args.driver_dir)
        if args.interposer and args.dilu:
            check_ctypes_interposer(args.driver_dir, args.interposer, args.dilu)
        else:
            print("skip ctypes+interposer: no --interposer and --dilu given", flush=True)
    if "resnet" in wanted:
        check_resnet(args.torch_python)
        check_batcher_failures(args.torch_python)
    if "train" in wanted:
        check_train(args.torch_python)
    failed = [name for name, ok in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed in {time.monotonic() - started:.0f} s"
          + (f"; failed: {failed}; logs in {WORK}" if failed else ""))
    if not failed:
        shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
