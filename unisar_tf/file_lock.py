"""An exclusive OS lock on a file, naming its holder: the one lock behind the data job's
`--output` lock (pipeline/output_lock.py) and the Trainer's run-directory lock
(unisar_tf/train/run_lock.py).

    lock = FileLock("out/x.lock", delete_on_release=True)
    with lock:          # LockHeld at once if another process holds it
        ...

The lock is `fcntl.flock`, so the kernel releases it when the holding process ends, however
it ends (a crash or kill -9 leaves no stale lock, at most a stale file, which is not a lock).
The holder writes its pid, host, start time and command line into the file, so a refused
process can say who holds it. A re-entrant lock (reentrant=True) is shared within one process:
every such FileLock on the same path shares one descriptor and a count. Otherwise a second
holder in the same process is refused like another process (flock belongs to the open file).

Local file systems only (and NFS where flock is forwarded to the server). Standard library
only: subprocesses in tests import it without TensorFlow or Beam.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from typing import Dict, List, Optional

# A releasing holder may delete the file between our open and our flock; retry this often.
_OPEN_ATTEMPTS = 20

# realpath of a held lock file -> [descriptor, holders in this process]
_HELD: Dict[str, List[int]] = {}
_GUARD = threading.Lock()


class LockHeld(RuntimeError):
    """Another process holds the lock at `path`; `holder` is what it wrote (or None)."""

    def __init__(self, path: str, holder: Optional[dict]):
        super().__init__(f"{path} is locked by {describe_holder(holder)}")
        self.path = path
        self.holder = holder


def is_local(path: str) -> bool:
    """A path an OS lock can cover (not gs://, s3://, hdfs://; file:// is local)."""
    return "://" not in path or path.startswith("file://")


def describe_holder(holder: Optional[dict]) -> str:
    """'pid 12 on host h, since <time>: <command>' for messages."""
    if not holder:
        return "another process (it has not written its pid yet)"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


def read_holder(path: str) -> Optional[dict]:
    """What the lock file at `path` says about its (last) holder, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.loads(handle.read() or "null")
    except (OSError, ValueError):
        return None


def _holder_record(details: Optional[dict]) -> bytes:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
            **(details or {}),
        }
    ).encode("utf-8")


def _lock_new_descriptor(path: str, details: Optional[dict]) -> int:
    for _ in range(_OPEN_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(path, read_holder(path)) from None
            raise
        # Locked a file a releasing holder has just deleted? Then nobody else can find it:
        # open the file at `path` again.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_record(details), 0)
            return fd
        os.close(fd)
    raise RuntimeError(f"could not lock {path}: it kept being replaced")


class FileLock:
    """A handle on the lock at `path`: acquire() (idempotent per handle), release().

    reentrant: other FileLocks on this path in this process share the hold (see above).
    delete_on_release: remove the file when the last holder releases (done while still
    holding the lock, so no other process can be holding that file).
    details: more fields for the holder record (e.g. what is being written)."""

    def __init__(
        self,
        path: str,
        *,
        reentrant: bool = False,
        delete_on_release: bool = False,
        details: Optional[dict] = None,
    ):
        self.path = path.removeprefix("file://")
        self.details = details
        self.reentrant = reentrant
        self.delete_on_release = delete_on_release
        self.held = False
        self._own_fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        if self.held:
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if not self.reentrant:
            self._own_fd = _lock_new_descriptor(self.path, self.details)
        else:
            key = os.path.realpath(self.path)
            with _GUARD:
                if key in _HELD:
                    _HELD[key][1] += 1
                else:
                    _HELD[key] = [_lock_new_descriptor(self.path, self.details), 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if not self.reentrant:
            fd, self._own_fd = self._own_fd, None
            self._close(fd)
            return
        key = os.path.realpath(self.path)
        with _GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                self._close(entry[0])

    def _close(self, fd: int) -> None:
        try:
            if self.delete_on_release:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass
