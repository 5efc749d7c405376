"""One trainer per run directory: an OS lock on model_dir/run.lock.

    with RunDirLock(model_dir):        # RunDirLockedError if another process trains there
        ...

The lock is fcntl.flock on `<model_dir>/run.lock`, so the operating system releases it when
the holding process ends, however it ends (a crash or kill -9 leaves no stale lock). The file
holds the holder's pid, host, start time and command line, for the message a second trainer
gets. Within one process the lock is shared (re-entrant): the Trainer, the command line around
it and a later Trainer on the same directory in the same process do not exclude each other.

Local file systems only (and NFS where flock is forwarded to the server); a model_dir on a
remote store (gs://, s3://, hdfs://) is not locked. No TensorFlow here.
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
from typing import Dict, Optional

LOCK_FILE = "run.lock"


class RunDirLockedError(RuntimeError):
    """Another process holds the run directory's lock; the message names it (pid, host)."""


# realpath of a held lock file -> [file descriptor, holders in this process]
_HELD: Dict[str, list] = {}
_GUARD = threading.Lock()


def is_local(path: str) -> bool:
    return "://" not in path


def read_holder(model_dir: str) -> Optional[dict]:
    """What the lock file says about its (last) holder, or None."""
    try:
        with open(os.path.join(model_dir, LOCK_FILE)) as handle:
            return json.loads(handle.read() or "null")
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another process (it has not written its pid yet)"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


class RunDirLock:
    """A handle on model_dir's lock: acquire() (idempotent per handle), release()."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.held = False

    def acquire(self) -> "RunDirLock":
        if self.held or not is_local(self.model_dir):
            return self
        os.makedirs(self.model_dir, exist_ok=True)
        key = os.path.realpath(self.path)
        with _GUARD:
            if key in _HELD:  # this process holds it already
                _HELD[key][1] += 1
                self.held = True
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunDirLockedError(
                    f"{self.model_dir} is in use by another trainer "
                    f"({_describe(read_holder(self.model_dir))}); "
                    "two trainers on one run directory would each train and record every "
                    "epoch. Wait for it to finish (or stop it: its lock, "
                    f"{self.path}, goes with the process), or train into another --model_dir."
                ) from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.datetime.now().astimezone().isoformat(
                          timespec="seconds"),
                      "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
            _HELD[key] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = os.path.realpath(self.path)
        with _GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def main(argv=None) -> None:
    """python -m unisar_tf.train.run_lock MODEL_DIR: holds the lock until stdin closes (tests,
    or keeping trainers off a directory by hand)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        with RunDirLock(args[0]):
            print("locked", flush=True)
            sys.stdin.read()
    except RunDirLockedError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
