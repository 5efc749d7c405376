"""Training under tf.distribute: strategy choice, how a global batch is split, and real
workers: two trainer processes on loopback ports with TF_CONFIG.

The worker tests run `python -m unisar_tf.train` as separate processes (a multi-worker
strategy must be made before a process runs any op, so not inside pytest's process).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from helpers.model import TINY_FLAGS

from unisar_tf.config import amazon_preset
from unisar_tf.train.distribution import (
    cluster_tasks,
    local_cluster,
    replica_rows,
    resolve_strategy_name,
    split_for_replicas,
    worker_role,
)
from unisar_tf.train.inputs import epoch_steps, search_batch_size


def tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


# ------------------------------------------------------------------------- choosing
@pytest.mark.parametrize(
    "name,config,gpus,expected",
    [
        ("auto", "", 0, "default"),
        ("auto", "", 1, "default"),
        ("auto", "", 2, "mirrored"),
        ("auto", tf_config([1, 2], 0), 0, "multi_worker"),
        (
            "auto",
            json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}),
            4,
            "mirrored",
        ),
        ("default", tf_config([1, 2], 1), 2, "default"),
        ("multi_worker", "", 0, "multi_worker"),
    ],
)
def test_auto_reads_tf_config_and_the_gpus(name, config, gpus, expected):
    assert resolve_strategy_name(name, config, gpus) == expected


def test_bad_names_and_bad_tf_config_are_errors_that_say_so():
    with pytest.raises(ValueError, match="distribution must be one of"):
        resolve_strategy_name("parameter_server", "", 0)
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        cluster_tasks("{not json")
    assert cluster_tasks(json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}})) == 3


def test_a_local_cluster_names_distinct_loopback_ports_and_each_index():
    configs = [json.loads(text) for text in local_cluster(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == workers for c in configs)
    assert resolve_strategy_name("auto", local_cluster(2)[1], 0) == "multi_worker"


def test_one_device_is_the_chief_of_one_worker():
    role = worker_role(tf.distribute.get_strategy())
    assert (role.is_chief, role.index, role.count) == (True, 0, 1)


# ------------------------------------------------------------------- the global batch
def test_replica_rows_are_consecutive_blocks_of_the_global_batch():
    batch = tf.reshape(tf.range(24), (8, 3))  # 8 rows
    # 4 replicas of 2 rows; this worker holds replicas 2 and 3.
    blocks = replica_rows(batch, replicas=4, first=2, count=2).numpy()
    assert blocks.shape == (2, 2, 3)
    assert blocks.tolist() == [[[12, 13, 14], [15, 16, 17]], [[18, 19, 20], [21, 22, 23]]]


def test_every_replica_gets_its_rows_of_each_task_and_all_the_shared_negatives():
    batch = {
        "rec": {"x": tf.range(8)},
        "search": {"x": tf.range(100, 104)},
        "rel_negatives": {"items": tf.constant([7, 8, 9])},
    }
    # 2 workers x 2 replicas; worker 1 holds replicas 2 and 3.
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4
    )
    split = split_for_replicas(batch, context)
    assert split["rec"]["x"].numpy().tolist() == [[4, 5], [6, 7]]
    assert split["search"]["x"].numpy().tolist() == [[102], [103]]
    assert split["rel_negatives"]["items"].numpy().tolist() == [[7, 8, 9], [7, 8, 9]]
    per_replica = list(tf.data.Dataset.from_tensors(split).unbatch())
    assert [r["rec"]["x"].numpy().tolist() for r in per_replica] == [[4, 5], [6, 7]]


def test_several_replicas_get_whole_batches_that_split_evenly():
    # 1,000 rec and 990 search examples, global batch 100: 10 + 1 rec steps assumed.
    assert search_batch_size(1000, 990, 100) == 91
    assert search_batch_size(1000, 990, 100, replicas=2) == 92
    assert search_batch_size(1000, 990, 100, replicas=4) == 92
    config = amazon_preset(batch_size=100)
    assert epoch_steps(config, {"rec": 1050, "search": 990}) == 11  # the last one short
    assert epoch_steps(config, {"rec": 1050, "search": 990}, replicas=2) == 10
    assert epoch_steps(config, {"rec": 60, "search": 990}, replicas=2) == 1


# ---------------------------------------------------------------------- real workers
def even_search_batch(manifest):
    """A global rec batch whose search batch is even, so 2 workers split both tasks exactly
    as one process batches them (the comparison below needs the same batches)."""
    counts = manifest["examples"]["train"]
    for size in (16, 8, 32, 24, 12):
        if search_batch_size(counts["rec"], counts["search"], size) % 2 == 0:
            return size
    raise AssertionError(f"no batch size gives an even search batch for {counts}")


def train_command(out, model_dir, batch_size, max_epochs, distribution):
    # What is defined per replica is off: dropout masks, the alignment loss (its in-batch
    # negatives) and the relevance loss (a mean over each replica's own history pairs); L2 is
    # off too, so the rows each replica trains on are what is compared. The paper preset.
    return (
        [
            sys.executable,
            "-m",
            "unisar_tf.train",
            "--data_dir",
            out,
            "--model_dir",
            model_dir,
            "--preset",
            "paper",
            "--max_epochs",
            str(max_epochs),
            "--steps_per_epoch",
            "2",
            "--quiet",
            "--skip_test",
            "--sasrec_baseline",
            "false",
            "--distribution",
            distribution,
        ]
        + TINY_FLAGS
        + [
            "--batch_size",
            str(batch_size),
            "--dropout",
            "0",
            "--beta_alignment",
            "0",
            "--alpha_relevance",
            "0",
            "--l2_weight",
            "0",
        ]
    )


def start_workers(out, model_dir, batch_size, max_epochs, log_dir):
    processes = []
    for index, config in enumerate(local_cluster(2)):
        env = dict(os.environ, TF_CONFIG=config, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        log = open(os.path.join(log_dir, f"worker-{index}.log"), "w")
        processes.append(
            subprocess.Popen(
                train_command(out, model_dir, batch_size, max_epochs, "multi_worker"),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def wait_all(processes, timeout):
    deadline = time.time() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    return codes


def model_weights(checkpoint):
    """{name: value} of the model's weights in a checkpoint (optimizer slots and the loss
    trackers, which are metrics, left out)."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(checkpoint)
        if name.startswith("model/")
        and "OPTIMIZER_SLOT" not in name
        and "loss_trackers" not in name
    }


def log_text(log_dir, index):
    with open(os.path.join(log_dir, f"worker-{index}.log")) as handle:
        return handle.read()


@pytest.fixture(scope="module")
def two_workers_and_one(amazon_examples, tmp_path_factory):
    """The same 2 steps on 2 workers and in 1 process: (run dirs, log dir, return codes)."""
    out, manifest = amazon_examples
    root = tmp_path_factory.mktemp("distributed")
    batch_size = even_search_batch(manifest)
    single = str(root / "single")
    done = subprocess.run(
        train_command(out, single, batch_size, 1, "default"),
        cwd=REPO,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    workers = str(root / "workers")
    codes = wait_all(start_workers(out, workers, batch_size, 1, str(root)), timeout=600)
    return {"single": single, "workers": workers, "logs": str(root), "codes": codes}


@pytest.mark.slow
def test_two_workers_finish_and_the_chief_alone_writes_the_run(two_workers_and_one):
    run = two_workers_and_one
    assert run["codes"] == [0, 0], (
        log_text(run["logs"], 0)[-2000:] + log_text(run["logs"], 1)[-2000:]
    )
    assert "MultiWorkerMirroredStrategy: 2 replicas on 2 worker(s); this is worker 0 (chief)" in (
        log_text(run["logs"], 0)
    )
    assert "this is worker 1" in log_text(run["logs"], 1)
    workers = run["workers"]
    with open(os.path.join(workers, "history.jsonl")) as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [1]  # one writer
    assert not os.path.exists(os.path.join(workers, ".workers", "worker-1"))  # cleaned up
    assert sorted(os.listdir(os.path.join(workers, "checkpoints"))) == sorted(
        os.listdir(os.path.join(run["single"], "checkpoints"))
    )


@pytest.mark.slow
def test_two_workers_train_the_weights_one_process_trains_on_the_same_global_batch(
    two_workers_and_one,
):
    run = two_workers_and_one
    assert run["codes"] == [0, 0]
    distributed = model_weights(os.path.join(run["workers"], "checkpoints", "ckpt-1"))
    single = model_weights(os.path.join(run["single"], "checkpoints", "ckpt-1"))
    assert distributed.keys() == single.keys() and len(single) > 10
    initial_gap = 0.0
    for name, value in single.items():
        # Float sums in another order only: 2 Adam steps of 1e-3 move weights by ~2e-3.
        np.testing.assert_allclose(distributed[name], value, rtol=1e-4, atol=2e-6, err_msg=name)
        initial_gap = max(initial_gap, float(np.max(np.abs(value))))
    assert initial_gap > 0
    # Validation (every worker scores the whole split) gives the same numbers.
    with open(os.path.join(run["workers"], "best.json")) as handle:
        distributed_best = json.load(handle)
    with open(os.path.join(run["single"], "best.json")) as handle:
        single_best = json.load(handle)
    assert distributed_best["validation_score"] == pytest.approx(
        single_best["validation_score"], abs=1e-4
    )


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_and_a_rerun_resumes(amazon_examples, tmp_path):
    out, manifest = amazon_examples
    batch_size = even_search_batch(manifest)
    model_dir = str(tmp_path / "run")
    chief, worker = start_workers(out, model_dir, batch_size, 3, str(tmp_path))
    try:
        first = os.path.join(model_dir, "checkpoints", "ckpt-1.index")
        deadline = time.time() + 300
        while not os.path.exists(first):
            assert chief.poll() is None and worker.poll() is None, log_text(tmp_path, 0)[-3000:]
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        code = chief.wait(timeout=300)  # the chief's next all-reduce finds its peer gone
    finally:
        for process in (chief, worker):
            if process.poll() is None:
                process.kill()
    assert code != 0
    chief_log = log_text(tmp_path, 0)
    assert "a worker of the cluster stopped" in chief_log, chief_log[-3000:]

    codes = wait_all(start_workers(out, model_dir, batch_size, 3, str(tmp_path)), timeout=600)
    assert codes == [0, 0], log_text(tmp_path, 0)[-3000:]
    resumed = log_text(tmp_path, 0)
    assert "resumed from" in resumed and "epoch 1 done" in resumed
    with open(os.path.join(model_dir, "history.jsonl")) as handle:
        epochs = [json.loads(line)["epoch"] for line in handle]
    assert epochs[0] == 1 and epochs[-1] == 3 and len(epochs) == len(set(epochs))
