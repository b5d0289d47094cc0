#!/usr/bin/env python3
"""A KServe v2 (Open Inference Protocol) REST server for a PyTorch model, for Dilu's `runtime: process`.

It serves a torchvision classification network (default `resnet18`; `--model` or env `MODEL`), built with
`weights=None` and a fixed seed (nothing is downloaded), on `cuda` when PyTorch sees a GPU, else on the CPU.
Input `input` FP32 `[-1, 3, 224, 224]` (RGB in [0, 1]; the server normalises it), output `output` FP32
`[-1, 1000]` (logits). Concurrent requests are batched dynamically: the first request waits up to
`--max-wait-ms` (default 2 ms) for others, up to `DILU_MAX_BATCH` items in all, and the batch runs once under
`torch.inference_mode()`.

Only the standard library's `http.server` plus `torch` and `torchvision` are needed. Routes: `GET /v2`,
`GET /v2/health/live`, `GET /v2/health/ready` (503 until the model is loaded), `GET /v2/models/NAME`,
`GET /v2/models/NAME/ready`, `POST /v2/models/NAME/infer` (also under `/versions/1`); tensors as JSON (flat or
nested lists) or with the binary tensor data extension, which `tritonclient` uses by default. Errors are
`{"error": "..."}`: 400 bad request, 404 unknown model or route, 413 body too large, 500 inference failed (a CUDA
out-of-memory included: the server frees its cache and goes on), 503 not ready.

To serve your own model, change the section "The model" below (see README.md, "Serving your own model").

Environment (set by the platform): PORT (required), HOST (the address to listen on; default 127.0.0.1),
DILU_FUNCTION (the model name; default: the network's name), DILU_MAX_BATCH (default 8); CUDA_VISIBLE_DEVICES
and the CUDA interposer on a GPU node. Optional:
MODEL (the network, as --model), LOG_BATCHES=1 (one stderr line per batch run: items and requests).

Exit status: 0 after SIGTERM or SIGINT; 2 bad configuration (PORT missing or invalid, unknown model name);
3 the model failed to load; 4 CUDA out of memory while loading or warming up; 1 any other fatal error (the port
in use, a CUDA error that leaves the device unusable).
"""

import argparse
import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torchvision

PROG = "serve.py"

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_LOAD = 3
EXIT_OOM = 4

MAX_BODY_BYTES = 256 << 20
BINARY_HEADER = "Inference-Header-Content-Length"

# =========================================================================================================
# The model: what to change to serve your own (the rest of the file is the protocol and the batching).
# =========================================================================================================

# The tensors of one request, batch dimension first (-1: any batch size, up to DILU_MAX_BATCH).
INPUTS = [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
OUTPUTS = [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}]
PLATFORM = "pytorch_torchvision"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(name):
    """The network, on the CPU. Random weights from a fixed seed; load real ones with `load_state_dict`."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None)


def preprocess(image):
    """The request tensors (in INPUTS order, on the device, a whole batch) -> the model's arguments."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return ((image - mean) / std,)


def postprocess(logits):
    """The model's result -> the output tensors, in OUTPUTS order, batch dimension first."""
    return [logits.float()]


# =========================================================================================================
# Configuration
# =========================================================================================================


def log(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def fail(status, message):
    log(message)
    sys.exit(status)


def read_config(args):
    """(port, function name, max batch) from the environment; exits with EXIT_CONFIG when one is invalid."""
    text = os.environ.get("PORT", "").strip()
    if not text:
        fail(EXIT_CONFIG, "PORT is not set: the platform sets it to the TCP port to listen on (e.g. PORT=8000)")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        fail(EXIT_CONFIG, f"PORT={text!r} is not a TCP port (1..65535)")
    port = int(text)
    batch = os.environ.get("DILU_MAX_BATCH", "").strip() or "8"
    if not batch.isdigit() or int(batch) < 1:
        fail(EXIT_CONFIG, f"DILU_MAX_BATCH={batch!r} is not a positive integer")
    function = os.environ.get("DILU_FUNCTION", "").strip() or args.model
    if args.model not in torchvision.models.list_models():
        fail(EXIT_CONFIG, f"unknown torchvision model {args.model!r} (see torchvision.models.list_models())")
    return port, function, int(batch)


# =========================================================================================================
# Tensors and the v2 protocol
# =========================================================================================================

DTYPES = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
    "INT64": torch.int64, "FP16": torch.float16, "BF16": torch.bfloat16, "FP32": torch.float32,
    "FP64": torch.float64,
}


class HttpError(Exception):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def split_body(headers, body):
    """The JSON part and the binary part of a body (binary tensor data extension)."""
    length = headers.get(BINARY_HEADER)
    if length is None:
        return body, b""
    if not length.strip().isdigit() or int(length) > len(body):
        raise HttpError(400, f"header {BINARY_HEADER} is {length!r}: it must be an integer at most the body's "
                             f"{len(body)} bytes")
    return body[:int(length)], body[int(length):]


def parse_request(headers, body):
    """The request's JSON and its binary part."""
    raw, binary = split_body(headers, body)
    try:
        request = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise HttpError(400, f"malformed inference request: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise HttpError(400, "malformed inference request: it must be an object with an \"inputs\" list")
    return request, binary


def decode_inputs(request, binary, max_batch):
    """The request's tensors, checked against INPUTS and in that order (CPU tensors), and the batch size."""
    given = {}
    for tensor in request["inputs"]:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if name in given:
            raise HttpError(400, f"input {name!r} is given more than once")
        given[name] = tensor
    expected = [spec["name"] for spec in INPUTS]
    if sorted(given, key=str) != sorted(expected):
        raise HttpError(400, f"the request's inputs are {list(given)}: the model's are {expected}")
    offset = 0
    blobs = {}
    for tensor in request["inputs"]:  # binary parts follow the JSON in request order
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise HttpError(400, f"input {tensor['name']!r} has binary_data_size {size!r} but "
                                     f"{len(binary) - offset} bytes of binary data remain")
            blobs[tensor["name"]] = binary[offset:offset + size]
            offset += size
    if offset != len(binary):
        raise HttpError(400, f"the body has {len(binary)} bytes of binary data but the inputs claim {offset}")

    batch = None
    tensors = []
    for spec in INPUTS:
        name, tensor = spec["name"], given[spec["name"]]
        if tensor.get("datatype") != spec["datatype"]:
            raise HttpError(400, f"input '{name}' has datatype {tensor.get('datatype')!r} but the model expects "
                                 f"{spec['datatype']}")
        shape = tensor.get("shape")
        fits = (isinstance(shape, list) and len(shape) == len(spec["shape"])
                and all(type(d) is int and d >= 0 for d in shape)
                and all(m < 0 or d == m for d, m in zip(shape, spec["shape"])))
        if not fits:
            raise HttpError(400, f"input '{name}' has shape {shape} but the model expects {spec['shape']} "
                                 "(-1: any batch size)")
        if not 1 <= shape[0] <= max_batch:
            raise HttpError(400, f"input '{name}' has batch size {shape[0]} (shape[0]): it must be in "
                                 f"1..={max_batch}")
        if batch is not None and shape[0] != batch:
            raise HttpError(400, f"input '{name}' has batch size {shape[0]} but another input has {batch}")
        batch = shape[0]
        dtype = DTYPES[spec["datatype"]]
        count = 1
        for d in shape:
            count *= d
        try:
            if name in blobs:
                if "data" in tensor:
                    raise HttpError(400, f"input '{name}' gives both data and binary_data_size: it must give one")
                blob = blobs[name]
                itemsize = torch.empty((), dtype=dtype).element_size()
                if len(blob) != count * itemsize:
                    raise HttpError(400, f"input '{name}' has {len(blob)} bytes of binary data but its shape "
                                         f"{shape} holds {count * itemsize}")
                values = torch.frombuffer(bytearray(blob), dtype=dtype)
            elif "data" in tensor:
                values = torch.tensor(tensor["data"], dtype=dtype).reshape(-1)
            else:
                raise HttpError(400, f"input '{name}' has no data")
        except (TypeError, ValueError, RuntimeError) as e:
            raise HttpError(400, f"input '{name}': its data is not a {spec['datatype']} tensor: {e}") from None
        if values.numel() != count:
            raise HttpError(400, f"input '{name}' has {values.numel()} elements but its shape {shape} holds {count}")
        tensors.append(values.reshape(shape))
    return tensors, batch


def wanted_outputs(request):
    """[(index in OUTPUTS, binary?)] for the outputs the request asks for (all when it names none)."""
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(i, binary_all) for i in range(len(OUTPUTS))]
    if not isinstance(asked, list):
        raise HttpError(400, "\"outputs\" must be a list")
    names = [spec["name"] for spec in OUTPUTS]
    wanted = []
    for o in asked:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in names:
            raise HttpError(400, f"unknown output {name!r}: the model's outputs are {names}")
        wanted.append((names.index(name), bool((o.get("parameters") or {}).get("binary_data", binary_all))))
    return wanted


def tensor_bytes(tensor):
    """A CPU tensor's elements as little-endian bytes."""
    tensor = tensor.contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def encode_response(name, request, outputs, wanted):
    """(body, content type, extra headers) for the outputs (CPU tensors in OUTPUTS order)."""
    tensors = []
    binary = []
    for index, as_binary in wanted:
        spec, tensor = OUTPUTS[index], outputs[index]
        entry = {"name": spec["name"], "datatype": spec["datatype"], "shape": list(tensor.shape)}
        if as_binary:
            data = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            entry["data"] = tensor.reshape(-1).tolist()
        tensors.append(entry)
    response = {"model_name": name, "model_version": "1", "outputs": tensors}
    if "id" in request:
        response["id"] = request["id"]
    header = json.dumps(response).encode()
    if not binary:
        return header, "application/json", {}
    return header + b"".join(binary), "application/octet-stream", {BINARY_HEADER: str(len(header))}


# =========================================================================================================
# Dynamic batching
# =========================================================================================================


def is_out_of_memory(error):
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Job:
    """One request's tensors, waiting for its outputs or an error."""

    def __init__(self, inputs, batch):
        self.inputs = inputs
        self.batch = batch
        self.outputs = None
        self.error = None  # (status, message)
        self.done = threading.Event()


class Batcher:
    """Gathers concurrent requests into batches of at most `max_batch` items and runs them on one thread."""

    def __init__(self, model, device, max_batch, max_wait_s, on_fatal):
        self.log_batches = os.environ.get("LOG_BATCHES", "") not in ("", "0")
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_fatal = on_fatal
        self.jobs = queue.Queue()
        threading.Thread(target=self.loop, name="batcher", daemon=True).start()

    def submit(self, inputs, batch):
        """Runs one request (blocking); its output tensors, on the CPU."""
        job = Job(inputs, batch)
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise HttpError(*job.error)
        return job.outputs

    def loop(self):
        held = None  # a request that did not fit the last batch
        while True:
            first = held if held is not None else self.jobs.get()
            held = None
            batch, size = [first], first.batch
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if size + job.batch > self.max_batch:
                    held = job
                    break
                batch.append(job)
                size += job.batch
            self.run(batch)

    def forward(self, inputs):
        """The model on one batch of CPU tensors; the output tensors on the CPU."""
        with torch.inference_mode():
            args = preprocess(*(x.to(self.device, non_blocking=True) for x in inputs))
            return [y.to("cpu") for y in postprocess(self.model(*args))]

    def run(self, jobs):
        try:
            inputs = [torch.cat([job.inputs[i] for job in jobs]) for i in range(len(INPUTS))]
            outputs = self.forward(inputs)
        except Exception as e:  # noqa: BLE001 - every failure is answered, none may stop the batcher
            self.failed(jobs, e)
            return
        sizes = [job.batch for job in jobs]
        if self.log_batches:
            log(f"batch of {sum(sizes)} item(s) from {len(jobs)} request(s)")
        pieces = [y.split(sizes) for y in outputs]
        for k, job in enumerate(jobs):
            job.outputs = [p[k] for p in pieces]
            job.done.set()

    def failed(self, jobs, error):
        if is_out_of_memory(error):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(jobs) > 1:
                # A smaller batch may fit: run the requests one by one before failing any.
                log(f"CUDA out of memory on a batch of {sum(j.batch for j in jobs)}; retrying its "
                    f"{len(jobs)} requests one by one")
                for job in jobs:
                    self.run([job])
                return
            detail = first_line(error)
            message = "CUDA out of memory: " + detail.removeprefix("CUDA out of memory.").strip()
            log(f"request failed: {message}")
            self.answer(jobs, 500, message)
            return
        message = f"inference failed: {type(error).__name__}: {first_line(error)}"
        log(message)
        self.answer(jobs, 500, message)
        if "CUDA error" in str(error):
            # A CUDA error other than out-of-memory can leave the context unusable: let the platform restart us.
            self.on_fatal(f"fatal CUDA error: {first_line(error)}")

    @staticmethod
    def answer(jobs, status, message):
        for job in jobs:
            job.error = (status, message)
            job.done.set()


# =========================================================================================================
# HTTP
# =========================================================================================================


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection is kept

    def log_message(self, format, *args):  # no access log: a busy server would flood stderr
        pass

    def send(self, status, body, content_type="application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
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
            self.route(method, self.path.split("?", 1)[0], body)
        except HttpError as e:
            self.send_json(e.status, {"error": e.message})

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def route(self, method, path, body):
        app = self.server.app
        if method == "GET" and path == "/v2/health/live":
            return self.send_json(200, {"live": True})
        if method == "GET" and path == "/v2/health/ready":
            if app.batcher is None:
                return self.send_json(503, {"ready": False, "error": "the model is loading"})
            return self.send_json(200, {"ready": True})
        if method == "GET" and path == "/v2":
            return self.send_json(200, {"name": "dilu-pytorch-example", "version": torch.__version__,
                                        "extensions": ["binary_tensor_data"]})
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            raise HttpError(404, "no such endpoint")
        name, rest = parts[2], parts[3:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            if rest[1] != "1":
                raise HttpError(404, f"model '{name}' has no version '{rest[1]}'")
            rest = rest[2:]
        if name != app.function:
            raise HttpError(404, f"model '{name}' is not found")
        if rest not in ([], ["ready"], ["infer"]) or (rest == ["infer"]) != (method == "POST"):
            raise HttpError(404, "no such endpoint")
        if app.batcher is None:
            raise HttpError(503, f"model '{name}' is not ready")
        if rest == []:
            return self.send_json(200, {"name": name, "versions": ["1"], "platform": PLATFORM,
                                        "inputs": INPUTS, "outputs": OUTPUTS})
        if rest == ["ready"]:
            return self.send_json(200, {"name": name, "ready": True})
        request, binary = parse_request(self.headers, body)
        inputs, batch = decode_inputs(request, binary, app.max_batch)
        wanted = wanted_outputs(request)
        outputs = app.batcher.submit(inputs, batch)
        self.send(200, *encode_response(name, request, outputs, wanted))


class App:
    """What the handlers share."""

    def __init__(self, function, max_batch):
        self.function = function
        self.max_batch = max_batch
        self.batcher = None  # set once the model is loaded


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app):
        super().__init__(address, Handler)
        self.app = app


# =========================================================================================================
# Start
# =========================================================================================================


def load(model_name, device):
    """The model in eval mode on `device`; exits with a clear message when it cannot be loaded."""
    try:
        return build_model(model_name).eval().to(device)
    except Exception as e:  # noqa: BLE001
        if is_out_of_memory(e):
            fail(EXIT_OOM, f"CUDA out of memory while loading {model_name}: {first_line(e)}")
        fail(EXIT_LOAD, f"cannot load {model_name}: {type(e).__name__}: {first_line(e)}")


def warm_up(batcher, max_batch):
    """Runs a batch of 1 and one of max_batch (allocating activations and picking kernels before serving)."""
    for size in sorted({1, max_batch}):
        inputs = [torch.zeros([size] + spec["shape"][1:], dtype=DTYPES[spec["datatype"]]) for spec in INPUTS]
        try:
            batcher.forward(inputs)
        except Exception as e:  # noqa: BLE001
            if not is_out_of_memory(e):
                fail(EXIT_LOAD, f"warm-up with a batch of {size} failed: {type(e).__name__}: {first_line(e)}")
            if size == 1:
                fail(EXIT_OOM, f"CUDA out of memory in warm-up with a batch of 1: {first_line(e)}")
            torch.cuda.empty_cache()
            log(f"warning: CUDA out of memory in warm-up with a batch of {size}: large batches may fail")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL", "resnet18"),
                        help="torchvision model name (default: env MODEL, else resnet18)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda when PyTorch sees a GPU, else cpu")
    parser.add_argument("--max-wait-ms", type=float, default=2.0,
                        help="how long a batch waits for more requests (default: 2 ms)")
    parser.add_argument("--warmup", action="store_true", help="run a batch of 1 and of max_batch before ready")
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST") or "127.0.0.1",
        help="address to listen on (default: $HOST, which the platform sets, else 127.0.0.1)",
    )
    args = parser.parse_args()
    port, function, max_batch = read_config(args)

    stop = threading.Event()
    exit_status = [0]

    def on_fatal(message):
        log(message)
        exit_status[0] = EXIT_FATAL
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    # Listen first: live at once, ready once the model is loaded.
    app = App(function, max_batch)
    try:
        server = Server((args.host, port), app)
    except OSError as e:
        fail(EXIT_FATAL, f"cannot listen on {args.host}:{port}: {e}")
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()

    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda")
        described = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = torch.device("cpu")
        described = f"cpu ({torch.get_num_threads()} threads)"
    model = load(args.model, device)
    batcher = Batcher(model, device, max_batch, args.max_wait_ms / 1000.0, on_fatal)
    if args.warmup:
        warm_up(batcher, max_batch)
    app.batcher = batcher
    print(f"{PROG}: serving {args.model} as model '{function}' on http://{args.host}:{port}, device {described}, "
          f"max_batch {max_batch}, batch wait {args.max_wait_ms:g} ms", flush=True)

    stop.wait()
    if exit_status[0] == 0:
        log("stopping (signal)")
    server.shutdown()
    time.sleep(0.2)  # lets answers in flight go out
    sys.exit(exit_status[0])


if __name__ == "__main__":
    main()
