"""Where one served request's time goes: per model component, from TensorFlow's step stats.

    python -m serving.profile_request --model_base_path out/serving/unisar \
        --data_dir out/tfx/SequenceExampleGen/examples/N \
        --transform_dir out/tfx/Transform/transform_graph/M

Loads the newest export the way the stand-in and TF Serving do (TF1 session, oneDNN off),
replays real test requests (serving.benchmark.load_requests) with full tracing and sums each
executed node's time into the component it belongs to: the model's layers (its name scopes,
e.g. `experts`, `rec_fusion`), the Transform graph and vocabulary lookups that map raw ids,
the request glue around them, and the executor's own bookkeeping (function inputs, return
values). One intra-op and one inter-op thread by default, so that the op times add up to the
request's CPU time instead of overlapping. Prints a Markdown table per signature.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from typing import Dict, List, Mapping, Optional

import numpy as np

# As in serving/server.py: the stand-in serves with oneDNN off (docs/benchmarks.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_MODEL_SCOPE = re.compile(r"^(uni_sar_model|sas_rec_model)(_\d+)?$")
_NUMBERED = re.compile(r"_\d+$")
EXECUTOR = "executor bookkeeping"
TRANSFORM = "Transform graph"
VOCABULARY = "vocabulary lookups"
GLUE = "request glue"
MODEL_OTHER = "model, unscoped ops"


def component_of(node_name: str) -> str:
    """The component a node of the serving graph belongs to (see the module docstring)."""
    parts = node_name.split("/")
    for index, part in enumerate(parts):
        if _MODEL_SCOPE.match(part):
            inner = parts[index + 1 : -1]  # the scopes between the model and the op's name
            return _NUMBERED.sub("", inner[0]) if inner else MODEL_OTHER
        if part.startswith("transform_features_layer"):
            return TRANSFORM
    if parts[0].startswith("apply_vocab") or "LookupTable" in node_name:
        return VOCABULARY
    if parts[0] in ("_SOURCE", "_SINK") or parts[0].startswith(("Func", "identity_")):
        return EXECUTOR
    return GLUE


def profile_signature(
    session, signature_def, requests: List[Mapping[str, np.ndarray]], traced: int = 20
) -> dict:
    """{"wall_ms": per-request wall times (untraced), "components": {name: {"nodes", "ms"}}}
    averaged over the first `traced` requests, each run once more with full tracing."""
    import tensorflow as tf

    output = signature_def.outputs["scores"].name
    feeds = [{signature_def.inputs[k].name: v for k, v in r.items()} for r in requests]
    for feed in feeds[:10]:  # warm-up: first runs allocate and optimise
        session.run(output, feed)
    wall = []
    for feed in feeds:
        started = time.perf_counter()
        session.run(output, feed)
        wall.append((time.perf_counter() - started) * 1000)
    micros: Dict[str, float] = collections.defaultdict(float)
    nodes: Dict[str, int] = collections.defaultdict(int)
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    sample = feeds[:traced]
    for feed in sample:
        metadata = tf.compat.v1.RunMetadata()
        session.run(output, feed, options=options, run_metadata=metadata)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                name = component_of(node.node_name)
                micros[name] += node.all_end_rel_micros
                nodes[name] += 1
    components = {
        name: {"nodes": nodes[name] / len(sample), "ms": micros[name] / len(sample) / 1000}
        for name in micros
    }
    return {"wall_ms": wall, "components": components}


def markdown(signature: str, result: dict) -> str:
    components = result["components"]
    total_ms = sum(c["ms"] for c in components.values())
    total_nodes = sum(c["nodes"] for c in components.values())
    wall = np.asarray(result["wall_ms"])
    lines = [
        f"### {signature}: {total_nodes:.0f} nodes run per request, op time "
        f"{total_ms:.2f} ms; wall p50 {np.percentile(wall, 50):.2f} ms, "
        f"p99 {np.percentile(wall, 99):.2f} ms ({len(wall)} requests)",
        "",
        "| component | nodes | op ms | share |",
        "|---|---|---|---|",
    ]
    for name, values in sorted(components.items(), key=lambda item: -item[1]["ms"]):
        lines.append(
            f"| {name} | {values['nodes']:.0f} | {values['ms']:.3f} | "
            f"{values['ms'] / total_ms:.1%} |"
        )
    return "\n".join(lines) + "\n"


def load_session(export_dir: str, threads: int):
    import tensorflow as tf

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads
    )
    session = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, [tf.saved_model.SERVING], export_dir
        )
    return session, dict(meta_graph.signature_def)


def main(argv: Optional[List[str]] = None) -> Dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path", required=True, help="the newest version is profiled")
    parser.add_argument("--data_dir", required=True, help="examples to replay (serving.benchmark)")
    parser.add_argument("--transform_dir", default=None, help="for raw-id examples")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per signature")
    parser.add_argument("--traced", type=int, default=20, help="of them, traced per signature")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra- and inter-op threads of the session"
    )
    args = parser.parse_args(argv)
    for name in ("requests", "traced", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    from serving.benchmark import load_requests
    from serving.server import list_versions

    versions = list_versions(args.model_base_path)
    if not versions:
        parser.exit(1, f"no version under {args.model_base_path}\n")
    export_dir = os.path.join(args.model_base_path, str(versions[-1]))
    requests = load_requests(args.data_dir, args.requests, args.transform_dir)
    session, signatures = load_session(export_dir, args.threads)
    results = {}
    print(f"{export_dir}, {args.threads} intra/inter-op thread(s)\n")
    for signature, batch in requests.items():
        results[signature] = profile_signature(session, signatures[signature], batch, args.traced)
        print(markdown(signature, results[signature]), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
