"""Section 5 of scripts/gpu-check.sh: the platform (`dilu up`) on the GPU.

1. Starts `dilu up` with NVML discovery, the CUDA interposer and no CPU device (`--cpu-cores 0`), so
   `runtime: process` functions land on the GPU.
2. Deploys the PyTorch example (examples/pytorch/serve.py, the process section of resnet.yaml) twice with
   `dilu deploy -f`: functions `rn-a` (request 0.3) and `rn-b` (request 0.7), limits = requests, quota.memory
   4GiB and scaling.capacity_rps given (no profiling), one instance each.
3. Load: closed-loop clients send v2 requests ([1,3,224,224] FP32, binary tensor data) through the gateway.
   Phase A: only rn-a is busy; phase B: both are. `GET /v1/instances` is sampled every ~10 ms; the figures are
   each phase's launch and cost split in 50 ms buckets (medians), and the vertical reaction: from a burst's first
   request to the agent's `busy_since_ns` (the tick that counted the burst; CLOCK_MONOTONIC, the clock of
   `time.monotonic_ns()`), to the first sample that shows the instance busy, and to the first sample whose
   division of the device (shares, unlimited budgets) differs from the one before the burst.
4. Memory cap: both functions are deleted and `cap` is deployed (examples/cuda-ctypes/serve.py, device gpu,
   quota.memory 1GiB); a request with `parameters: {"alloc_bytes": 2GiB}` must be answered 500 with CUDA out of
   memory, the next request 200 (the process lives), `counters.alloc_failures` >= 1 and the function's
   `last_error` must mention device memory.

Everything measured goes to OUT in three files, also when a step fails: platform.json (configuration, checks,
figures, the API's views, and the tails of dilu up's stderr and of every instance log), platform-samples.jsonl
(every /v1/instances sample) and platform-summary.txt (what was printed). Every wait has a timeout, the whole
section a deadline (--budget-s), and `dilu up` is stopped on exit (SIGTERM, then SIGKILL), which stops its
instances; its pid is in WORK/up.pid for the caller's trap.

The GPU's capacity (cost units per 5 ms window) is learned by the token manager unless --gpu-capacity gives it
(gpu-check.sh passes section 1's calibration); the figures say which.

Dry run without a GPU (DILU_GPU_CHECK_DRY=1 or --dry): the GPU is declared (`--no-nvml --gpu UUID,memory=80GiB,
capacity=...`) and the software CUDA driver of crates/dilu-cuda-testkit (--fake-cuda-dir, or
DILU_FAKE_CUDA_DIR) stands in for libcuda.so.1, simulating kernel durations on one device shared by the
instances. The load functions then run the ctypes server (examples/cuda-ctypes/serve.py, [1,4] JSON
requests, 16 kernels each) unless DILU_GPU_CHECK_WORKLOAD=pytorch (which then runs serve.py on the CPU: the
plumbing only, no GPU counters); on a real GPU they run PyTorch unless that Python lacks torchvision or its
torch sees no CUDA.

Other switches (flags, or environment): DILU_PYTHON (--python), DILU_GPU_CHECK_CAPACITY (--gpu-capacity N or
learned), DILU_GPU_CHECK_LIMIT (--limit: the functions' limit, 'request' or a share; the placer bounds the sum
of limits at 1.5), DILU_GPU_CHECK_CLIENTS (--clients per function, 8), DILU_GPU_CHECK_PHASE_S (--phase-s, 5),
DILU_GPU_CHECK_BUDGET_S (--budget-s, 170), DILU_GPU_CHECK_JSON=1 (--json: PyTorch requests as JSON tensors).

Usage: platform.py --dilu BIN --interposer LIB --out DIR --work DIR [--gpu-capacity UNITS] [--dry]
                   [--fake-cuda-dir DIR] [--python PY] [--phase-s S] [--budget-s S]
Exit status: 0 when every check passed, 1 otherwise.
"""
import argparse
import array
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE_UUID = "GPU-0000d11a-0000-0000-0000-000000000000"  # the software driver's device 0
WINDOW_NS = 5_000_000
COST_UNITS_PER_WAVE = 1_000_000
BUCKET_NS = 50_000_000
GIB = 1 << 30


class CheckFailed(Exception):
    """A check that did not hold; the section goes on where it can."""


# ---------------------------------------------------------------------------------------------------------
# Results: written to OUT after every step and on exit
# ---------------------------------------------------------------------------------------------------------


class Results:
    def __init__(self, out):
        self.out = out
        self.data = {"config": {}, "steps": [], "checks": [], "ok": None}
        self.lock = threading.Lock()
        self.lines = []

    def say(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def check(self, name, ok, detail=""):
        with self.lock:
            self.data["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        self.say(f"  [{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}")
        return ok

    def step(self, name, seconds, ok, detail=""):
        with self.lock:
            self.data["steps"].append({"step": name, "seconds": round(seconds, 3), "ok": ok, "detail": detail})
        self.save()

    def save(self):
        os.makedirs(self.out, exist_ok=True)
        with self.lock:
            text = json.dumps(self.data, indent=1, default=str)
        with open(os.path.join(self.out, "platform.json"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(self.out, "platform-summary.txt"), "w") as f:
            f.write("\n".join(self.lines) + "\n")


# ---------------------------------------------------------------------------------------------------------
# The platform
# ---------------------------------------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def cap(self, seconds):
        """`seconds`, or less so the section's deadline holds; CheckFailed when it has passed."""
        left = self.left()
        if left <= 0:
            raise CheckFailed("the section's time budget is spent")
        return min(seconds, left)


class Platform:
    """A running `dilu up` and a small client for its API."""

    def __init__(self, args, deadline, results):
        self.args = args
        self.deadline = deadline
        self.results = results
        self.data_dir = os.path.join(args.work, "data")
        self.err_path = os.path.join(args.work, "up.err")
        self.proc = None
        self.url = None
        self.token = None

    def start(self):
        a = self.args
        cmd = [a.dilu, "up", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir, "--interposer", a.interposer,
               "--cpu-cores", "0", "--stop-grace-s", "2"]
        env = dict(os.environ)
        env.pop("DILU_TOKEN", None)
        env.setdefault("RUST_BACKTRACE", "0")
        if a.dry:
            gpu = f"{FAKE_UUID},memory=80GiB"
            if a.gpu_capacity:
                gpu += f",capacity={a.gpu_capacity}"
            cmd += ["--no-nvml", "--gpu", gpu]
            # Inherited by the instances (supervisor's INHERITED_ENV): the interposer finds the driver there.
            env["LD_LIBRARY_PATH"] = a.fake_cuda_dir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
            env["DILU_REAL_LIBCUDA"] = os.path.join(a.fake_cuda_dir, "libcuda.so.1")
        elif a.gpu_capacity:
            cmd += ["--gpu-capacity", str(a.gpu_capacity)]
        self.results.data["config"]["up_command"] = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.err_path, "w"), env=env,
                                     text=True, start_new_session=True)
        with open(os.path.join(self.args.work, "up.pid"), "w") as f:
            f.write(str(self.proc.pid))
        line = read_line(self.proc.stdout, self.deadline.cap(30))
        prefix = "dilu up: serving on "
        if not line.startswith(prefix):
            raise CheckFailed(f"dilu up printed {line!r} instead of its banner; stderr: {tail(self.err_path)}")
        self.url = line[len(prefix):].strip()
        # Keep draining stdout so dilu up never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.token = open(os.path.join(self.data_dir, "token")).read().strip()
        parsed = urllib.parse.urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port

    def stop(self):
        """SIGTERM (dilu up then stops its instances), SIGKILL after 20 s; the pid file goes once it is reaped."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:
            os.remove(os.path.join(self.args.work, "up.pid"))
        except OSError:
            pass

    def connection(self, timeout=30):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, method, path, body=None, content_type="application/json", auth=False, timeout=30,
             headers=None):
        """(status, parsed JSON or text) of one request on a fresh connection."""
        conn = self.connection(self.deadline.cap(timeout))
        try:
            h = dict(headers or {})
            if body is not None:
                h["Content-Type"] = content_type
            if auth:
                h["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def get(self, path):
        status, body = self.call("GET", path)
        if status != 200:
            raise CheckFailed(f"GET {path} answered {status}: {body}")
        return body

    def deploy(self, spec):
        """`dilu deploy -f` of `spec` (written as JSON; dilu deploy expands ${DILU_PYTHON:-python3})."""
        path = os.path.join(self.args.work, f"{spec['name']}.json")
        with open(path, "w") as f:
            json.dump(spec, f, indent=1)
        env = dict(os.environ, DILU_PYTHON=self.args.python)
        env.pop("DILU_TOKEN", None)
        out = subprocess.run([self.args.dilu, "deploy", "-f", path, "--server", self.url, "--token", self.token],
                             capture_output=True, text=True, env=env, timeout=self.deadline.cap(60))
        if out.returncode != 0:
            raise CheckFailed(f"dilu deploy -f {path} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
        return out.stdout.strip()

    def delete(self, name):
        status, body = self.call("DELETE", f"/v1/functions/{name}", auth=True)
        if status not in (200, 202, 204, 404):  # 404: never deployed (a failed deploy)
            raise CheckFailed(f"DELETE /v1/functions/{name} answered {status}: {body}")

    def wait_running(self, names, timeout):
        """Waits until every function runs with a ready instance; {name: view}."""
        end = time.monotonic() + self.deadline.cap(timeout)
        views = {}
        exited = {}  # name -> when an instance was first seen to have exited (a crash loop fails after 15 s)
        while True:
            pending = []
            for name in names:
                view = self.get(f"/v1/functions/{name}")
                views[name] = view
                phase = (view.get("status") or {}).get("phase")
                if phase == "failed":
                    raise CheckFailed(f"{name} failed: {(view.get('status') or {}).get('reason')}; "
                                      f"last_error: {view.get('last_error')}")
                if " exited" in (view.get("last_error") or ""):
                    exited.setdefault(name, time.monotonic())
                    if time.monotonic() - exited[name] > 15:
                        raise CheckFailed(f"{name}'s instances keep exiting: {view.get('last_error')}")
                ready = [i for i in view.get("instances") or []
                         if i.get("ready") and not i.get("profiling") and not i.get("draining")]
                if phase != "running" or not ready:
                    pending.append(f"{name}: {phase}, last_error {view.get('last_error')}")
            if not pending:
                return views
            if time.monotonic() > end:
                raise CheckFailed(f"not running within {timeout:.0f}s: {'; '.join(pending)}")
            if self.proc.poll() is not None:
                raise CheckFailed(f"dilu up exited ({self.proc.returncode}): {tail(self.err_path)}")
            time.sleep(0.2)

    def instances_of(self, name):
        return [i for i in self.get("/v1/instances")["instances"] if i.get("function") == name]

    def wait_gone(self, names, timeout):
        end = time.monotonic() + self.deadline.cap(timeout)
        while True:
            left = [i["id"] for i in self.get("/v1/instances")["instances"] if i.get("function") in names]
            if not left:
                return
            if time.monotonic() > end:
                raise CheckFailed(f"instances {left} still there {timeout:.0f}s after their functions were deleted")
            time.sleep(0.2)


def read_line(stream, timeout):
    """One line from `stream`, or CheckFailed after `timeout` seconds."""
    box = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise CheckFailed(f"no line within {timeout:.0f}s")
    return box[0]


def tail(path, nbytes=3000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"({path}: {e})"


# ---------------------------------------------------------------------------------------------------------
# The functions
# ---------------------------------------------------------------------------------------------------------


def fake_env(args):
    """The software driver's settings an instance needs (the agent passes no DILU_FAKE_CUDA_* itself)."""
    if not args.dry:
        return {}
    return {"DILU_FAKE_CUDA_STATE": os.path.join(args.work, "device.state"),
            "DILU_FAKE_CUDA_NS_PER_WAVE": str(args.fake_ns_per_wave)}


def pytorch_spec(args, name, request, limit):
    """The process section of examples/pytorch/resnet.yaml, on the GPU, with a given quota and capacity."""
    return {
        "name": name, "kind": "inference", "runtime": "process",
        "process": {
            "command": ["${DILU_PYTHON:-python3}", "serve.py", "--model", "resnet18", "--warmup"],
            "workdir": os.path.join(ROOT, "examples/pytorch"),
            "env": dict({"OMP_NUM_THREADS": "1"}, **fake_env(args)),
            "max_batch": 8, "device": "gpu", "ready_timeout_s": 150,
        },
        "slo_ms": 2000,
        "quota": {"request": request, "limit": limit, "memory": "4GiB"},
        "scaling": {"min_instances": 1, "max_instances": 1, "capacity_rps": 100},
    }


def ctypes_spec(args, name, request, limit, memory):
    """examples/cuda-ctypes/serve.py (input * 2, KERNELS_PER_REQUEST launches per request) on the GPU."""
    return {
        "name": name, "kind": "inference", "runtime": "process",
        "process": {
            "command": ["${DILU_PYTHON:-python3}", "serve.py"],
            "workdir": os.path.join(ROOT, "examples/cuda-ctypes"),
            "env": dict({"KERNELS_PER_REQUEST": str(args.kernels)}, **fake_env(args)),
            "max_batch": 8, "device": "gpu", "ready_timeout_s": 60,
            "sample": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        },
        "slo_ms": 2000,
        "quota": {"request": request, "limit": limit, "memory": memory},
        "scaling": {"min_instances": 1, "max_instances": 1, "capacity_rps": 100},
    }


def request_body(workload, batch, as_json=False):
    """(body, headers) of one v2 inference request for the workload. PyTorch's input goes as binary tensor data
    unless `as_json`: parsing 150528 JSON numbers per image costs the server more CPU than ResNet-18 costs the GPU.
    """
    if workload == "pytorch":
        rng = random.Random(7)
        n = batch * 3 * 224 * 224
        if as_json:
            body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, 3, 224, 224],
                                           "data": [round(rng.random(), 4) for _ in range(n)]}]}).encode()
            return body, {"Content-Type": "application/json"}
        data = array.array("f", (rng.random() for _ in range(n)))
        if sys.byteorder == "big":
            data.byteswap()
        raw = data.tobytes()
        header = json.dumps({
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, 3, 224, 224],
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
        return header + raw, {"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(len(header))}
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, 4],
                                   "data": [1.0, 2.0, 3.0, 4.0] * batch}]}).encode()
    return body, {"Content-Type": "application/json"}


# ---------------------------------------------------------------------------------------------------------
# Load and sampling
# ---------------------------------------------------------------------------------------------------------


class Client(threading.Thread):
    """A closed-loop client: one request at a time on a kept-alive connection until stopped."""

    def __init__(self, platform, function, body, headers, stop):
        super().__init__(daemon=True)
        self.platform, self.function, self.body, self.headers, self.stop = platform, function, body, headers, stop
        self.done = []  # (start_ns, end_ns, status)
        self.errors = []

    def run(self):
        conn = None
        path = f"/v2/models/{self.function}/infer"
        while not self.stop.is_set():
            t0 = time.monotonic_ns()
            try:
                if conn is None:
                    conn = self.platform.connection(timeout=20)
                conn.request("POST", path, body=self.body, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                self.done.append((t0, time.monotonic_ns(), resp.status))
                if resp.status != 200 and len(self.errors) < 5:
                    self.errors.append(f"{resp.status}: {raw[:300].decode(errors='replace')}")
            except (OSError, http.client.HTTPException) as e:
                self.done.append((t0, time.monotonic_ns(), 0))
                if len(self.errors) < 5:
                    self.errors.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()


class Sampler(threading.Thread):
    """GET /v1/instances every `period` seconds; compact samples per function."""

    FIELDS_B = ("share", "budget", "busy", "busy_since_ns", "usage_last_window")
    FIELDS_C = ("cost", "launches", "launches_delayed", "delay_seconds", "memory_bytes", "alloc_failures")

    def __init__(self, platform, functions, period, stop, path):
        super().__init__(daemon=True)
        self.platform, self.functions, self.period, self.stop = platform, functions, period, stop
        self.samples = []
        self.errors = 0
        self.file = open(path, "w")

    def run(self):
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic_ns()
            try:
                if conn is None:
                    conn = self.platform.connection(timeout=5)
                conn.request("GET", "/v1/instances")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                t1 = time.monotonic_ns()
                sample = {"t": (t0 + t1) // 2, "rtt_us": (t1 - t0) // 1000}
                for inst in body.get("instances", []):
                    fn = inst.get("function")
                    if fn not in self.functions:
                        continue
                    b, c = inst.get("budgeting") or {}, inst.get("counters") or {}
                    s = {k: b.get(k) for k in self.FIELDS_B}
                    s.update({k: c.get(k) for k in self.FIELDS_C})
                    s["id"] = inst.get("id")
                    sample[fn] = s
                self.samples.append(sample)
                self.file.write(json.dumps(sample) + "\n")
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            spent = (time.monotonic_ns() - t0) / 1e9
            time.sleep(max(0.0, self.period - spent))
        self.file.close()


def value_at(samples, fn, key, t):
    """The last sampled value of `fn`'s `key` at or before time `t` (None before the first sample)."""
    lo, hi = 0, len(samples)
    while lo < hi:  # first sample after t
        mid = (lo + hi) // 2
        if samples[mid]["t"] <= t:
            lo = mid + 1
        else:
            hi = mid
    for s in reversed(samples[:lo]):
        if fn in s and s[fn].get(key) is not None:
            return s[fn][key]
    return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def division(sample, functions):
    """How the device is divided in a sample: each function's share (3 decimals) and whether it is unlimited."""
    out = []
    for fn in functions:
        s = sample.get(fn) or {}
        share = s.get("share")
        out.append((fn, None if share is None else round(share, 3), s.get("budget") is None))
    return tuple(out)


def phase_figures(samples, functions, lo, hi, settle_ns):
    """The launch/cost split of a phase [lo, hi) in 50 ms buckets (from lo + settle_ns), medians."""
    a, b = functions
    buckets = []
    t = lo + settle_ns
    while t + BUCKET_NS <= hi:
        row = {}
        for fn in functions:
            for key in ("cost", "launches", "launches_delayed"):
                v0, v1 = value_at(samples, fn, key, t), value_at(samples, fn, key, t + BUCKET_NS)
                row[f"{fn}.{key}"] = None if v0 is None or v1 is None else v1 - v0
        ca, cb = row[f"{a}.cost"], row[f"{b}.cost"]
        la, lb = row[f"{a}.launches"], row[f"{b}.launches"]
        row["cost_share_a"] = ca / (ca + cb) if ca is not None and cb is not None and ca + cb > 0 else None
        row["launch_share_a"] = la / (la + lb) if la is not None and lb is not None and la + lb > 0 else None
        buckets.append(row)
        t += BUCKET_NS
    inside = [s for s in samples if lo + settle_ns <= s["t"] < hi]
    fig = {"buckets": len(buckets), "from_s": settle_ns / 1e9}
    for key in ("cost", "launches", "launches_delayed"):
        for fn in functions:
            fig[f"median_{key}_per_50ms.{fn}"] = median(r[f"{fn}.{key}"] for r in buckets)
    fig["median_cost_share.a"] = median(r["cost_share_a"] for r in buckets)
    fig["median_launch_share.a"] = median(r["launch_share_a"] for r in buckets)
    for fn in functions:
        fig[f"median_share.{fn}"] = median((s.get(fn) or {}).get("share") for s in inside)
        fig[f"median_budget.{fn}"] = median((s.get(fn) or {}).get("budget") for s in inside)
        fig[f"unlimited_fraction.{fn}"] = (sum(1 for s in inside if fn in s and s[fn].get("budget") is None)
                                           / len(inside)) if inside else None
        fig[f"busy_fraction.{fn}"] = (sum(1 for s in inside if (s.get(fn) or {}).get("busy")) / len(inside)
                                      if inside else None)
    return fig


def reaction(samples, functions, fn, burst_ns, end_ns):
    """How fast the platform saw `fn`'s burst (its first request at burst_ns) and re-divided the device."""
    before = [s for s in samples if s["t"] < burst_ns]
    after = [s for s in samples if burst_ns <= s["t"] < end_ns]
    out = {"function": fn}
    since = next(((s[fn]["busy_since_ns"]) for s in after if (s.get(fn) or {}).get("busy_since_ns")), None)
    out["agent_busy_since_ms"] = None if since is None else (since - burst_ns) / 1e6
    first_busy = next((s["t"] for s in after if (s.get(fn) or {}).get("busy")), None)
    out["first_busy_sample_ms"] = None if first_busy is None else (first_busy - burst_ns) / 1e6
    if before:
        base = division(before[-1], functions)
        out["division_before"] = base
        changed = next((s for s in after if division(s, functions) != base), None)
        out["redivided_ms"] = None if changed is None else (changed["t"] - burst_ns) / 1e6
        out["division_after"] = division(changed, functions) if changed else None
        b0 = {f: (before[-1].get(f) or {}).get("budget") for f in functions}
        moved = next((s for s in after if {f: (s.get(f) or {}).get("budget") for f in functions} != b0), None)
        out["budgets_before"] = b0
        out["budgets_changed_ms"] = None if moved is None else (moved["t"] - burst_ns) / 1e6
    out["sampling_period_ms"] = (median(b["t"] - a["t"] for a, b in zip(after, after[1:])) or 0) / 1e6
    return out


def client_figures(clients, lo, hi):
    done = [d for c in clients for d in c.done if lo <= d[0] < hi]
    ok = [d for d in done if d[2] == 200]
    lat = sorted((d[1] - d[0]) / 1e6 for d in ok)
    seconds = (hi - lo) / 1e9
    return {"requests": len(done), "ok": len(ok), "errors": len(done) - len(ok),
            "ok_per_s": len(ok) / seconds if seconds > 0 else None,
            "latency_ms_p50": lat[len(lat) // 2] if lat else None,
            "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "first_error": next((e for c in clients for e in c.errors), None)}


# ---------------------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------------------


def load_step(args, up, res, workload, functions):
    a, b = functions
    body, headers = request_body(workload, args.batch, args.json)
    sampler_stop, stop_a, stop_b = threading.Event(), threading.Event(), threading.Event()
    sampler = Sampler(up, set(functions), 0.01, sampler_stop, os.path.join(args.out, "platform-samples.jsonl"))
    clients_a = [Client(up, a, body, headers, stop_a) for _ in range(args.clients)]
    clients_b = [Client(up, b, body, headers, stop_b) for _ in range(args.clients)]
    phase_ns = int(args.phase_s * 1e9)
    if up.deadline.left() < 2 * args.phase_s + 15:
        raise CheckFailed(f"only {up.deadline.left():.0f}s of the section's budget left: load skipped")
    sampler.start()
    t_a = t_b = t_end = None
    interrupted = None
    try:
        time.sleep(1.0)  # idle baseline
        t_a = time.monotonic_ns()
        for c in clients_a:
            c.start()
        time.sleep(args.phase_s)
        t_b = time.monotonic_ns()
        for c in clients_b:
            c.start()
        time.sleep(args.phase_s)
        t_end = time.monotonic_ns()
    except BaseException as e:  # noqa: BLE001 - a SIGTERM: the figures so far are still written, then it goes on
        interrupted = e
    stop_a.set()
    stop_b.set()
    joined = time.monotonic() + 25
    for c in clients_a + clients_b:
        if c.ident is not None:
            c.join(timeout=max(0.0, joined - time.monotonic()))
    time.sleep(0.2)
    sampler_stop.set()
    sampler.join(timeout=10)
    now = time.monotonic_ns()
    t_a = t_a or now
    t_b = t_b or now
    t_end = t_end or now
    samples = sampler.samples
    settle = min(500_000_000, phase_ns // 4)
    fig = {
        "workload": workload, "batch": args.batch, "json": args.json, "clients_per_function": args.clients,
        "phase_s": args.phase_s,
        "interrupted": interrupted is not None,
        "samples": len(samples), "sample_errors": sampler.errors,
        "sample_rtt_us_median": median(s["rtt_us"] for s in samples),
        "phase_a": phase_figures(samples, functions, t_a, t_b, settle),
        "phase_b": phase_figures(samples, functions, t_b, t_end, settle),
        "clients_a": {"phase_a": client_figures(clients_a, t_a, t_b), "phase_b": client_figures(clients_a, t_b, t_end)},
        "clients_b": {"phase_b": client_figures(clients_b, t_b, t_end)},
        "reaction_a": reaction(samples, functions, a, t_a, t_b),
        "reaction_b": reaction(samples, functions, b, t_b, t_end),
        "t0_ns": {"phase_a": t_a, "phase_b": t_b, "end": t_end},
    }
    res.data["load"] = fig
    res.save()
    if interrupted is not None:
        raise interrupted

    print_load(res, fig, functions, args.limit, len(samples), sampler.errors)
    res.check("load: both functions answered 200 in both phases",
              fig["clients_a"]["phase_a"]["ok"] > 0 and fig["clients_a"]["phase_b"]["ok"] > 0
              and fig["clients_b"]["phase_b"]["ok"] > 0,
              f"errors {fig['clients_a']['phase_a']['errors']} / {fig['clients_a']['phase_b']['errors']} / "
              f"{fig['clients_b']['phase_b']['errors']}")
    res.check("load: /v1/instances sampled with counters for both instances",
              len(samples) > 100 and any(a in s and b in s for s in samples), f"{len(samples)} samples")
    res.check("load: the interposer counted launches of both instances",
              (fig["phase_b"][f"median_launches_per_50ms.{a}"] or 0) > 0
              and (fig["phase_b"][f"median_launches_per_50ms.{b}"] or 0) > 0)
    res.check("load: the agent counted both bursts (busy_since_ns)",
              fig["reaction_a"]["agent_busy_since_ms"] is not None
              and fig["reaction_b"]["agent_busy_since_ms"] is not None)


def fmt(x, spec="{:.3f}"):
    return "n/a" if x is None else spec.format(x)


def print_load(res, fig, functions, limit, n_samples, sample_errors):
    a, b = functions
    for label, key in (("A (only rn-a busy)", "phase_a"), ("B (both busy)", "phase_b")):
        p = fig[key]

        def pair(name, spec="{:.0f}"):
            return f"{fmt(p[f'{name}.{a}'], spec)} / {fmt(p[f'{name}.{b}'], spec)}"

        res.say(f"  phase {label}, per 50 ms (median of {p['buckets']} buckets), {a} / {b}: "
                f"cost {pair('median_cost_per_50ms')}, launches {pair('median_launches_per_50ms')}, "
                f"delayed {pair('median_launches_delayed_per_50ms')}")
        res.say(f"    {a}'s part: cost {fmt(p['median_cost_share.a'])}, launches {fmt(p['median_launch_share.a'])}; "
                f"shares {pair('median_share', '{:.3f}')}, budgets {pair('median_budget')} (n/a = unlimited)")
    for fn, key in ((a, "clients_a"), (b, "clients_b")):
        for phase, c in fig[key].items():
            res.say(f"  clients of {fn} in {phase}: {c['ok']}/{c['requests']} ok, "
                    f"{fmt(c['ok_per_s'], '{:.1f}')} req/s, p50 {fmt(c['latency_ms_p50'], '{:.1f}')} ms, "
                    f"p99 {fmt(c['latency_ms_p99'], '{:.1f}')} ms"
                    + (f"; first error {c['first_error']}" if c["first_error"] else ""))

    def shown(div):
        return ", ".join(f"{fn} {'unlimited' if unlimited else share}" for fn, share, unlimited in div or ())

    for key in ("reaction_a", "reaction_b"):
        r = fig[key]
        res.say(f"  reaction to {r['function']}'s burst (from its first request): the agent counted it "
                f"(busy_since_ns) at {fmt(r['agent_busy_since_ms'], '{:.1f}')} ms, first sample showing it busy "
                f"{fmt(r['first_busy_sample_ms'], '{:.1f}')} ms (sampling every {r['sampling_period_ms']:.1f} ms)")
        if r.get("redivided_ms") is not None:
            res.say(f"    device re-divided at {r['redivided_ms']:.1f} ms: {shown(r['division_before'])} -> "
                    f"{shown(r['division_after'])}")
        else:
            why = "; with limits = requests each function is capped at its request" if limit == "request" else ""
            moved = r.get("budgets_changed_ms")
            res.say(f"    device not re-divided during the phase (shares stay {shown(r.get('division_before'))}{why})"
                    + (f"; budgets changed at {moved:.1f} ms (capacity)" if moved is not None else ""))
    res.say(f"  samples: {n_samples} ({sample_errors} failed), median round trip "
            f"{fmt(fig['sample_rtt_us_median'], '{:.0f}')} us")


def memcap_step(args, up, res):
    name = "cap"
    up.deploy(ctypes_spec(args, name, 0.5, 0.5, "1GiB"))
    up.wait_running([name], 60)
    out = {}
    big = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                      "parameters": {"alloc_bytes": 2 * GIB}}).encode()
    small = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                    "data": [1, 2, 3, 4]}]}).encode()
    path = f"/v2/models/{name}/infer"
    out["oom_status"], out["oom_body"] = up.call("POST", path, body=big)
    out["next_status"], out["next_body"] = up.call("POST", path, body=small)
    text = json.dumps(out["oom_body"]).lower()
    res.check("memory cap: the 2 GiB request is answered 500 with CUDA out of memory",
              out["oom_status"] == 500 and ("out_of_memory" in text or "out of memory" in text),
              f"{out['oom_status']} {str(out['oom_body'])[:200]}")
    body = out["next_body"] if isinstance(out["next_body"], dict) else {}
    data = (body.get("outputs") or [{}])[0].get("data")
    res.check("memory cap: the next request is answered 200 (input * 2)",
              out["next_status"] == 200 and data == [2, 4, 6, 8],
              f"{out['next_status']} {str(out['next_body'])[:200]}")
    end = time.monotonic() + up.deadline.cap(20)
    while True:
        inst = up.instances_of(name)
        view = up.get(f"/v1/functions/{name}")
        c = (inst[0].get("counters") or {}) if inst else {}
        out["counters"] = c
        keys = ("id", "status", "restarts", "last_exit", "quota")
        out["instance"] = {k: inst[0].get(k) for k in keys} if inst else None
        out["last_error"] = view.get("last_error")
        if (c.get("alloc_failures") or 0) >= 1 and "device memory" in (out["last_error"] or ""):
            break
        if time.monotonic() > end:
            break
        time.sleep(0.2)
    res.data["memcap"] = out
    c = out["counters"]
    res.check("memory cap: counters.alloc_failures >= 1", (c.get("alloc_failures") or 0) >= 1,
              f"alloc_failures {c.get('alloc_failures')}, memory_bytes {c.get('memory_bytes')}, "
              f"peak {c.get('memory_peak_bytes')}")
    res.check("memory cap: the function's last_error mentions device memory",
              "device memory" in (out["last_error"] or ""), repr(out["last_error"]))
    inst = out["instance"] or {}
    alive = inst.get("status") == "ready" and not inst.get("restarts")
    res.check("memory cap: the process lives (ready, no restart)", alive, json.dumps(out["instance"]))


def capacity(devices):
    return [d.get("capacity_per_window") for d in devices.get("devices", []) if d.get("kind") == "gpu"]


def torch_sees_cuda(args):
    env = dict(os.environ)
    if args.dry:
        env["LD_LIBRARY_PATH"] = args.fake_cuda_dir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    try:
        out = subprocess.run([args.python, "-c", "import torch, torchvision; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return out.stdout.strip().endswith("True"), (out.stdout + out.stderr).strip()[-300:]


def deploy_and_load(args, up, res, workload, functions):
    t = time.monotonic()
    for fn, request in zip(functions, (0.3, 0.7)):
        limit = request if args.limit == "request" else float(args.limit)
        spec = (pytorch_spec(args, fn, request, limit) if workload == "pytorch"
                else ctypes_spec(args, fn, request, limit, "4GiB"))
        res.say(f"  deploy {fn}: {up.deploy(spec)}")
    # PyTorch starts in seconds on a GPU (import, CUDA context, warm-up); 120 s leaves the memory cap its time.
    views = up.wait_running(functions, 120 if workload == "pytorch" else 60)
    res.data["functions_deployed"] = views
    placed = {fn: [(i.get("device"), i.get("id")) for i in up.instances_of(fn)] for fn in functions}
    res.step("deploy", time.monotonic() - t, True, json.dumps(placed))
    res.check("both functions run on the GPU",
              all(p and all(str(d).startswith("GPU-") for d, _ in p) for p in placed.values()),
              f"{placed}, ready in {time.monotonic() - t:.1f}s")

    t = time.monotonic()
    try:
        load_step(args, up, res, workload, functions)
    finally:
        try:
            res.data["instances_after_load"] = up.get("/v1/instances")
            res.data["devices_after_load"] = up.get("/v1/devices")
        except (CheckFailed, OSError, http.client.HTTPException) as e:
            res.data["devices_after_load"] = {"error": str(e)}
        res.say("  GPU capacity per 5 ms window (cost units): "
                f"{capacity(res.data['devices_at_start'])} before the load, "
                f"{capacity(res.data['devices_after_load'])} after "
                f"({'given: ' + args.gpu_capacity if args.gpu_capacity else 'learned by the token manager'})")
        res.step("load", time.monotonic() - t, True)


def run(args, res):
    deadline = Deadline(args.budget_s)
    workload = args.workload
    if workload == "auto":
        cuda, note = torch_sees_cuda(args)
        workload = "pytorch" if cuda else "ctypes"
        res.say(f"  workload: {workload} ({args.python}: torch.cuda.is_available() -> "
                f"{(note.splitlines() or [''])[-1]!r})")
    else:
        res.say(f"  workload: {workload} (DILU_GPU_CHECK_WORKLOAD)")
    res.data["config"].update({"workload": workload, "dry": args.dry, "python": args.python,
                               "gpu_capacity": args.gpu_capacity, "limit": args.limit})
    up = Platform(args, deadline, res)
    ok = True
    try:
        t = time.monotonic()
        up.start()
        devices = up.get("/v1/devices")
        res.data["devices_at_start"] = devices
        nodes = up.get("/v1/nodes")
        gpus = [d for n in nodes.get("nodes", []) for d in n.get("devices", [])
                if (d.get("device") or d).get("kind") == "gpu"]
        res.say(f"  dilu up on {up.url}; GPUs: {json.dumps([(g.get('device') or g) for g in gpus])}; "
                f"notes: {[n.get('notes') for n in nodes.get('nodes', [])]}")
        res.step("up", time.monotonic() - t, True, up.url)
        if not res.check("dilu up offers a GPU", bool(gpus)):
            return False

        functions = ("rn-a", "rn-b")
        try:
            deploy_and_load(args, up, res, workload, functions)
        except CheckFailed as e:
            ok = res.check("deploy and load", False, str(e))
        collect_instance_logs(res, up)

        # The memory cap runs whatever became of the load: the two functions go first (their requests fill the
        # GPU), then `cap` is deployed alone.
        t = time.monotonic()
        try:
            for fn in functions:
                up.delete(fn)
            up.wait_gone(functions, 30)
            memcap_step(args, up, res)
        except CheckFailed as e:
            ok = res.check("memory cap step", False, str(e))
        res.step("memcap", time.monotonic() - t, ok)
    except CheckFailed as e:
        res.check("platform section", False, str(e))
        ok = False
    except SystemExit:
        res.check("platform section", False, "interrupted by SIGTERM (the caller's timeout)")
        raise
    except Exception as e:  # noqa: BLE001 - recorded, then the section fails
        res.check("platform section", False, f"{type(e).__name__}: {e}")
        res.data["traceback"] = traceback.format_exc()
        ok = False
    finally:
        try:
            res.data["final_instances"] = up.get("/v1/instances") if up.url and up.proc.poll() is None else None
        except Exception:  # noqa: BLE001
            pass
        collect_instance_logs(res, up)
        up.stop()
        res.data.setdefault("logs", {})["dilu-up.stderr"] = tail(up.err_path, 64_000)
    return ok and all(c["ok"] for c in res.data["checks"])


def collect_instance_logs(res, up):
    """The tail of every instance log (the agent removes a log with its instance) into the results."""
    src_dir = os.path.join(up.data_dir, "agent", "logs")
    try:
        names = sorted(os.listdir(src_dir))
    except OSError:
        return
    logs = res.data.setdefault("logs", {})
    for name in names:
        logs[name] = tail(os.path.join(src_dir, name), 32_000)


def main():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dilu", required=True)
    p.add_argument("--interposer", required=True)
    p.add_argument("--out", required=True, help="where the figures go")
    p.add_argument("--work", required=True, help="a scratch folder (the data dir goes under it)")
    p.add_argument("--gpu-capacity", default=env("DILU_GPU_CHECK_CAPACITY") or "",
                   help="the GPU's cost units per 5 ms window given to dilu up, or 'learned' (default: learned; "
                        "dry run: what the simulated device does)")
    p.add_argument("--dry", action="store_true", default=env("DILU_GPU_CHECK_DRY", "") not in ("", "0"))
    p.add_argument("--fake-cuda-dir", default=env("DILU_FAKE_CUDA_DIR"))
    p.add_argument("--fake-ns-per-wave", type=int, default=500_000, help="dry run: simulated ns per full wave")
    p.add_argument("--python", default=env("DILU_PYTHON") or "python3")
    p.add_argument("--workload", default=env("DILU_GPU_CHECK_WORKLOAD") or "auto",
                   choices=["auto", "pytorch", "ctypes"])
    p.add_argument("--limit", default=env("DILU_GPU_CHECK_LIMIT") or "request",
                   help="the functions' limit: 'request' (default) or a share, e.g. 1.0")
    p.add_argument("--kernels", type=int, default=16,
                   help="ctypes server: kernels per request (16 full waves: 8 ms of simulated GPU time per request)")
    p.add_argument("--json", action="store_true", default=env("DILU_GPU_CHECK_JSON", "") not in ("", "0"),
                   help="PyTorch requests as JSON tensors (default: binary tensor data)")
    p.add_argument("--batch", type=int, default=1, help="items per request")
    p.add_argument("--clients", type=int, default=int(env("DILU_GPU_CHECK_CLIENTS") or 8),
                   help="closed-loop clients per function")
    p.add_argument("--phase-s", type=float, default=float(env("DILU_GPU_CHECK_PHASE_S") or 5.0))
    p.add_argument("--budget-s", type=float, default=float(env("DILU_GPU_CHECK_BUDGET_S") or 170.0))
    args = p.parse_args()
    args.python = shutil.which(args.python) or args.python
    args.dilu = (shutil.which(args.dilu) or args.dilu) if os.sep not in args.dilu else os.path.abspath(args.dilu)
    args.interposer = os.path.abspath(args.interposer)
    args.work = os.path.abspath(args.work)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    if args.dry:
        if not args.fake_cuda_dir or not os.path.isfile(os.path.join(args.fake_cuda_dir, "libcuda.so.1")):
            sys.exit(f"platform.py: dry run needs the software driver: --fake-cuda-dir or DILU_FAKE_CUDA_DIR "
                     f"(a folder with libcuda.so.1; cargo build -p dilu-cuda-testkit), got {args.fake_cuda_dir!r}")
        args.fake_cuda_dir = os.path.abspath(args.fake_cuda_dir)
        if not args.gpu_capacity:
            args.gpu_capacity = str(WINDOW_NS * COST_UNITS_PER_WAVE // args.fake_ns_per_wave)
    if args.gpu_capacity in ("", "learned"):
        args.gpu_capacity = None
    elif not args.gpu_capacity.isdigit():
        sys.exit(f"platform.py: --gpu-capacity {args.gpu_capacity!r} is neither a number nor 'learned'")
    # A SIGTERM (the caller's timeout) unwinds through the finally blocks: dilu up is stopped, figures written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = Results(args.out)
    res.say(f"platform section: {'DRY RUN (software CUDA driver, declared GPU)' if args.dry else 'NVML discovery'}")
    ok = False
    try:
        ok = run(args, res)
    finally:
        res.data["ok"] = ok
        failed = [c["check"] for c in res.data["checks"] if not c["ok"]]
        res.say(f"platform section: {'PASSED' if ok else 'FAILED: ' + '; '.join(failed)}; figures in {args.out}")
        res.save()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
