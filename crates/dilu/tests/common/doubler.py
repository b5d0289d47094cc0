# A v2 server in Python's standard library, for the process-runtime tests: model $DILU_FUNCTION, input `input`
# FP32 [-1, 4], output `output` = input x 2. Readiness on /v2/health/ready, listening on $HOST:$PORT (the
# platform sets both).
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["DILU_FUNCTION"]
PORT = int(os.environ["PORT"])
HOST = os.environ.get("HOST", "127.0.0.1")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v2/health/ready":
            self.send(200, {"ready": True})
        elif self.path == "/v2/models/" + NAME:
            self.send(200, {"name": NAME, "platform": "python",
                            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
                            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]})
        else:
            self.send(404, {"error": "no route " + self.path})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        x = body["inputs"][0]
        self.send(200, {"model_name": NAME, "outputs": [
            {"name": "output", "datatype": "FP32", "shape": x["shape"], "data": [2 * v for v in x["data"]]}]})

print(f"doubler {NAME} on {HOST}:{PORT} (batch {os.environ['DILU_MAX_BATCH']})", flush=True)
ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
