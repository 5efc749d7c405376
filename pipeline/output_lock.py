"""One data job at a time per `--output`: an OS lock on `<output>.lock`, beside the folder.

    with locked_output("out/mine"):      # OutputLocked at once if another job holds it
        ...build, stage and publish...

Two jobs into one folder used to both report success, the last one's files winning (issue 23).
The lock is unisar_tf.file_lock's flock on the file `<output>.lock` in the output's parent
folder (released by the kernel when the holder ends, naming its holder). It is not re-entrant:
two jobs in one process exclude each other too. The file is deleted on a normal release.
Outputs on object stores (gs://, s3://, ...) have no OS lock: they are not locked (said in the
log).

Only the standard library: a test's subprocess imports this module without Beam.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

from unisar_tf import file_lock

LOG = logging.getLogger(__name__)
LOCK_SUFFIX = ".lock"


class OutputLocked(RuntimeError):
    """Another process holds the output's lock; the message names the folder and holder."""

    def __init__(self, output_dir: str, lock_path: str, holder: Optional[dict]):
        super().__init__(
            f"{output_dir} is being written by another data job "
            f"({file_lock.describe_holder(holder)}); its lock is {lock_path}. Nothing was "
            "written. Wait for that job to end or use another --output (the lock is released "
            "when its process ends)."
        )
        self.output_dir = output_dir
        self.lock_path = lock_path
        self.holder = holder


def lock_path(output_dir: str) -> str:
    """<output_dir>.lock, next to the folder (the folder itself may not exist yet)."""
    return os.path.abspath(output_dir.removeprefix("file://")).rstrip("/") + LOCK_SUFFIX


def is_lockable(output_dir: str) -> bool:
    """A local path (an OS lock is possible), not an object store URL."""
    return file_lock.is_local(output_dir)


def acquire(output_dir: str) -> file_lock.FileLock:
    """Locks output_dir (see the module docstring): the held lock, to be given to release().
    OutputLocked at once when another holder has it."""
    lock = file_lock.FileLock(
        lock_path(output_dir),
        delete_on_release=True,
        details={"output": os.path.abspath(output_dir)},
    )
    try:
        return lock.acquire()
    except file_lock.LockHeld as held:
        raise OutputLocked(output_dir, held.path, held.holder) from None


def release(output_dir: str, lock: file_lock.FileLock) -> None:
    """Deletes the lock file and releases the lock."""
    del output_dir  # the lock knows its path; kept for symmetry with acquire()
    lock.release()


@contextlib.contextmanager
def locked_output(output_dir: str) -> Iterator[Optional[str]]:
    """Holds output_dir's lock for the block; yields the lock file's path (None when the
    output is on an object store, which is not locked)."""
    if not is_lockable(output_dir):
        LOG.info("%s is not a local path: it is not locked against a second job", output_dir)
        yield None
        return
    lock = acquire(output_dir)
    try:
        yield lock.path
    finally:
        lock.release()
