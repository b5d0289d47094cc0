#!/usr/bin/env python3
"""A v2 inference server (or a training loop) that drives the GPU through the CUDA driver API, in pure Python.

It uses only the standard library: `ctypes` calls `libcuda.so.1` directly (cuInit, cuDeviceGet,
cuDevicePrimaryCtxRetain, cuCtxSetCurrent, cuModuleLoadData, cuModuleGetFunction, cuStreamCreate,
cuLaunchKernel, cuStreamSynchronize, cuMemAlloc_v2, cuMemFree_v2). That makes it a small, dependency-free
`runtime: process` function whose GPU use is fully visible: every request launches a known number of kernels
of a known shape, and every allocation is explicit. It runs the same on a real GPU and over the software
driver of `crates/dilu-cuda-testkit` (which accepts any module image and simulates kernel durations from the
launch shape).

The model (inference mode): input `input` FP32 `[-1, 4]`, output `output` FP32 `[-1, 4]` = input * 2,
computed on the CPU so the answer is checkable. Per request the server also launches `KERNELS_PER_REQUEST`
kernels of `KERNEL_BLOCKS` x `KERNEL_THREADS` and waits for them, and, when the request carries the v2 request
parameter `{"alloc_bytes": N}`, allocates N bytes of device memory for the request (its "activations") and
frees them afterwards.

Training mode (`--train`): launches `KERNELS_PER_REQUEST` kernels per step in a loop until SIGTERM and serves
`GET /health` and `GET /status` (`{"iterations": N, ...}`).

Environment:
    PORT                 TCP port to listen on (required), on $HOST (default 127.0.0.1)
    DILU_FUNCTION        model name served under /v2/models/NAME (default: cuda-ctypes)
    DILU_MAX_BATCH       largest batch one request may carry (default: 8)
    WEIGHTS_BYTES        device memory allocated at start and held (default: 64MiB; suffixes KiB, MiB, GiB)
    KERNEL_BLOCKS        blocks per kernel (default: 264)
    KERNEL_THREADS       threads per block (default: 1024)
    KERNELS_PER_REQUEST  kernels per request, or per training step (default: 4)
    KERNEL_ITERS         loop iterations each thread runs (real GPUs only; default: 2048)

Exit status: 0 after SIGTERM or SIGINT; 2 for a bad configuration (PORT missing or invalid, a bad variable);
3 when the CUDA driver cannot be loaded or initialised; 4 when the weights allocation fails with
CUDA_ERROR_OUT_OF_MEMORY; 1 for any other fatal error (the port already in use, say).

Usage:
    PORT=8000 DILU_FUNCTION=ctypes python3 serve.py            # inference
    PORT=8001 python3 serve.py --train                         # training
"""

import argparse
import array
import ctypes
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROG = "cuda-ctypes"

EXIT_CONFIG = 2
EXIT_CUDA = 3
EXIT_OOM = 4

MAX_BODY_BYTES = 64 << 20
BINARY_HEADER = "Inference-Header-Content-Length"

CUDA_ERROR_OUT_OF_MEMORY = 2

KERNEL_NAME = b"dilu_test_kernel"

# The kernel, as PTX text (the real driver compiles it for the device on cuModuleLoadData; the software driver
# accepts any image). Each thread runs `iters` dependent multiply-adds and stores the result into `buf`
# (`len` floats; nothing is stored when `len` is 0), so the work cannot be optimised away.
KERNEL_PTX = b"""
.version 7.0
.target sm_52
.address_size 64

.visible .entry dilu_test_kernel(
    .param .u64 buf,
    .param .u32 len,
    .param .u32 iters
)
{
    .reg .pred %p<3>;
    .reg .b32 %r<8>;
    .reg .f32 %f<2>;
    .reg .b64 %rd<4>;

    ld.param.u64 %rd1, [buf];
    ld.param.u32 %r1, [len];
    ld.param.u32 %r2, [iters];
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.u32 %r6, %r3, %r4, %r5;
    cvt.rn.f32.u32 %f1, %r6;
    mov.u32 %r7, 0;
LOOP:
    setp.ge.u32 %p1, %r7, %r2;
    @%p1 bra STORE;
    fma.rn.f32 %f1, %f1, 0f3F7FFFEF, 0f3A83126F;
    add.u32 %r7, %r7, 1;
    bra LOOP;
STORE:
    setp.eq.u32 %p2, %r1, 0;
    @%p2 bra DONE;
    rem.u32 %r6, %r6, %r1;
    cvta.to.global.u64 %rd1, %rd1;
    mul.wide.u32 %rd2, %r6, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3], %f1;
DONE:
    ret;
}
"""


def log(message):
    """One line on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def fail(status, message):
    """Prints `message` on stderr and exits with `status`."""
    log(message)
    sys.exit(status)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A missing or invalid setting."""


def env_int(name, default, minimum, maximum):
    """The integer in environment variable `name` (`default` when unset), within [minimum, maximum]."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def env_bytes(name, default):
    """A byte count in `name`: a plain integer or one with a KiB, MiB or GiB suffix."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    digits = text.rstrip("BbIiKkMmGg ")
    unit = text[len(digits):].strip().upper()
    if not digits.isdigit() or unit not in UNITS:
        raise ConfigError(f"{name}={text!r} is not a byte count (e.g. 67108864 or 64MiB)")
    return int(digits) * UNITS[unit]


def port_from_env():
    """The port the platform gave in PORT."""
    text = os.environ.get("PORT", "").strip()
    if not text:
        raise ConfigError("PORT is not set: the platform sets it to the TCP port to listen on (e.g. PORT=8000)")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"PORT={text!r} is not a TCP port (1..65535)")
    return int(text)


class Config:
    """Every setting, read once at start."""

    def __init__(self, args):
        self.port = port_from_env()
        self.host = args.host
        self.train = args.train
        self.function = os.environ.get("DILU_FUNCTION", "").strip() or "cuda-ctypes"
        self.max_batch = env_int("DILU_MAX_BATCH", 8, 1, 1 << 20)
        self.weights_bytes = env_bytes("WEIGHTS_BYTES", 64 << 20)
        self.blocks = env_int("KERNEL_BLOCKS", 264, 1, (1 << 31) - 1)
        self.threads = env_int("KERNEL_THREADS", 1024, 1, 1024)
        self.kernels = env_int("KERNELS_PER_REQUEST", 4, 0, 1 << 20)
        self.iters = env_int("KERNEL_ITERS", 2048, 0, (1 << 32) - 1)


# ---------------------------------------------------------------------------------------------------------
# The CUDA driver, through ctypes
# ---------------------------------------------------------------------------------------------------------


class CudaError(Exception):
    """A driver call that returned something other than CUDA_SUCCESS."""

    def __init__(self, call, code, name):
        super().__init__(f"{call} failed: {name} ({code})")
        self.call = call
        self.code = code
        self.name = name


P = ctypes.c_void_p
U32 = ctypes.c_uint
U64 = ctypes.c_uint64

# Each entry point's argument types (every one returns a CUresult, an int).
SIGNATURES = {
    "cuInit": [U32],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
    "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
    "cuDevicePrimaryCtxRetain": [ctypes.POINTER(P), ctypes.c_int],
    "cuCtxSetCurrent": [P],
    "cuModuleLoadData": [ctypes.POINTER(P), ctypes.c_char_p],
    "cuModuleGetFunction": [ctypes.POINTER(P), P, ctypes.c_char_p],
    "cuStreamCreate": [ctypes.POINTER(P), U32],
    "cuStreamSynchronize": [P],
    "cuMemAlloc_v2": [ctypes.POINTER(U64), ctypes.c_size_t],
    "cuMemFree_v2": [U64],
    "cuLaunchKernel": [P, U32, U32, U32, U32, U32, U32, U32, P, ctypes.POINTER(P), ctypes.POINTER(P)],
}


class Driver:
    """The driver entry points this server uses; `call` raises CudaError on failure."""

    def __init__(self, library="libcuda.so.1"):
        # RTLD_GLOBAL and dlsym: a preloaded interposer (the platform's) sees every call.
        lib = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
        self.functions = {}
        for name, argtypes in SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
            self.functions[name] = function

    def error_name(self, code):
        """The driver's name for a CUresult (e.g. CUDA_ERROR_OUT_OF_MEMORY)."""
        text = ctypes.c_char_p()
        if self.functions["cuGetErrorName"](code, ctypes.byref(text)) == 0 and text.value:
            return text.value.decode()
        return "CUDA_ERROR_UNKNOWN"

    def call(self, name, *args):
        code = self.functions[name](*args)
        if code != 0:
            raise CudaError(name, code, self.error_name(code))


class Gpu:
    """Device 0's primary context, the kernel, one stream and the weights."""

    def __init__(self, driver, config):
        self.driver = driver
        self.config = config
        self.local = threading.local()
        # One request's launches and synchronize at a time: the stream is shared.
        self.lock = threading.Lock()
        driver.call("cuInit", 0)
        device = ctypes.c_int()
        driver.call("cuDeviceGet", ctypes.byref(device), 0)
        name = ctypes.create_string_buffer(256)
        driver.call("cuDeviceGetName", name, len(name), device)
        self.name = name.value.decode(errors="replace")
        self.context = P()
        driver.call("cuDevicePrimaryCtxRetain", ctypes.byref(self.context), device)
        self.make_current()
        self.module = P()
        driver.call("cuModuleLoadData", ctypes.byref(self.module), KERNEL_PTX)
        self.function = P()
        driver.call("cuModuleGetFunction", ctypes.byref(self.function), self.module, KERNEL_NAME)
        self.stream = P()
        driver.call("cuStreamCreate", ctypes.byref(self.stream), 0)
        self.weights = 0
        self.weights_len = 0
        if config.weights_bytes > 0:
            self.weights = self.alloc(config.weights_bytes)
            self.weights_len = min(config.weights_bytes // 4, (1 << 32) - 1)

    def make_current(self):
        """Makes the context current on the calling thread (once per thread: the current context is per thread)."""
        if not getattr(self.local, "current", False):
            self.driver.call("cuCtxSetCurrent", self.context)
            self.local.current = True

    def alloc(self, nbytes):
        """A device allocation of `nbytes`; its address."""
        self.make_current()
        pointer = U64()
        self.driver.call("cuMemAlloc_v2", ctypes.byref(pointer), nbytes)
        return pointer.value

    def free(self, pointer):
        self.make_current()
        self.driver.call("cuMemFree_v2", pointer)

    def run_kernels(self, count):
        """Launches `count` kernels on the stream and waits for them."""
        self.make_current()
        buf = U64(self.weights)
        length = U32(self.weights_len)
        iters = U32(self.config.iters)
        params = (P * 3)(ctypes.addressof(buf), ctypes.addressof(length), ctypes.addressof(iters))
        with self.lock:
            for _ in range(count):
                self.driver.call("cuLaunchKernel", self.function, self.config.blocks, 1, 1,
                                 self.config.threads, 1, 1, 0, self.stream, params, None)
            self.driver.call("cuStreamSynchronize", self.stream)


def start_gpu(config):
    """Loads the driver, sets up the device and allocates the weights; exits with a clear message on failure."""
    try:
        driver = Driver()
    except OSError as e:
        fail(EXIT_CUDA, f"cannot load the CUDA driver libcuda.so.1: {e} (no NVIDIA driver here? for tests, put the "
                        "software driver's directory on LD_LIBRARY_PATH)")
    except AttributeError as e:
        fail(EXIT_CUDA, f"the CUDA driver lacks an entry point this server needs: {e}")
    try:
        return Gpu(driver, config)
    except CudaError as e:
        if e.code == CUDA_ERROR_OUT_OF_MEMORY:
            fail(EXIT_OOM, f"CUDA_ERROR_OUT_OF_MEMORY: cannot allocate the weights ({config.weights_bytes} bytes, "
                           f"WEIGHTS_BYTES): {e}")
        if e.call == "cuModuleLoadData":
            fail(EXIT_CUDA, f"{e}: the driver refused the embedded PTX module (kernel {KERNEL_NAME.decode()}); "
                            "a real driver needs PTX ISA 7.0 support (CUDA 11.0 or later)")
        fail(EXIT_CUDA, f"CUDA setup failed: {e}")


# ---------------------------------------------------------------------------------------------------------
# The model and the v2 protocol
# ---------------------------------------------------------------------------------------------------------

INPUT = {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
OUTPUT = {"name": "output", "datatype": "FP32", "shape": [-1, 4]}


class HttpError(Exception):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def flatten(data):
    """The leaves of a number or (nested) list, in row-major order."""
    if not isinstance(data, list):
        return [data]
    out = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def fp32_from_bytes(raw):
    """Little-endian FP32 bytes as an array('f')."""
    if len(raw) % 4:
        raise HttpError(400, f"binary data of {len(raw)} bytes is not a whole number of 4-byte FP32 elements")
    values = array.array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def fp32_to_bytes(values):
    out = array.array("f", values)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def split_body(headers, body):
    """The JSON part and the binary part of a request body (binary tensor data extension)."""
    length = headers.get(BINARY_HEADER)
    if length is None:
        return body, b""
    if not length.strip().isdigit() or int(length) > len(body):
        raise HttpError(400, f"header {BINARY_HEADER} is {length!r}: it must be an integer at most the body's "
                             f"{len(body)} bytes")
    return body[:int(length)], body[int(length):]


def parse_json(raw):
    try:
        request = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise HttpError(400, f"malformed inference request: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise HttpError(400, "malformed inference request: it must be an object with an \"inputs\" list")
    return request


def read_input(request, binary, max_batch):
    """The request's one input, checked against INPUT: (batch size, array('f') of its elements)."""
    inputs = request["inputs"]
    names = [t.get("name") if isinstance(t, dict) else None for t in inputs]
    if names != [INPUT["name"]]:
        raise HttpError(400, f"the request's inputs are {names}: the model takes exactly one, '{INPUT['name']}'")
    tensor = inputs[0]
    name = INPUT["name"]
    if tensor.get("datatype") != INPUT["datatype"]:
        raise HttpError(400, f"input '{name}' has datatype {tensor.get('datatype')!r}: the model expects FP32")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(d) is int for d in shape)
            or shape[1] != INPUT["shape"][1]):
        raise HttpError(400, f"input '{name}' has shape {shape} but the model expects {INPUT['shape']} "
                             "(-1: any batch size)")
    batch = shape[0]
    if not 1 <= batch <= max_batch:
        raise HttpError(400, f"input '{name}' has batch size {batch} (shape[0]): it must be in 1..={max_batch}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise HttpError(400, f"input '{name}' gives both data and binary_data_size: it must give one")
        if type(size) is not int or size != len(binary):
            raise HttpError(400, f"input '{name}' has binary_data_size {size} but the body has {len(binary)} "
                                 "bytes of binary data")
        values = fp32_from_bytes(binary)
    else:
        if "data" not in tensor:
            raise HttpError(400, f"input '{name}' has no data")
        leaves = flatten(tensor["data"])
        if not all(type(x) in (int, float) for x in leaves):
            raise HttpError(400, f"input '{name}': every element must be a number")
        values = array.array("f", leaves)
    if len(values) != batch * 4:
        raise HttpError(400, f"input '{name}' has {len(values)} elements but its shape {shape} holds {batch * 4}")
    return batch, values


def wanted_output(request):
    """Whether the output is to be returned as binary data (and that only known outputs are asked for)."""
    binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise HttpError(400, "\"outputs\" must be a list")
    for o in outputs:
        name = o.get("name") if isinstance(o, dict) else None
        if name != OUTPUT["name"]:
            raise HttpError(400, f"unknown output {name!r}: the model's output is '{OUTPUT['name']}'")
        binary = bool((o.get("parameters") or {}).get("binary_data", binary))
    return binary


def alloc_bytes_of(request):
    """The request parameter alloc_bytes (0 when absent)."""
    value = (request.get("parameters") or {}).get("alloc_bytes", 0)
    if type(value) is not int or value < 0:
        raise HttpError(400, f"parameter alloc_bytes is {value!r}: it must be a non-negative integer")
    return value


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's `app` (an InferenceApp or a TrainingApp)."""

    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection is kept

    def log_message(self, format, *args):  # no access log: a busy server would flood stderr
        pass

    def send(self, status, body, content_type="application/json", extra_headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj).encode())

    def read_body(self):
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            raise HttpError(400, f"Content-Length {length!r} is not an integer")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(413, f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
        return self.rfile.read(int(length))

    def dispatch(self, method):
        try:
            body = self.read_body() if method == "POST" else b""
            self.server.app.handle(self, method, self.path.split("?", 1)[0], body)
        except HttpError as e:
            self.send_json(e.status, {"error": e.message})

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")


class InferenceApp:
    """The v2 routes of the inference server."""

    def __init__(self, config):
        self.config = config
        self.gpu = None  # set once the device is set up: until then the server is live but not ready

    def model_path(self, path):
        """(model name, rest) for /v2/models/NAME[/versions/V][/rest], else None."""
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            return None
        name, rest = parts[2], parts[3:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            if rest[1] != "1":
                raise HttpError(404, f"model '{name}' has no version '{rest[1]}'")
            rest = rest[2:]
        return name, "/".join(rest)

    def check_model(self, name):
        if name != self.config.function:
            raise HttpError(404, f"model '{name}' is not found")
        if self.gpu is None:
            raise HttpError(503, f"model '{name}' is not ready")

    def handle(self, http, method, path, body):
        if method == "GET" and path == "/v2/health/live":
            return http.send_json(200, {"live": True})
        if method == "GET" and path == "/v2/health/ready":
            if self.gpu is None:
                return http.send_json(503, {"ready": False, "error": "the device is being set up"})
            return http.send_json(200, {"ready": True})
        if method == "GET" and path == "/v2":
            return http.send_json(200, {"name": "dilu-cuda-ctypes", "version": "1",
                                        "extensions": ["binary_tensor_data"]})
        route = self.model_path(path)
        if route is None:
            raise HttpError(404, "no such endpoint")
        name, rest = route
        if method == "GET" and rest == "":
            self.check_model(name)
            return http.send_json(200, {"name": name, "versions": ["1"], "platform": "cuda_ctypes",
                                        "inputs": [INPUT], "outputs": [OUTPUT]})
        if method == "GET" and rest == "ready":
            self.check_model(name)
            return http.send_json(200, {"name": name, "ready": True})
        if method == "POST" and rest == "infer":
            self.check_model(name)
            return self.infer(http, name, body)
        raise HttpError(404, "no such endpoint")

    def infer(self, http, name, body):
        raw, binary = split_body(http.headers, body)
        request = parse_json(raw)
        batch, values = read_input(request, binary, self.config.max_batch)
        binary_out = wanted_output(request)
        activations = self.reserve(alloc_bytes_of(request))
        try:
            self.gpu.run_kernels(self.config.kernels)
        except CudaError as e:
            log(f"request failed: {e}")
            raise HttpError(500, str(e)) from None
        finally:
            if activations:
                self.gpu.free(activations)
        result = array.array("f", (2.0 * x for x in values))
        output = {"name": OUTPUT["name"], "datatype": "FP32", "shape": [batch, 4]}
        response = {"model_name": name, "model_version": "1", "outputs": [output]}
        if "id" in request:
            response["id"] = request["id"]
        if not binary_out:
            output["data"] = result.tolist()
            return http.send_json(200, response)
        data = fp32_to_bytes(result)
        output["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps(response).encode()
        http.send(200, header + data, "application/octet-stream", {BINARY_HEADER: str(len(header))})

    def reserve(self, nbytes):
        """Allocates a request's activations (0: none); a failure is a 500 and the server goes on."""
        if nbytes == 0:
            return 0
        try:
            return self.gpu.alloc(nbytes)
        except CudaError as e:
            message = f"{e.name} ({e.code}): allocation of {nbytes} bytes failed"
            log(f"request failed: {message}")
            raise HttpError(500, message) from None


class TrainingApp:
    """`--train`: a loop of kernel launches in a thread, and the routes /health and /status."""

    def __init__(self, config, gpu):
        self.config = config
        self.gpu = gpu
        self.iterations = 0
        self.started = time.monotonic()
        self.error = None
        threading.Thread(target=self.loop, name="train", daemon=True).start()

    def loop(self):
        try:
            while True:
                self.gpu.run_kernels(self.config.kernels)
                self.iterations += 1
        except CudaError as e:
            self.error = str(e)
            log(f"training stopped: {e}")

    def handle(self, http, method, path, body):
        if method == "GET" and path == "/health":
            if self.error is not None:
                return http.send_json(500, {"error": self.error})
            return http.send_json(200, {"status": "running"})
        if method == "GET" and path == "/status":
            return http.send_json(200, {
                "iterations": self.iterations,
                "kernels": self.iterations * self.config.kernels,
                "device": self.gpu.name,
                "elapsed_s": round(time.monotonic() - self.started, 3),
            })
        raise HttpError(404, "no such endpoint")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app):
        super().__init__(address, Handler)
        self.app = app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="run the training loop instead of serving v2")
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST") or "127.0.0.1",
        help="address to listen on (default: $HOST, which the platform sets, else 127.0.0.1)",
    )
    args = parser.parse_args()
    try:
        config = Config(args)
    except ConfigError as e:
        fail(EXIT_CONFIG, str(e))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    if config.train:
        # Training reports nothing useful before the device is set up, so it listens afterwards.
        gpu = start_gpu(config)
        app = TrainingApp(config, gpu)
    else:
        # Inference listens first: live at once, ready (200) once the device and weights are set up.
        app = InferenceApp(config)
    try:
        server = Server((config.host, config.port), app)
    except OSError as e:
        fail(1, f"cannot listen on {config.host}:{config.port}: {e}")
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    if not config.train:
        gpu = start_gpu(config)
        app.gpu = gpu
    if config.train:
        mode = "training"
    else:
        mode = f"model '{config.function}' (output = input * 2), max_batch {config.max_batch}"
    print(f"{PROG}: serving {mode} on http://{config.host}:{config.port}, device 0 '{gpu.name}', "
          f"weights {config.weights_bytes} bytes, {config.kernels} kernel(s) of {config.blocks}x{config.threads} "
          f"per {'step' if config.train else 'request'}", flush=True)
    stop.wait()
    server.shutdown()
    log("stopping (signal)")
    sys.exit(0)


if __name__ == "__main__":
    main()
