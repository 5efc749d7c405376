"""One data job at a time per `--output`: an OS lock on `<output>.lock`, beside the folder.

    with locked_output("out/mine"):      # OutputLocked at once if another job holds it
        ...build, stage and publish...

Two jobs into one folder used to both report success, the last one's files winning (issue 23).
The lock is `fcntl.flock` on the file `<output>.lock` in the output's parent folder: the kernel
releases it when the holding process ends, however it ends (a crash or kill -9 leaves no stale
lock, at most a stale file, which is not a lock). The holder writes its pid, host, start time
and command into the file, so a refused job can say who holds it. The file is deleted on a
normal release. Outputs on object stores (gs://, s3://, ...) have no OS lock: they are not
locked (said in the log).

Only the standard library: a test's subprocess imports this module without Beam.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Iterator, Optional

LOG = logging.getLogger(__name__)
LOCK_SUFFIX = ".lock"
_ATTEMPTS = 20


class OutputLocked(RuntimeError):
    """Another process holds the output's lock; the message names the folder and holder."""

    def __init__(self, output_dir: str, lock_path: str, holder: Optional[dict]):
        if holder:
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
                   f"{holder.get('started')}: {holder.get('command', '')}".rstrip(": "))
        else:
            who = "a process that has not written its name yet"
        super().__init__(
            f"{output_dir} is being written by another data job ({who}); its lock is "
            f"{lock_path}. Nothing was written. Wait for that job to end or use another "
            "--output (the lock is released when its process ends).")
        self.output_dir = output_dir
        self.lock_path = lock_path
        self.holder = holder


def lock_path(output_dir: str) -> str:
    """<output_dir>.lock, next to the folder (the folder itself may not exist yet)."""
    return os.path.abspath(output_dir).rstrip("/") + LOCK_SUFFIX


def is_lockable(output_dir: str) -> bool:
    """A local path (an OS lock is possible), not an object store URL."""
    return "://" not in output_dir or output_dir.startswith("file://")


def _holder_record(output_dir: str) -> bytes:
    return json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output": os.path.abspath(output_dir), "command": " ".join(sys.argv)[:500],
    }).encode("utf-8")


def _read_holder(fd: int) -> Optional[dict]:
    try:
        data = os.pread(fd, 65_536, 0)
        return json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None


def acquire(output_dir: str) -> int:
    """Locks output_dir (see the module docstring): the lock file's descriptor, to be given to
    release(). OutputLocked at once when another process holds it."""
    if output_dir.startswith("file://"):
        output_dir = output_dir[len("file://"):]
    path = lock_path(output_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLocked(output_dir, path, holder) from None
            raise
        # A holder that was releasing may have deleted the file after we opened it: then
        # we hold a lock on a file nobody else can find; open the file at `path` again.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_record(output_dir), 0)
            return fd
        os.close(fd)
    raise RuntimeError(f"could not lock {path}: it kept being replaced")


def release(output_dir: str, fd: int) -> None:
    """Deletes the lock file (still holding the lock, so no other process can be holding
    this file) and releases the lock."""
    if output_dir.startswith("file://"):
        output_dir = output_dir[len("file://"):]
    try:
        os.unlink(lock_path(output_dir))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_output(output_dir: str) -> Iterator[Optional[str]]:
    """Holds output_dir's lock for the block; yields the lock file's path (None when the
    output is on an object store, which is not locked)."""
    if not is_lockable(output_dir):
        LOG.info("%s is not a local path: it is not locked against a second job", output_dir)
        yield None
        return
    fd = acquire(output_dir)
    try:
        yield lock_path(output_dir.removeprefix("file://"))
    finally:
        release(output_dir, fd)
