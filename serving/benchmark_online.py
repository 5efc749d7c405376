"""Load benchmark of the ranking service (serving/ranking_service.py) over loopback.

    python -m serving.benchmark_online --store sqlite:///out/online/history.db \
        --model_base_path out/serving/unisar \
        --users_from_sequences ../shared/data/amazon_beauty/Beauty.txt \
        [--clients 8] [--duration 60] [--candidates 100]
        [--runs http:given,http:retrieved,grpc:given]

Starts the stand-in TF Serving (unless --model_server) and the ranking service (unless
--service_http/--service_grpc) as their own processes, as deployed, then drives the service
with `--clients` concurrent clients (threads of this process, one keep-alive connection or
gRPC channel each) for `--duration` seconds per run, on users of the store:

- `given`: each request brings `--candidates` random items of the served version's
  vocabulary (assets.extra/online/items.txt); `retrieved`: no candidates, the version's
  retrieval index chooses them (skipped when the version has none).
- `--search_fraction`: that share of requests carry a query, taken from the user's stored
  search sessions (the rest, and users without one, are recommendation requests).

Prints a Markdown table: end-to-end latency p50/p99 as the client sees it (store read +
feature assembly + TF Serving + HTTP/gRPC), requests/s, errors, and the service process's
resident memory sampled every second (start, max, end of each run: flat over a
`--duration 600` run means no leak). The store's read latency is measured separately,
in this process, on the same users. `--json` writes everything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# The service and stand-in are separate processes; this one only needs gRPC and the store.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RUNS = ("http:given", "http:retrieved", "grpc:given", "grpc:retrieved")


def percentiles(milliseconds: Sequence[float]) -> Dict[str, float]:
    if not milliseconds:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    values = np.asarray(milliseconds)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "n": int(values.size),
    }


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class MemorySampler:
    """The service's RSS every `interval` s in a thread; mark() starts a new segment."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid = pid
        self.interval = interval
        self.samples: List[Tuple[float, float]] = []  # (time, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), resident_mb(self.pid)))
            if self._stop.wait(self.interval):
                return

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> Dict[str, float]:
        """RSS at the first and last sample of [start, end], and the max in between."""
        inside = [mb for t, mb in self.samples if start <= t <= end] or [resident_mb(self.pid)]
        return {"start_mb": inside[0], "max_mb": max(inside), "end_mb": inside[-1]}


# ------------------------------------------------------------------------------ processes


def start_process(
    command: List[str], marker: str, timeout: float = 300.0
) -> Tuple[subprocess.Popen, str]:
    """Start a server process and return it with the first stdout line containing
    `marker` (its "listening" line)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if marker in line:
            return process, line.strip()
    process.kill()
    raise RuntimeError(f"{' '.join(command[:3])} did not start (no {marker!r} line)")


def wait_ready(http_target: str, timeout: float = 300.0) -> dict:
    """GET /readyz until 200; returns its body."""
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        try:
            status, body = _http(http_target, "GET", "/readyz", None)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the ranking service at {http_target} is not ready: {body}")


def _http(
    target: str,
    method: str,
    path: str,
    body: Optional[bytes],
    connection: Optional[http.client.HTTPConnection] = None,
) -> Tuple[int, dict]:
    own = connection is None
    if own:
        host, port = target.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = json.loads(response.read())
    if own:
        connection.close()
    return response.status, data


# ------------------------------------------------------------------------------- requests


def read_users(users_file: Optional[str], sequences_file: Optional[str]) -> List[str]:
    """User ids: one per line, or the first token of each line of an Amazon sequences file."""
    path = users_file or sequences_file
    if not path:
        raise SystemExit("give --users FILE or --users_from_sequences FILE")
    users = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split() if sequences_file and not users_file else [line.strip()]
            if fields and fields[0]:
                users.append(fields[0])
    if not users:
        raise SystemExit(f"{path}: no user ids")
    return users


def measure_store(store_url: str, users: Sequence[str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """The store's events() latency per user (in this process), and each user's most recent
    search query (tokens joined by spaces), for requests with a query."""
    from serving.history_store import open_store

    store = open_store(store_url)
    times, queries = [], {}
    try:
        for user in users:
            start = time.perf_counter()
            events = store.events(user)
            times.append((time.perf_counter() - start) * 1000)
            for event in reversed(events):
                if event.scenario == "search" and event.query_tokens:
                    queries[user] = " ".join(event.query_tokens)
                    break
    finally:
        store.close()
    return percentiles(times), queries


def build_requests(
    users: Sequence[str],
    items: Sequence[str],
    queries: Dict[str, str],
    candidates: int,
    with_candidates: bool,
    search_fraction: float,
    count: int,
    seed: int,
) -> List[dict]:
    """`count` request bodies, prebuilt so that the clients time the service, not themselves."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        user = rng.choice(users)
        body = {"user_id": user, "k": 10}
        if with_candidates:
            body["candidates"] = rng.sample(items, min(candidates, len(items)))
        if user in queries and rng.random() < search_fraction:
            body["query"] = queries[user]
        requests.append(body)
    return requests


# ----------------------------------------------------------------------------------- load


def _http_client(target: str, requests: List[dict]):
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    payloads = [json.dumps(r).encode() for r in requests]

    def send(index: int) -> Optional[str]:
        status, body = _http(
            target, "POST", "/v1/rank", payloads[index % len(payloads)], connection
        )
        return None if status == 200 else f"{status} {body.get('error')}"

    return send, connection.close


def _grpc_client(target: str, requests: List[dict]):
    import grpc

    from serving.protos import ranking_service_pb2 as pb
    from serving.protos import ranking_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(target)
    stub = pb_grpc.RankingServiceStub(channel)
    protos = [pb.RankRequest(**r) for r in requests]

    def send(index: int) -> Optional[str]:
        try:
            stub.Rank(protos[index % len(protos)], timeout=30)
            return None
        except grpc.RpcError as e:
            return e.code().name

    return send, channel.close


def load_run(
    transport: str, target: str, requests: List[dict], clients: int, seconds: float
) -> dict:
    """`clients` threads sending back to back for `seconds`; latency of each success."""
    make_client = _http_client if transport == "http" else _grpc_client
    times: List[List[float]] = [[] for _ in range(clients)]
    errors: List[List[str]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def run(index: int) -> None:
        send, close = make_client(target, requests)
        try:
            send(index)  # connect before the clock starts
            barrier.wait()
            position = index
            while time.perf_counter() < stop_at[0]:
                start = time.perf_counter()
                try:
                    error = send(position)
                except (OSError, http.client.HTTPException) as e:
                    error = type(e).__name__
                    send, close = make_client(target, requests)
                if error is None:
                    times[index].append((time.perf_counter() - start) * 1000)
                else:
                    errors[index].append(error)
                position += clients
        finally:
            close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 1e9
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_times = [t for ts in times for t in ts]
    all_errors = [e for es in errors for e in es]
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(all_times),
        "requests_per_second": len(all_times) / elapsed,
        "errors": len(all_errors),
        "error_kinds": sorted(set(all_errors)),
        **percentiles(all_times),
    }


# ---------------------------------------------------------------------------------- table


def markdown(result: dict) -> str:
    lines = [
        "| run | clients | s | requests | requests/s | p50 ms | p99 ms | errors | "
        "service RSS MB start / max / end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        if "skipped" in run:
            lines.append(f"| {name} | | | | | | | skipped: {run['skipped']} | |")
            continue
        memory = run["memory"]
        errors = f"{run['errors']} {' '.join(run['error_kinds'])}".strip()
        lines.append(
            f"| {name} | {run['clients']} | {run['seconds']:.0f} | {run['requests']} | "
            f"{run['requests_per_second']:.0f} | {run['p50']:.2f} | {run['p99']:.2f} | "
            f"{errors} | {memory['start_mb']:.0f} / {memory['max_mb']:.0f} / "
            f"{memory['end_mb']:.0f} |"
        )
    store = result["store_read"]
    lines += [
        "",
        f"History store read (`events(user)`, in-process, {store['n']} users): "
        f"p50 {store['p50']:.3f} ms, p99 {store['p99']:.3f} ms.",
        f"Machine: {os.cpu_count()} CPUs, load average before the runs "
        f"{result['load_average'][0]:.2f}; {result['candidates']} candidates per "
        f"`given` request; model version {result['model_version']}.",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="history store URL the service reads")
    parser.add_argument(
        "--model_base_path",
        required=True,
        help="<serving_dir>/unisar: the served version's items.txt is read",
    )
    parser.add_argument("--users", help="file with one user id per line")
    parser.add_argument(
        "--users_from_sequences", help="Amazon sequences file: the first token of each line"
    )
    parser.add_argument(
        "--max_users",
        type=int,
        default=5000,
        help="users sampled for requests and the store measurement",
    )
    parser.add_argument(
        "--model_server",
        help="TF Serving host:port (default: start the " "stand-in on --model_base_path)",
    )
    parser.add_argument(
        "--service_http", help="a running service's HTTP host:port " "(default: start one)"
    )
    parser.add_argument("--service_grpc", help="a running service's gRPC host:port")
    parser.add_argument(
        "--service_pid", type=int, help="the running service's process id, for its memory"
    )
    parser.add_argument(
        "--service_args",
        default="",
        help="extra flags for the started service, e.g. '--deadline_ms 500'",
    )
    parser.add_argument(
        "--runs",
        default="http:given,http:retrieved,grpc:given",
        help=f"comma-separated runs out of {','.join(RUNS)}",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds of load before the first run, not counted",
    )
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--search_fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(runs) - set(RUNS)
    if unknown:
        parser.error(f"--runs: unknown {sorted(unknown)}; choose from {list(RUNS)}")
    if bool(args.service_http) != bool(args.service_pid):
        parser.error("--service_http and --service_pid go together")

    from serving.ranking_service import load_served_model

    users = read_users(args.users, args.users_from_sequences)
    random.Random(args.seed).shuffle(users)
    users = users[: args.max_users]
    processes = []
    try:
        http_target, grpc_target, pid = args.service_http, args.service_grpc, args.service_pid
        if not http_target:
            model_server = args.model_server
            if not model_server:
                process, line = start_process(
                    [
                        sys.executable,
                        "-m",
                        "serving.server",
                        "--model_base_path",
                        args.model_base_path,
                        "--port",
                        "0",
                    ],
                    " at ",
                )
                processes.append(process)
                model_server = line.rsplit(" at ", 1)[1]
            process, line = start_process(
                [
                    sys.executable,
                    "-m",
                    "serving.ranking_service",
                    "--store",
                    args.store,
                    "--model_server",
                    model_server,
                    "--model_base_path",
                    args.model_base_path,
                    "--http_port",
                    "0",
                    "--grpc_port",
                    "0",
                    "--log_level",
                    "WARNING",
                ]
                + args.service_args.split(),
                "ranking service:",
            )
            processes.append(process)
            words = line.split()
            http_target, grpc_target = (
                words[words.index("http") + 1],
                words[words.index("grpc") + 1],
            )
            pid = process.pid
        ready = wait_ready(http_target)
        model = load_served_model(
            args.model_base_path, ready["model_version"], retriever_loader=lambda export_dir: None
        )
        items = sorted(model.items)
        store_read, queries = measure_store(args.store, users)
        result = {
            "model_version": ready["model_version"],
            "candidates": args.candidates,
            "users": len(users),
            "store_read": store_read,
            "load_average": os.getloadavg(),
            "runs": {},
        }
        has_retrieval = ready["checks"].get("retrieval") == "ok"
        sampler = MemorySampler(pid).start()
        try:
            warmed = False
            for index, run_name in enumerate(runs):
                transport, mode = run_name.split(":")
                run = run_name if run_name not in result["runs"] else f"{run_name} #{index + 1}"
                target = http_target if transport == "http" else grpc_target
                if mode == "retrieved" and not has_retrieval:
                    result["runs"][run] = {
                        "skipped": "no retrieval index " f"({ready['checks'].get('retrieval')})"
                    }
                    continue
                if not target:
                    result["runs"][run] = {"skipped": f"no {transport} address"}
                    continue
                requests = build_requests(
                    users,
                    items,
                    queries,
                    args.candidates,
                    mode == "given",
                    args.search_fraction,
                    count=2000,
                    seed=args.seed + index,
                )
                if not warmed and args.warmup > 0:
                    load_run(transport, target, requests, args.clients, args.warmup)
                    warmed = True
                start = time.monotonic()
                outcome = load_run(transport, target, requests, args.clients, args.duration)
                time.sleep(min(sampler.interval, 1.0))  # one sample after the run
                outcome["memory"] = sampler.between(start, time.monotonic())
                result["runs"][run] = outcome
        finally:
            sampler.stop()
    finally:
        for process in processes[::-1]:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == "__main__":
    main()
