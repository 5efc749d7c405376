"""One data job per --output (issue 23 item 5): two jobs into one folder both reported success
and the last one won. pipeline/output_lock.py locks <output>.lock with flock; these tests hold
it from another process and from this one. No Beam pipeline runs: a locked job must stop
before it builds one."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from pipeline import beam_job, output_lock
from pipeline import sequence_builder as sb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = (
    "import sys, time\n"
    "from pipeline import output_lock\n"
    "held = output_lock.acquire(sys.argv[1])  # released when collected\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture()
def holder(tmp_path):
    """A process holding the lock of tmp_path/out: (output_dir, Popen)."""
    output_dir = str(tmp_path / "out")
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, output_dir], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "locked"
        yield output_dir, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def test_a_second_job_fails_at_once_naming_the_folder_and_the_holder(holder):
    output_dir, process = holder
    calls = []

    def adapter(pipeline):  # never reached: the lock comes first
        calls.append(pipeline)
        raise AssertionError("the locked job read its inputs")

    with pytest.raises(output_lock.OutputLocked) as raised:
        beam_job.run(
            adapter,
            sb.BuildOptions(),
            output_dir,
            dataset="event_log",
            inputs={},
            beam_args=["--runner=DirectRunner"],
        )
    message = str(raised.value)
    assert output_dir in message and output_lock.lock_path(output_dir) in message
    assert f"pid {process.pid} on host {socket.gethostname()}" in message
    assert raised.value.holder["output"] == output_dir
    assert calls == [] and not os.path.exists(output_dir)
    assert not [
        name for name in os.listdir(os.path.dirname(output_dir)) if beam_job.STAGING_INFIX in name
    ]
    assert process.poll() is None  # the holder still runs, still holding


def test_the_lock_is_released_when_its_process_dies(holder):
    output_dir, process = holder
    with pytest.raises(output_lock.OutputLocked):
        output_lock.acquire(output_dir)
    process.send_signal(signal.SIGKILL)  # no clean-up: the file stays, the lock does not
    process.wait()
    assert os.path.exists(output_lock.lock_path(output_dir))
    with output_lock.locked_output(output_dir) as path:
        assert path == output_lock.lock_path(output_dir)
        with open(path) as handle:
            assert f'"pid": {os.getpid()}' in handle.read()  # the stale record replaced
    assert not os.path.exists(path)  # a normal release deletes the file


def test_two_holders_in_one_process_exclude_each_other_too(tmp_path):
    """flock locks belong to the open file, so a second open in the same process is refused
    as well (a driver starting two jobs in threads)."""
    output_dir = str(tmp_path / "nested" / "out")  # the parent is created
    fd = output_lock.acquire(output_dir)
    try:
        with pytest.raises(output_lock.OutputLocked, match=f"pid {os.getpid()} "):
            output_lock.acquire(output_dir + "/")  # the same folder, spelled differently
    finally:
        output_lock.release(output_dir, fd)
    output_lock.release(output_dir, output_lock.acquire(output_dir))  # free again


def test_object_store_outputs_are_not_locked():
    with output_lock.locked_output("gs://bucket/out") as path:
        assert path is None
