#!/usr/bin/env python3
"""Checks an Open Inference Protocol (v2) REST endpoint with KServe's own client, `kserve.InferenceRESTClient`.

Usage: v2-kserve-check.py --url http://HOST:PORT --model NAME --request FILE

FILE is a v2 inference request body with JSON tensors (as `dilu models inputs` writes them). The script asks
the client whether the server is live and ready and whether the model is ready (and that an unknown model is
not), reads the server and model metadata and the health bodies and checks each against KServe's own schema
for them (`kserve.protocol.rest.v2_datamodels`: the client has no metadata call), then runs the request five
ways: JSON tensors in and out, binary tensors in and out, binary in with a JSON output, no outputs named (the
server's choice), and the file's body sent as a plain dict. It also sends a wrong shape and an unknown model
and records the errors. It prints one JSON object; the caller asserts on it.

Needs `pip install kserve` (tested with 0.21.0; `.ci/run` installs it into its own virtual environment).
"""

import argparse
import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest import v2_datamodels as schema

NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


def tensors_from(request):
    """The request's inputs as (name, datatype, numpy array) triples."""
    out = []
    for t in request["inputs"]:
        array = np.asarray(t["data"], dtype=NUMPY_OF[t["datatype"]]).reshape(t["shape"])
        out.append((t["name"], t["datatype"], array))
    return out


def summary(result, headers):
    """What a response held: its id, model, and each output's type, shape, encoding and elements."""
    binary = INFERENCE_CONTENT_LENGTH_HEADER in {k.lower() for k in headers}
    out = {"id": result.id, "model_name": result.model_name, "outputs": {}}
    for o in result.outputs:
        out["outputs"][o.name] = {
            "datatype": o.datatype,
            "shape": list(o.shape),
            "binary": binary,
            "data": o.as_numpy().astype(np.float64).ravel().tolist(),
        }
    return out


async def infer(client, url, model, tensors, binary_in, binary_out, outputs):
    inputs = []
    for name, datatype, array in tensors:
        i = InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(i)
    wanted = None
    if outputs is not None:
        wanted = [RequestedOutput(o, parameters={"binary_data": binary_out}) for o in outputs]
    request = InferRequest(model, inputs, request_id="check", request_outputs=wanted)
    headers = {}
    result = await client.infer(url, request, model_name=model, response_headers=headers)
    return summary(result, headers)


async def error_of(call):
    try:
        await call()
    except httpx.HTTPStatusError as e:
        return {"status": str(e.response.status_code), "message": str(e)}
    return None


async def bodies(url, model):
    """The health and metadata bodies, each parsed with KServe's schema for it (an error names the rule)."""
    checks = {
        "/v2/health/live": schema.ServerLiveResponse,
        "/v2/health/ready": schema.ServerReadyResponse,
        f"/v2/models/{model}/ready": schema.ModelReadyResponse,
        "/v2": schema.ServerMetadataResponse,
        f"/v2/models/{model}": schema.ModelMetadataResponse,
    }
    out = {}
    async with httpx.AsyncClient(timeout=60.0) as http:
        for path, model_type in checks.items():
            response = await http.get(url.rstrip("/") + path)
            response.raise_for_status()
            out[path] = model_type.model_validate_json(response.content).model_dump()
    return out


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://HOST:PORT of the v2 endpoint")
    parser.add_argument("--model", required=True, help="the model (function) name")
    parser.add_argument("--request", required=True, help="a v2 request body with JSON tensors")
    args = parser.parse_args()
    url, model = args.url, args.model

    with open(args.request, encoding="utf-8") as f:
        request = json.load(f)
    tensors = tensors_from(request)

    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        found = await bodies(url, model)
        metadata = found[f"/v2/models/{model}"]
        output_names = [o["name"] for o in metadata["outputs"]]
        report = {
            "server_live": await client.is_server_live(url),
            "server_ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
            "unknown_model_ready": await client.is_model_ready(url, model + "-missing"),
            "bodies": found,
            "server_extensions": found["/v2"]["extensions"],
            "metadata": metadata,
            "json": await infer(client, url, model, tensors, False, False, output_names),
            "binary": await infer(client, url, model, tensors, True, True, output_names),
            "binary_in_json_out": await infer(client, url, model, tensors, True, False, output_names),
            "default_outputs": await infer(client, url, model, tensors, False, False, None),
        }
        plain = dict(request, id="check")
        headers = {}
        result = await client.infer(url, plain, model_name=model, response_headers=headers)
        report["dict_request"] = summary(result, headers)

        name, datatype, array = tensors[0]
        wrong = array.reshape(-1)[: max(1, array.size // 2)]

        async def wrong_shape():
            i = InferInput(name, list(wrong.shape), datatype)
            i.set_data_from_numpy(wrong, binary_data=False)
            await client.infer(url, InferRequest(model, [i]), model_name=model)

        async def unknown_model():
            i = InferInput(name, list(array.shape), datatype)
            i.set_data_from_numpy(array, binary_data=False)
            missing = model + "-missing"
            await client.infer(url, InferRequest(missing, [i]), model_name=missing)

        report["wrong_shape_error"] = await error_of(wrong_shape)
        report["unknown_model_error"] = await error_of(unknown_model)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    asyncio.run(main())
