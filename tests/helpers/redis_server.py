"""A real redis-server for tests: started on 127.0.0.1 at a free port, stopped after.

The session fixture `redis_url` (tests/serving/conftest.py) uses it; a test that needs a
server of its own (to stop it) calls start_redis_server itself.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENSURE_REDIS = os.path.join(REPO, "tools", "ensure-redis-server")
START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        subprocess.run([ENSURE_REDIS], check=True)
        binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server is not on PATH after {ENSURE_REDIS}")
    return binary


def start_redis_server(folder):
    """(process, "redis://127.0.0.1:<port>/0"): a redis-server without persistence on a free
    port of 127.0.0.1, answering PING; the caller stops it (stop_redis_server)."""
    import redis

    port = free_port()
    log_path = folder / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {process.returncode}: "
                    f"{log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                if client.ping():
                    return process, f"redis://127.0.0.1:{port}/0"
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    stop_redis_server(process)
                    pytest.fail(
                        f"redis-server on port {port} did not answer PING within "
                        f"{START_TIMEOUT_S:.0f} s"
                    )
                time.sleep(0.05)
    finally:
        client.close()


def stop_redis_server(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
