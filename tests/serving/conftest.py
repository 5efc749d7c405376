"""Fixtures of the serving tests: a real redis-server for the history store's Redis backend.

`redis_url` starts `redis-server` from PATH (installed from the distribution's packages by
tools/ensure-redis-server when missing, as `make test` does first) on 127.0.0.1 at a free
port, without persistence, once per session, and stops it at the end. No mock: the Redis
tests talk to the server.
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """"redis://127.0.0.1:<port>/0" of a redis-server this session started (and stops)."""
    import redis

    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = open(folder / "redis.log", "wb")
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", str(folder)],
        stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1,
                         socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}: "
                            f"{(folder / 'redis.log').read_text(errors='replace')[-2000:]}")
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer PING within "
                                f"{START_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
