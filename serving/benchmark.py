"""Serving latency and throughput: in-process signature calls, gRPC to the stand-in, 8-client load.

    python -m serving.benchmark --model_base_path out/serving/unisar \
        --data_dir out/amazon_beauty_pool20

Requests are real test-split examples of the data dir (one user each, with its 100
candidates: 1 positive + 99 negatives), turned back into raw ids and query text with
`unisar_tf.export.requests.raw_request_from_features`. The stand-in runs as its own process, as a
server would; the load generator pre-builds its PredictRequests so that what is timed is the
RPC, not the client's proto building. Prints a Markdown table (and --json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np

# As in serving/server.py: oneDNN slows down single-request scoring (docs/benchmarks.md).
# Set before TensorFlow is imported; --onednn keeps it on for comparison.
if "--onednn" not in sys.argv:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# After the environment above: these import TensorFlow.
from feature_specs.layout import VOCAB_DIR  # noqa: E402
from feature_specs.serving import SIGNATURE_NAMES  # noqa: E402
from unisar_tf.data import reader  # noqa: E402
from unisar_tf.data.transform import transform_ids  # noqa: E402
from unisar_tf.data.vocab import read_vocabularies  # noqa: E402
from unisar_tf.export.requests import raw_request_from_features  # noqa: E402


def percentiles(milliseconds: List[float]) -> Dict[str, float]:
    values = np.asarray(milliseconds)
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
        "n": int(values.size),
    }


def load_requests(
    data_dir: str, count: int, transform_dir: Optional[str] = None
) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """signature -> `count` single-user raw requests from the test split.

    The data job's id examples are mapped back to strings with its vocab/; raw-id examples
    (the TFX pipeline's) are read through the Transform output that maps them, and mapped
    back with its vocabularies, so the requests carry the examples' own raw ids."""
    manifest = reader.load_manifest(data_dir, transform_dir)
    vocabularies = (
        transform_ids(transform_dir).vocabularies()
        if transform_dir
        else read_vocabularies(os.path.join(data_dir, VOCAB_DIR))
    )
    requests = {}
    for task, signature in SIGNATURE_NAMES.items():
        arrays = reader.load_arrays(data_dir, "test", task, manifest=manifest, limit=count)
        raw = raw_request_from_features(arrays, vocabularies)
        requests[signature] = [
            {name: value[row : row + 1] for name, value in raw.items()}
            for row in range(len(arrays["user_id"]))
        ]
    return requests


def in_process_latency(export_dir: str, requests, warmup: int = 20) -> Dict[str, dict]:
    import tensorflow as tf

    model = tf.saved_model.load(export_dir)
    results = {}
    for signature, batch in requests.items():
        function = model.signatures[signature]
        tensors = [{k: tf.constant(v) for k, v in request.items()} for request in batch]
        for request in tensors[:warmup]:
            function(**request)
        times = []
        for request in tensors:
            start = time.perf_counter()
            function(**request)["scores"].numpy()
            times.append((time.perf_counter() - start) * 1000)
        results[signature] = percentiles(times)
    return results


def predict_requests(requests, model_name: str):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    built = {}
    for signature, batch in requests.items():
        built[signature] = []
        for request in batch:
            proto = predict_pb2.PredictRequest()
            proto.model_spec.name = model_name
            proto.model_spec.signature_name = signature
            for name, value in request.items():
                proto.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            built[signature].append(proto)
    return built


def start_stand_in(model_base_path: str, extra_args: List[str]):
    """The stand-in in its own process; returns (process, "127.0.0.1:port")."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--model_base_path",
            model_base_path,
            "--port",
            "0",
        ]
        + extra_args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    if " at " not in line:
        process.kill()
        raise RuntimeError(f"the stand-in did not start: {line!r}")
    return process, line.strip().rsplit(" at ", 1)[1]


def grpc_latency(target: str, built, warmup: int = 20) -> Dict[str, dict]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        results = {}
        for signature, protos in built.items():
            for proto in protos[:warmup]:
                stub.Predict(proto, timeout=10)
            times = []
            for proto in protos:
                start = time.perf_counter()
                stub.Predict(proto, timeout=10)
                times.append((time.perf_counter() - start) * 1000)
            results[signature] = percentiles(times)
    return results


def load_test(target: str, built, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own channel, sending back to back for `seconds`."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    protos = [p for batch in built.values() for p in batch]
    times: List[List[float]] = [[] for _ in range(clients)]
    errors: List[List[str]] = [[] for _ in range(clients)]
    stop_at = time.perf_counter() + seconds

    def run(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            position = index
            while time.perf_counter() < stop_at:
                proto = protos[position % len(protos)]
                position += clients
                start = time.perf_counter()
                try:
                    stub.Predict(proto, timeout=5)
                    times[index].append((time.perf_counter() - start) * 1000)
                except grpc.RpcError as e:
                    errors[index].append(e.code().name)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_times = [t for ts in times for t in ts]
    all_errors = [e for es in errors for e in es]
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(all_times),
        "errors": len(all_errors),
        "error_codes": sorted(set(all_errors)),
        "requests_per_second": len(all_times) / elapsed,
        **percentiles(all_times),
    }


def resident_memory_mb(pid: int) -> Dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": values["VmRSS"], "peak_rss_mb": values["VmHWM"]}


def markdown(result: dict) -> str:
    lines = [
        "| path | signature | p50 ms | p95 ms | p99 ms | requests |",
        "|---|---|---|---|---|---|",
    ]
    for path in ("in_process", "grpc"):
        for signature, row in result[path].items():
            lines.append(
                f"| {path.replace('_', '-')} | {signature} | {row['p50']:.2f} | "
                f"{row['p95']:.2f} | {row['p99']:.2f} | {row['n']} |"
            )
    load = result["load"]
    lines.append(
        f"| gRPC, {load['clients']} clients x {load['seconds']:.0f} s | both | "
        f"{load['p50']:.2f} | {load['p95']:.2f} | {load['p99']:.2f} | "
        f"{load['requests']} |"
    )
    memory = result["stand_in_memory"]
    lines += [
        "",
        f"Throughput under load: {load['requests_per_second']:.1f} requests/s, "
        f"{load['errors']} errors {load['error_codes'] or ''}. Stand-in resident memory "
        f"after the load: {memory['rss_mb']:.0f} MB (peak {memory['peak_rss_mb']:.0f} MB).",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_base_path",
        required=True,
        help="<serving_dir>/unisar; the latest version is benchmarked",
    )
    parser.add_argument(
        "--data_dir",
        required=True,
        help="examples to replay: the data job's output, or the pipeline's "
        "SequenceExampleGen Examples artifact (raw ids: --transform_dir)",
    )
    parser.add_argument(
        "--transform_dir",
        default=None,
        help="for raw-id examples: the Transform output that maps them (the "
        "pipeline's Transform transform_graph artifact)",
    )
    parser.add_argument(
        "--requests", type=int, default=500, help="timed requests per signature and path"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load test")
    parser.add_argument("--model_name", default="unisar")
    parser.add_argument(
        "--server_args", default="", help="extra stand-in flags, e.g. '--max_workers 8'"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--onednn",
        action="store_true",
        help="keep TF's oneDNN kernels on (off by default, as in the stand-in)",
    )
    args = parser.parse_args(argv)

    from serving.server import list_versions

    versions = list_versions(args.model_base_path)
    if not versions:
        raise SystemExit(f"no version under {args.model_base_path}")
    export_dir = os.path.join(args.model_base_path, str(versions[-1]))
    requests = load_requests(args.data_dir, args.requests, args.transform_dir)
    result = {
        "export_dir": export_dir,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0",
        "candidates": int(requests["search"][0]["candidate_item_ids"].shape[1]),
    }
    result["in_process"] = in_process_latency(export_dir, requests)
    built = predict_requests(requests, args.model_name)
    process, target = start_stand_in(args.model_base_path, args.server_args.split())
    try:
        result["grpc"] = grpc_latency(target, built)
        result["load"] = load_test(target, built, args.clients, args.seconds)
        result["stand_in_memory"] = resident_memory_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == "__main__":
    main()
