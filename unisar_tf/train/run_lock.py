"""One trainer per run directory: an OS lock on model_dir/run.lock.

    with RunDirLock(model_dir):        # RunDirLockedError if another process trains there
        ...

The lock is unisar_tf.file_lock's flock on `<model_dir>/run.lock` (released by the kernel
when the holder ends, however it ends; the file names its holder for the message a second
trainer gets). Within one process it is re-entrant: the Trainer, the command line around it
and a later Trainer on the same directory in the same process do not exclude each other.

Local file systems only (and NFS where flock is forwarded to the server); a model_dir on a
remote store (gs://, s3://, hdfs://) is not locked. No TensorFlow here.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from unisar_tf import file_lock

LOCK_FILE = "run.lock"


class RunDirLockedError(RuntimeError):
    """Another process holds the run directory's lock; the message names it (pid, host)."""


def read_holder(model_dir: str) -> Optional[dict]:
    """What the lock file says about its (last) holder, or None."""
    return file_lock.read_holder(os.path.join(model_dir, LOCK_FILE))


class RunDirLock:
    """A handle on model_dir's lock: acquire() (idempotent per handle), release()."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._lock = (
            file_lock.FileLock(self.path, reentrant=True) if file_lock.is_local(model_dir) else None
        )

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.held

    def acquire(self) -> "RunDirLock":
        if self._lock is None:
            return self
        try:
            self._lock.acquire()
        except file_lock.LockHeld as held:
            raise RunDirLockedError(
                f"{self.model_dir} is in use by another trainer "
                f"({file_lock.describe_holder(held.holder)}); "
                "two trainers on one run directory would each train and record every "
                "epoch. Wait for it to finish (or stop it: its lock, "
                f"{self.path}, goes with the process), or train into another --model_dir."
            ) from None
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
