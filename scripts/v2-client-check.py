#!/usr/bin/env python3
"""Checks a KServe v2 / Triton REST endpoint with the official Triton client (`tritonclient.http`).

Usage: v2-client-check.py --url HOST:PORT --model NAME --request FILE

FILE is a v2 inference request body with JSON tensors (as `dilu models inputs` writes them). The script
calls the health, readiness and metadata endpoints, then runs the same request four ways: binary tensors in
and out (the client's default), JSON tensors in and out, no outputs named (the server's choice, which the
client asks to be binary), and binary input with a JSON output. It also sends a wrong shape and an unknown
model and records the errors the client reports. It prints one JSON object; the caller asserts on it.

Needs `pip install "tritonclient[http]"` (which brings numpy).
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


def tensors_from(request):
    """The request's inputs as (name, datatype, numpy array) triples."""
    out = []
    for t in request["inputs"]:
        array = np.asarray(t["data"], dtype=NUMPY_OF[t["datatype"]]).reshape(t["shape"])
        out.append((t["name"], t["datatype"], array))
    return out


def infer(client, model, tensors, binary_in, binary_out, outputs):
    inputs = []
    for name, datatype, array in tensors:
        i = triton.InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(i)
    wanted = None
    if outputs is not None:
        wanted = [triton.InferRequestedOutput(o, binary_data=binary_out) for o in outputs]
    result = client.infer(model, inputs, outputs=wanted, request_id="check")
    response = result.get_response()
    summary = {"id": response.get("id"), "model_name": response.get("model_name"), "outputs": {}}
    for o in response["outputs"]:
        array = result.as_numpy(o["name"])
        summary["outputs"][o["name"]] = {
            "datatype": o["datatype"],
            "shape": o["shape"],
            "binary": "binary_data_size" in (o.get("parameters") or {}),
            "data": array.astype(np.float64).ravel().tolist(),
        }
    return summary


def error_of(call):
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="HOST:PORT of the v2 endpoint")
    parser.add_argument("--model", required=True, help="the model (function) name")
    parser.add_argument("--request", required=True, help="a v2 request body with JSON tensors")
    args = parser.parse_args()

    with open(args.request, encoding="utf-8") as f:
        request = json.load(f)
    tensors = tensors_from(request)
    client = triton.InferenceServerClient(url=args.url, network_timeout=60.0)

    metadata = client.get_model_metadata(args.model)
    output_names = [o["name"] for o in metadata["outputs"]]
    report = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "server_extensions": client.get_server_metadata().get("extensions", []),
        "metadata": metadata,
        "binary": infer(client, args.model, tensors, True, True, output_names),
        "json": infer(client, args.model, tensors, False, False, output_names),
        "default_outputs": infer(client, args.model, tensors, True, True, None),
        "binary_in_json_out": infer(client, args.model, tensors, True, False, output_names),
    }

    name, datatype, array = tensors[0]
    wrong = array.reshape(-1)[: max(1, array.size // 2)]

    def wrong_shape():
        i = triton.InferInput(name, list(wrong.shape), datatype)
        i.set_data_from_numpy(wrong)
        client.infer(args.model, [i])

    def unknown_model():
        i = triton.InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array)
        client.infer(args.model + "-missing", [i])

    report["wrong_shape_error"] = error_of(wrong_shape)
    report["unknown_model_error"] = error_of(unknown_model)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
