"""Fixtures of the serving tests: a real redis-server for the history store's Redis backend.

`redis_url` starts `redis-server` from PATH (installed from the distribution's packages by
tools/ensure-redis-server when missing, as `make test` does first) on 127.0.0.1 at a free
port, without persistence, once per session, and stops it at the end. No mock: the Redis
tests talk to the server.
"""
import pytest

from helpers.redis_server import start_redis_server, stop_redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """"redis://127.0.0.1:<port>/0" of a redis-server this session started (and stops)."""
    process, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis_server(process)
