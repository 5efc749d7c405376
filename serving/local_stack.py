"""`make serve`: the whole online path on this machine, on the model `make run` pushed.

    python -m serving.local_stack [--model_base_path out/serving/unisar]
        [--store sqlite:///out/online/history.db] [--dataset amazon_beauty]

1. Loads the dataset's events into the history store through the data job's adapters
   (serving/load_history.py; re-running stores nothing twice).
2. Starts the stand-in model server (serving/server.py, TF Serving's PredictionService) on
   the newest pushed version, 127.0.0.1:8500.
3. Starts the ranking service (serving/ranking_service.py), HTTP on 127.0.0.1:8080 and gRPC
   on :8081, and prints curl requests for a user of the dataset. Ctrl-C stops everything.

In production the three are separate deployments (serving/deploy/): TF Serving's own binary,
Redis as the store, the ranking service in front (docs/online.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def example_requests(http: str, user_id: str, items: Sequence[str], query: str) -> str:
    """curl commands for a user: rank given candidates, search, and no candidates."""
    rank = {"user_id": user_id, "candidates": list(items), "k": 5}
    search = dict(rank, query=query)
    retrieve = {"user_id": user_id, "k": 10}
    lines = []
    for title, body in (
        ("recommend among given candidates", rank),
        ("search with a query", search),
        ("no candidates: the retrieval stage picks them", retrieve),
    ):
        lines.append(
            f"# {title}\ncurl -s -X POST http://{http}/v1/rank "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_base_path", default="out/serving/unisar")
    parser.add_argument("--store", default="sqlite:///out/online/history.db")
    parser.add_argument(
        "--dataset",
        default="amazon_beauty",
        help="the data job's dataset name; its input flags may follow",
    )
    parser.add_argument("--dead_letter", default="out/online/rejected.jsonl")
    parser.add_argument("--model_port", type=int, default=8500)
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--grpc_port", type=int, default=8081)
    args, input_flags = parser.parse_known_args(argv)

    from serving.history_store import open_store
    from serving.load_history import dataset_inputs, load
    from serving.server import list_versions, serve

    if not os.path.isdir(args.model_base_path) or not list_versions(args.model_base_path):
        print(
            f"error: no pushed model under {args.model_base_path}: run `make run` first "
            "(it pushes a model when it is blessed)",
            file=sys.stderr,
        )
        return 2
    if args.store.startswith("sqlite:///"):
        os.makedirs(
            os.path.dirname(os.path.abspath(args.store[len("sqlite:///") :])), exist_ok=True
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.dead_letter)), exist_ok=True)
    read, inputs = dataset_inputs(args.dataset, input_flags)
    with open_store(args.store) as store:
        report = load(store, read, inputs, args.dead_letter)
    print(f"history store {args.store}: {report.format()}", flush=True)

    from serving.client import UniSARClient
    from serving.ranking_service import RankingServer, RankingService

    model_server = serve(args.model_base_path, port=args.model_port)
    print(
        f"model server (stand-in for TF Serving): {model_server.address}, version "
        f"{model_server.version}",
        flush=True,
    )
    store = open_store(args.store)
    scorer = UniSARClient(model_server.address, timeout_seconds=1.0)
    service = RankingService(store, scorer, args.model_base_path).start()
    server = RankingServer(service, http_port=args.http_port, grpc_port=args.grpc_port)
    http_port, grpc_port = server.start()
    http = f"127.0.0.1:{http_port}"
    print(f"ranking service: http {http}, grpc 127.0.0.1:{grpc_port}", flush=True)

    user, items, query = _sample_request(store, read, inputs)
    print("\nTry:\n" + example_requests(http, user, items, query) + "\n", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    server.stop()
    service.close()
    scorer.close()
    store.close()
    model_server.stop()
    return 0


def _sample_request(store, read, inputs):
    """A user of the log (the first by id with both kinds of behaviour), five items of the
    catalogue that user has not touched plus their latest one, and a query they typed."""
    from serving.load_history import adapter_events

    events = adapter_events(read, inputs)
    by_user = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    catalogue = sorted({e.item_id for e in events if e.item_id})
    for user in sorted(by_user):
        stored = store.events(user)
        queries = [e.query_tokens for e in stored if e.query_tokens]
        if queries and any(e.scenario == "rec" for e in stored):
            seen = {e.item_id for e in stored}
            items = [item for item in catalogue if item not in seen][:4] + [stored[-1].item_id]
            return user, [i for i in items if i], " ".join(queries[-1])
    user = sorted(by_user)[0]
    return user, catalogue[:5], ""


if __name__ == "__main__":
    sys.exit(main())
