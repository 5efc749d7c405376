"""Online/offline parity: the online path builds, for every test user, the data job's example.

    python -m serving.parity --examples_dir DIR --model_base_path out/serving/unisar \\
        amazon --sequences ../shared/data/amazon_beauty/Beauty.txt \\
               --attributes ../shared/data/amazon_beauty/Beauty_item2attributes.json

For each task (rec, search) and each user with a test example of that task:
1. the user's events that come before the test target (the data job's own events: the same
   adapter over the same raw log) are written to a history store and read back;
2. the online request is assembled from what the store returns (serving/online_features.py),
   with the example's candidate list and, for search, the target session's query text;
3. its features must equal the data job's test example for that user (every history feature,
   the user, the candidates, the query), and the scores TF Serving (here the stand-in, over
   gRPC, through the `recommend`/`search` signatures) returns for the assembled inputs must
   equal the offline evaluator's scores of that example (`saved_model_scores`: the model's
   `serving_default` on the data job's serialized example).

The test target is the rules' leave-one-out one: per user and scenario, the last rec click and
the last search session with a click. The data job must have been run with split="loo" and
strict_holdout off (the main job's settings). Prints one row per task and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from feature_specs import example_schema as fs
from feature_specs.event_schema import SCENARIO_REC, SCENARIO_SEARCH, Event

TASKS = ("rec", "search")
COMPARED_FEATURES = (
    fs.USER_ID,
    fs.HISTORY_TYPES,
    fs.REC_HISTORY_ITEMS,
    fs.SEARCH_HISTORY_QUERY_TOKENS,
    fs.SEARCH_HISTORY_CLICKED_ITEMS,
    fs.CANDIDATE_ITEMS,
)
SCORE_TOLERANCE = 1e-5  # float32 click probabilities; the two paths batch differently


@dataclasses.dataclass
class TaskParity:
    task: str
    users: int = 0
    feature_mismatches: int = 0
    score_mismatches: int = 0
    max_score_difference: float = 0.0
    examples: List[dict] = dataclasses.field(default_factory=list)  # the first mismatches

    def row(self) -> str:
        return (
            f"| {self.task} | {self.users} | {self.feature_mismatches} | "
            f"{self.score_mismatches} | {self.max_score_difference:.2e} |"
        )


def loo_target_keys(events: Sequence[Event]) -> Dict[str, Tuple]:
    """{task: the sort key of the user's test target}: the last rec click, and the first row
    of the last search session with a click (the rules' leave-one-out targets)."""
    keys = {}
    rec = [e.sort_key() for e in events if e.scenario == SCENARIO_REC and e.click > 0]
    if rec:
        keys["rec"] = max(rec)
    sessions = collections.defaultdict(list)
    for event in events:
        if event.scenario == SCENARIO_SEARCH:
            sessions[event.search_session_id].append(event)
    clicked = [
        min(e.sort_key() for e in rows)
        for rows in sessions.values()
        if any(e.click > 0 for e in rows)
    ]
    if clicked:
        keys["search"] = max(clicked)
    return keys


def events_before(events: Sequence[Event], key: Tuple) -> List[Event]:
    """The events of the behaviours that come before `key` in the rules' order: rec rows
    before it, and every row of a search session whose first row is before it."""
    first_row = {}
    for event in events:
        if event.scenario == SCENARIO_SEARCH:
            current = first_row.get(event.search_session_id)
            if current is None or event.sort_key() < current:
                first_row[event.search_session_id] = event.sort_key()
    return [
        e
        for e in events
        if (e.sort_key() if e.scenario == SCENARIO_REC else first_row[e.search_session_id]) < key
    ]


def target_query(events: Sequence[Event], key: Tuple) -> str:
    """The query text of the search session whose first row has `key`."""
    first = min(
        (e for e in events if e.scenario == SCENARIO_SEARCH and e.sort_key() == key),
        key=Event.sort_key,
    )
    return " ".join(first.query_tokens)


def read_test_examples(
    examples_dir: str, task: str, vocab: Optional[Dict[str, np.ndarray]]
) -> Tuple[List[bytes], List[Dict[str, np.ndarray]]]:
    """(serialized examples, parsed features with raw string ids) of the test split of
    `task`, in file order (the evaluator's row order). vocab: the data job's vocabularies
    for "ids" examples (None for raw-id ones)."""
    import tensorflow as tf

    from unisar_tf.data import reader

    serialized, parsed = [], []
    for path in reader.example_files(examples_dir, "test", task):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            data = record.numpy()
            example = tf.train.Example.FromString(data)
            features = {}
            for name in (*COMPARED_FEATURES, fs.QUERY_TOKENS):
                if name not in example.features.feature:
                    continue
                feature = example.features.feature[name]
                values = (
                    np.array(list(feature.bytes_list.value), dtype=object)
                    if feature.bytes_list.value
                    else np.array(list(feature.int64_list.value), np.int64)
                )
                kind = fs.ID_FEATURE_VOCABULARIES.get(name)
                if kind and vocab is not None:
                    values = np.array(
                        [s.encode("utf-8") for s in vocab[kind][values]], dtype=object
                    )
                features[name] = values
            serialized.append(data)
            parsed.append(features)
    return serialized, parsed


def differing_features(online: Dict[str, np.ndarray], offline: Dict[str, np.ndarray]) -> List[str]:
    names = [*COMPARED_FEATURES, *([fs.QUERY_TOKENS] if fs.QUERY_TOKENS in offline else [])]
    return [
        name
        for name in names
        if name not in online
        or not np.array_equal(np.asarray(online[name]).reshape(-1), offline[name])
    ]


def stack_inputs(batch: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Signature inputs of single requests -> one batched request, padded per input
    ("" for strings, 0 for numbers; the *_length inputs say what is real)."""
    stacked = {}
    for name in batch[0]:
        arrays = [inputs[name] for inputs in batch]
        shape = [len(arrays)] + [max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim)]
        fill = b"" if arrays[0].dtype == object else 0
        out = np.full(shape, fill, dtype=arrays[0].dtype)
        for row, array in enumerate(arrays):
            out[(row, *(slice(0, n) for n in array.shape[1:]))] = array[0]
        stacked[name] = out
    return stacked


def check_parity(
    events_by_user: Dict[str, List[Event]],
    examples_dir: str,
    export_dir: str,
    model_target: str,
    store_url: str,
    vocab_dir: Optional[str] = None,
    users: Optional[Iterable[str]] = None,
    batch_size: int = 128,
    keep_examples: int = 5,
    offline_scores: Optional[Dict[str, np.ndarray]] = None,
    log=print,
) -> Dict[str, TaskParity]:
    """Runs the check of the module docstring; {task: TaskParity}.

    events_by_user: the data job's events; export_dir: the served version (its
    assets.extra/online tells shapes and items); model_target: the PredictionService
    (host:port) serving that version; store_url: a history store URL with "{task}" in it
    (one store per task, written here); vocab_dir: the data job's vocabularies when the
    examples carry int ids; users: only these users (a sample), default all;
    offline_scores: {task: (N, C)} saved_model_scores of export_dir, when already computed.
    """
    from feature_specs.serving import SCORES_OUTPUT, SIGNATURE_NAMES
    from serving.client import UniSARClient
    from serving.history_store import HistoryCaps, open_store
    from serving.online_features import OnlineFeatureAssembler, read_online_files
    from unisar_tf.data.vocab import read_vocabularies
    from unisar_tf.train.evaluation import saved_model_scores

    tasks, shapes, known_items = read_online_files(export_dir)
    assembler = OnlineFeatureAssembler(shapes, known_items)
    vocab = read_vocabularies(vocab_dir) if vocab_dir else None
    wanted = set(users) if users is not None else None
    caps = HistoryCaps(rec=shapes.rec_len, search_sessions=shapes.search_len)
    client = UniSARClient(model_target, timeout_seconds=60.0)
    tasks = [t for t in TASKS if t in tasks]
    if offline_scores is None:
        offline_scores = saved_model_scores(export_dir, examples_dir, "test", tasks)
    results = {}
    for task in tasks:
        result = results[task] = TaskParity(task)
        _, examples = read_test_examples(examples_dir, task, vocab)
        rows = [
            row
            for row, ex in enumerate(examples)
            if wanted is None or ex[fs.USER_ID][0].decode() in wanted
        ]
        target_key = {}  # user -> the sort key of their test target of this task
        for row in rows:
            user = examples[row][fs.USER_ID][0].decode()
            target_key[user] = loo_target_keys(events_by_user[user])[task]
        store = open_store(store_url.format(task=task), caps)
        started = time.time()
        try:
            stored = []
            for user, key in target_key.items():
                stored.extend(events_before(events_by_user[user], key))
            store.append_many(stored)
            pending: List[Tuple[int, object]] = []

            def flush(pending=pending, task=task, result=result):
                if not pending:
                    return
                scores = client.predict_inputs(
                    SIGNATURE_NAMES[task], stack_inputs([r.inputs for _, r in pending])
                ).outputs[SCORES_OUTPUT]
                for (row, request), served in zip(pending, scores):
                    offline = offline_scores[task][row]
                    width = len(request.features[fs.CANDIDATE_ITEMS])
                    difference = float(np.max(np.abs(served[:width] - offline[:width])))
                    result.max_score_difference = max(result.max_score_difference, difference)
                    if difference > SCORE_TOLERANCE:
                        result.score_mismatches += 1
                pending.clear()

            for row in rows:
                example = examples[row]
                user = example[fs.USER_ID][0].decode()
                key = target_key[user]
                query = target_query(events_by_user[user], key) if task == "search" else None
                candidates = [c.decode("utf-8") for c in example[fs.CANDIDATE_ITEMS]]
                request = assembler.assemble(user, store.events(user), candidates, query)
                result.users += 1
                differing = differing_features(request.features, example)
                if differing:
                    result.feature_mismatches += 1
                    if len(result.examples) < keep_examples:
                        result.examples.append({"user": user, "features": differing})
                pending.append((row, request))
                if len(pending) >= batch_size:
                    flush()
            flush()
        finally:
            store.close()
        log(f"{task}: {result.users} users in {time.time() - started:.1f} s")
    return results


def events_by_user(events: Iterable[Event]) -> Dict[str, List[Event]]:
    by_user: Dict[str, List[Event]] = collections.defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    return dict(by_user)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from serving.load_history import adapter_events, input_flags, parse_with_dataset
    from serving.server import serve

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="after the dataset: the data job's input flags, as `python -m "
        "pipeline.build_examples` (same defaults): " + " ".join(input_flags()),
    )
    parser.add_argument(
        "--examples_dir",
        required=True,
        help="the data job's output (its manifest.json; a TFX Examples "
        "artifact's URI works too)",
    )
    parser.add_argument(
        "--model_base_path",
        required=True,
        help="<serving_dir>/unisar: the newest version is checked",
    )
    parser.add_argument(
        "--vocab_dir", default=None, help="the data job's vocab/ when the examples carry int ids"
    )
    parser.add_argument(
        "--store",
        default=None,
        help="history store URL with {task} in it (default: SQLite files in "
        "a temporary directory)",
    )
    parser.add_argument(
        "--max_users",
        type=int,
        default=0,
        help="check a fixed sample: the first N users by id (0 = all)",
    )
    parser.add_argument("--report", default=None, help="write the result as JSON here")
    args, read, inputs = parse_with_dataset(parser, argv)

    by_user = events_by_user(adapter_events(read, inputs))
    users = sorted(by_user)[: args.max_users] if args.max_users else None
    with (
        tempfile.TemporaryDirectory(prefix="parity-") as scratch,
        serve(args.model_base_path, port=0) as server,
    ):
        store = args.store or f"sqlite:///{os.path.join(scratch, 'history-{task}.db')}"
        export_dir = os.path.join(args.model_base_path, str(server.version))
        results = check_parity(
            by_user,
            args.examples_dir,
            export_dir,
            server.address,
            store,
            vocab_dir=args.vocab_dir,
            users=users,
        )
    print("| task | users | feature mismatches | score mismatches | max abs score difference |")
    print("|---|---|---|---|---|")
    for result in results.values():
        print(result.row())
    if args.report:
        with open(args.report, "w") as out:
            json.dump({task: dataclasses.asdict(r) for task, r in results.items()}, out, indent=2)
    failed = any(
        r.feature_mismatches or r.score_mismatches or not r.users for r in results.values()
    )
    for result in results.values():
        for example in result.examples:
            print(f"{result.task}: user {example['user']}: differs in {example['features']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
