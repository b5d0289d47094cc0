#!/usr/bin/env python3
"""A PyTorch training job for Dilu's `runtime: process` (kind: training).

It trains a small convolutional network on a fixed synthetic data set (random 3x32x32 images labelled by a
fixed random linear function, so the loss really falls; fixed seed, nothing downloaded), on `cuda` when
PyTorch sees a GPU, else on the CPU, forever, until SIGTERM or SIGINT (then it exits 0).

While it trains it serves, on $HOST:$PORT (HOST defaults to 127.0.0.1), from a background thread:
    GET /health   200 {"status": "running"} once training runs (503 before; 500 after a fatal error)
    GET /status   200 {"iterations": N, "loss": x, "device": "...", "batch": B, "elapsed_s": t}
N is the number of optimizer steps done so far: the platform's profiler reads its rate.

Environment: PORT (required), HOST (default 127.0.0.1), BATCH_SIZE (default 64), OMP_NUM_THREADS (CPU threads).
Exit status: 0 after SIGTERM or SIGINT; 2 bad configuration (PORT missing or invalid); 4 CUDA out of memory;
1 any other fatal error.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn

PROG = "train.py"

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_OOM = 4


def log(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def fail(status, message):
    log(message)
    sys.exit(status)


def env_positive(name, default):
    text = os.environ.get(name, "").strip() or str(default)
    if not text.isdigit() or int(text) < 1:
        fail(EXIT_CONFIG, f"{name}={text!r} is not a positive integer")
    return int(text)


def read_port():
    text = os.environ.get("PORT", "").strip()
    if not text:
        fail(EXIT_CONFIG, "PORT is not set: the platform sets it to the TCP port to listen on (e.g. PORT=8001)")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        fail(EXIT_CONFIG, f"PORT={text!r} is not a TCP port (1..65535)")
    return int(text)


class SmallCnn(nn.Module):
    """Two convolutions and a linear classifier over 3x32x32 images, 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def synthetic_data(samples, device):
    """Random images labelled by a fixed random linear "teacher", so the labels are learnable."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(samples, 3, 32, 32, generator=generator) - 0.5
    teacher = torch.randn(3 * 32 * 32, 10, generator=generator)
    labels = (images.flatten(1) @ teacher).argmax(dim=1)
    return images.to(device), labels.to(device)


class Progress:
    """What /status reports, updated by the training loop."""

    def __init__(self, device, batch):
        self.device = device
        self.batch = batch
        self.iterations = 0
        self.loss = None
        self.running = False
        self.error = None
        self.started = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120

    def log_message(self, format, *args):
        pass

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        p = self.server.progress
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if p.error is not None:
                return self.send_json(500, {"status": "failed", "error": p.error})
            if not p.running:
                return self.send_json(503, {"status": "starting"})
            return self.send_json(200, {"status": "running"})
        if path == "/status":
            return self.send_json(200, {
                "iterations": p.iterations,
                "loss": p.loss,
                "device": p.device,
                "batch": p.batch,
                "elapsed_s": round(time.monotonic() - p.started, 3),
            })
        self.send_json(404, {"error": "no such endpoint"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, progress):
        super().__init__(address, Handler)
        self.progress = progress


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda when PyTorch sees a GPU, else cpu")
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST") or "127.0.0.1",
        help="address to listen on (default: $HOST, which the platform sets, else 127.0.0.1)",
    )
    args = parser.parse_args()
    port = read_port()
    batch = env_positive("BATCH_SIZE", 64)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        described = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        described = f"cpu ({torch.get_num_threads()} threads)"
    progress = Progress(described, batch)
    try:
        server = Server((args.host, port), progress)
    except OSError as e:
        fail(EXIT_FATAL, f"cannot listen on {args.host}:{port}: {e}")
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()

    try:
        torch.manual_seed(0)
        model = SmallCnn().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        images, labels = synthetic_data(4096, device)
        order = torch.Generator(device="cpu").manual_seed(1)
        print(f"{PROG}: training a small CNN on {described}, batch {batch}, status on "
              f"http://{args.host}:{port}/status", flush=True)
        progress.running = True
        while not stop.is_set():
            index = torch.randint(0, images.shape[0], (batch,), generator=order).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            progress.loss = round(loss.item(), 6)
            progress.iterations += 1
    except Exception as e:  # noqa: BLE001 - any failure ends the job with a clear line and status
        out_of_memory = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        progress.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        progress.running = False
        fail(EXIT_OOM if out_of_memory else EXIT_FATAL, f"training failed: {progress.error}")
    log(f"stopping (signal) after {progress.iterations} iterations, loss {progress.loss}")
    server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
