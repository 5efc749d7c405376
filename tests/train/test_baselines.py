"""Non-learned baselines (unisar_tf/train/baselines.py): ItemKNN and query match by hand on toys,
then `baseline_scores` / `baseline_metrics` on tiny hand-written TFRecord files (against a
plain-Python reading of the definitions), and on the KuaiSAR fixture read both as id
examples and as raw-id examples through a Transform graph."""

import collections
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from feature_specs import (
    CANDIDATE_ITEMS,
    HISTORY_TYPES,
    QUERY_TOKENS,
    REC_HISTORY_ITEMS,
    SEARCH_HISTORY_CLICKED_ITEMS,
    SEARCH_HISTORY_QUERY_TOKENS,
    USER_ID,
)
from unisar_tf.data import reader
from unisar_tf.metrics import positive_rank_numpy, ranking_metrics
from unisar_tf.train import baselines as bl

# --- ItemKNN by hand ----------------------------------------------------------------------------
# Training (history, positive): the history of e2 repeats item 1 (counted once), e4's positive
# 1 is the history item of the others (its pair lands on the same cells, symmetric).
TOY_HISTORIES = np.array([[1, 2, 0], [1, 1, 0], [2, 0, 0], [3, 0, 0]])
TOY_POSITIVES = np.array([3, 3, 4, 1])
NUM_ITEMS = 6  # ids 1..5; 5 is never seen in training


def test_cooccurrence_counts_each_pair_once_per_example_both_ways():
    cooc = bl.item_cooccurrence(TOY_HISTORIES, TOY_POSITIVES, NUM_ITEMS).toarray()
    expected = np.zeros((NUM_ITEMS, NUM_ITEMS))
    # (1,3) from e1, e2 (once, though 1 appears twice) and e4 (as (3,1)); (2,3) e1; (2,4) e3.
    for (a, b), count in {(1, 3): 3, (2, 3): 1, (2, 4): 1}.items():
        expected[a, b] = expected[b, a] = count
    np.testing.assert_array_equal(cooc, expected)


def test_a_positive_in_its_own_history_counts_twice_on_the_diagonal():
    cooc = bl.item_cooccurrence(np.array([[5, 2]]), np.array([5]), NUM_ITEMS).toarray()
    assert cooc[5, 5] == 2 and cooc[2, 5] == cooc[5, 2] == 1
    assert cooc.sum() == 4


def test_itemknn_scores_by_hand():
    normalized = bl.normalized_cooccurrence(
        bl.item_cooccurrence(TOY_HISTORIES, TOY_POSITIVES, NUM_ITEMS)
    )
    # n(1) = 3, n(2) = 2, n(3) = 4, n(4) = 1, n(5) = 0.
    histories = np.array([[1, 2, 2], [4, 0, 0], [0, 0, 0]])
    candidates = np.array([[3, 4, 5, 1], [2, 3, 4, 5], [3, 1, 2, 4]])
    scores = bl.itemknn_scores(normalized, histories, candidates)
    expected = np.array(
        [
            [3 / math.sqrt(3 * 4) + 1 / math.sqrt(2 * 4), 1 / math.sqrt(2 * 1), 0.0, 0.0],
            [1 / math.sqrt(1 * 2), 0.0, 0.0, 0.0],  # 4 co-occurs with 2 only; never with itself
            [0.0, 0.0, 0.0, 0.0],  # no history, no score
        ]
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_history_is_rec_items_then_search_clicks():
    features = {
        REC_HISTORY_ITEMS: np.array([[1, 2], [0, 0]]),
        SEARCH_HISTORY_CLICKED_ITEMS: np.array([[[3], [0]], [[4], [5]]]),
    }
    np.testing.assert_array_equal(bl.history_items(features), [[1, 2, 3, 0], [0, 0, 4, 5]])


# --- query match ---------------------------------------------------------------------------
def test_query_match_overlap_dominates_and_itemknn_breaks_its_ties():
    overlap = np.array([[1, 2, 1, 1, 0], [1, 1, 1, 0, 0]])
    itemknn = np.array([[5.0, 0.0, 1.0, 0.0, 900.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    scores = bl.query_match_scores(overlap, itemknn)
    # Row 0: overlap 2 first, then overlap 1 by ItemKNN (5 > 1 > 0), then overlap 0 whatever
    # its ItemKNN.
    assert list(np.argsort(-scores[0], kind="stable")) == [1, 0, 2, 3, 4]
    assert list(positive_rank_numpy(scores)) == [2, 3]  # row 1: a tie (0, 0) counts against
    # Without the ItemKNN term row 0's positive would tie with two candidates (rank 4).
    assert positive_rank_numpy(overlap[:1].astype(float))[0] == 4
    # Popularity orders what overlap and ItemKNN leave tied: row 1's positive (popularity 7)
    # now beats candidate 1 (popularity 2) and stays below candidate 2 (ItemKNN 3).
    popularity = np.array([[1, 1, 1, 1, 1], [7, 2, 0, 9, 9]])
    scores = bl.query_match_scores(overlap, itemknn, popularity)
    assert list(positive_rank_numpy(scores)) == [2, 2]
    assert scores[0, 2] == scores[0, 3] + 1  # dense ranks: equal keys tie, next key is +1


def test_fallback_item_words_are_training_query_words_of_clicked_items():
    queries = np.array([[1, 2, 0], [2, 0, 0], [3, 3, 0], [0, 0, 0]])
    positives = np.array([4, 5, 4, 2])
    words = bl.item_words_from_clicks(queries, positives, num_words=4, num_items=NUM_ITEMS)
    assert words.shape == (4, NUM_ITEMS)
    # Binary: word 3 was clicked twice (once per example, it repeats in one query) for item 4.
    assert sorted(zip(*words.nonzero())) == [(1, 4), (2, 4), (2, 5), (3, 4)]
    assert set(words.data) == {1.0}
    overlap = bl.query_overlap(
        np.array([[2, 3, 3], [1, 0, 0]]), words, np.array([[4, 5, 1, 2], [5, 4, 3, 2]])
    )
    np.testing.assert_array_equal(overlap, [[2, 1, 0, 0], [0, 1, 0, 0]])


def test_caption_item_words_count_distinct_query_words():
    captions = np.zeros((NUM_ITEMS, 3), np.int64)
    captions[1] = [1, 2, 2]
    captions[2] = [3, 0, 0]
    words = bl.item_words_from_captions(captions, num_words=4)
    overlap = bl.query_overlap(
        np.array([[2, 2, 1], [3, 0, 0]]), words, np.array([[1, 2, 3], [1, 2, 3]])
    )
    np.testing.assert_array_equal(overlap, [[2, 0, 0], [0, 1, 0]])


# --- tiny TFRecord data ----------------------------------------------------------------------
SHAPES = dict(rec_len=3, search_len=2, query_len=3, clicks_per_session=1)


def _example(rec, clicked, candidates, query=None, user=1):
    search_len, clicks = SHAPES["search_len"], SHAPES["clicks_per_session"]
    clicked = list(clicked) + [0] * (search_len * clicks - len(clicked))
    features = {
        USER_ID: [user],
        HISTORY_TYPES: [0] * (SHAPES["rec_len"] + search_len),
        REC_HISTORY_ITEMS: list(rec) + [0] * (SHAPES["rec_len"] - len(rec)),
        SEARCH_HISTORY_QUERY_TOKENS: [0] * (search_len * SHAPES["query_len"]),
        SEARCH_HISTORY_CLICKED_ITEMS: clicked,
        CANDIDATE_ITEMS: list(candidates),
    }
    if query is not None:
        features[QUERY_TOKENS] = list(query) + [0] * (SHAPES["query_len"] - len(query))
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
                for name, values in features.items()
            }
        )
    ).SerializeToString()


# Per split and scenario, the files' examples: (rec history, search clicks, candidates[, query]).
# Two test files, the first with two examples, so file order and round-robin order differ.
TINY = {
    ("train", "rec"): [[([1, 2], [], [3, 5]), ([1, 1], [], [3, 2])]],
    ("train", "search"): [[([], [2], [4, 1], [1, 2]), ([3], [], [1, 2], [3])]],
    ("valid", "rec"): [[([1], [], [3, 4, 5, 1])]],
    ("valid", "search"): [[([1], [], [4, 3, 1, 5], [1])]],
    ("test", "rec"): [
        [([1], [2], [3, 4, 5, 1]), ([4], [], [2, 3, 4, 5])],
        [([2], [], [4, 3, 1, 5])],
    ],
    ("test", "search"): [
        [([1], [2], [4, 3, 1, 5], [1, 2]), ([3], [], [1, 4, 5, 2], [3])],
        [([], [], [2, 4, 1, 3], [2]), ([2], [], [5, 4, 3, 1], [3, 3])],
    ],
}
TINY_WORDS = 3  # word ids 1..3
# Captions that disagree with the clicks: item 4 was clicked for words 1 and 2, item 1 for
# word 3; by caption item 4 has word 3, item 1 word 1 (twice), item 5 words 2 and 3.
TINY_CAPTIONS = {4: [3], 1: [1, 1], 5: [2, 3]}


def write_tiny(out_dir, captions=None):
    for (split, scenario), files in TINY.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        for index, rows in enumerate(files):
            path = os.path.join(
                out_dir, split, f"{scenario}-{index:05d}-of-{len(files):05d}.tfrecord.gz"
            )
            with tf.io.TFRecordWriter(path, "GZIP") as writer:
                for row in rows:
                    writer.write(_example(*row))
    manifest = {
        "id_format": "ids",
        "vocab_sizes": {"users": 1, "items": 5, "words": TINY_WORDS},
        "shapes": dict(SHAPES, train_candidates=2, eval_candidates=4),
        "examples": {
            split: {scenario: sum(map(len, files))} for (split, scenario), files in TINY.items()
        },
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as out:
        json.dump(manifest, out)
    if captions is not None:
        os.makedirs(os.path.join(out_dir, "side_features"))
        with open(os.path.join(out_dir, "side_features", "items-00000-of-00001.jsonl"), "w") as out:
            for item, words in captions.items():
                out.write(json.dumps({"id": item, "caption_word_ids": words}) + "\n")
    return str(out_dir)


def reference_scores(out_dir, manifest, captions=None):
    """The definitions in plain Python, one example at a time (examples in read order)."""

    def history(row):
        return {
            int(i)
            for i in list(row[REC_HISTORY_ITEMS].ravel())
            + list(row[SEARCH_HISTORY_CLICKED_ITEMS].ravel())
            if i
        }

    def rows(split, scenario):
        arrays = reader.load_arrays(out_dir, split, scenario, manifest)
        return [
            {name: values[i] for name, values in arrays.items()}
            for i in range(len(arrays[CANDIDATE_ITEMS]))
        ]

    cooc, popularity, clicked_words = collections.Counter(), collections.Counter(), {}
    for scenario in ("rec", "search"):
        for row in rows("train", scenario):
            positive = int(row[CANDIDATE_ITEMS][0])
            popularity[positive] += 1
            for item in history(row):
                cooc[item, positive] += 1
                cooc[positive, item] += 1
            for word in set(row.get(QUERY_TOKENS, [])) - {0}:
                clicked_words.setdefault(positive, set()).add(int(word))
    totals = collections.Counter()
    for (a, _), count in cooc.items():
        totals[a] += count
    item_words = (
        {item: set(words) - {0} for item, words in captions.items()}
        if captions is not None
        else clicked_words
    )

    result = {"popularity": {}, "ItemKNN": {}, "query match": {}}
    for scenario in ("rec", "search"):
        pop, knn, match = [], [], []
        for row in rows("test", scenario):
            candidates = [int(c) for c in row[CANDIDATE_ITEMS]]
            pop.append([popularity[c] for c in candidates])
            knn.append(
                [
                    sum(
                        cooc[h, c] / math.sqrt(totals[h] * totals[c])
                        for h in history(row)
                        if totals[h] and totals[c]
                    )
                    for c in candidates
                ]
            )
            if scenario == "search":
                query = set(int(w) for w in row[QUERY_TOKENS]) - {0}
                overlap = [len(query & item_words.get(c, set())) for c in candidates]
                keys = [(o, k, popularity[c]) for o, k, c in zip(overlap, knn[-1], candidates)]
                dense_rank = {key: rank for rank, key in enumerate(sorted(set(keys)))}
                match.append([dense_rank[key] for key in keys])
        result["popularity"][scenario] = np.array(pop, float)
        result["ItemKNN"][scenario] = np.array(knn)
        if match:
            result["query match"][scenario] = np.array(match)
    return result


def assert_scores_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert sorted(actual[name]) == sorted(expected[name]), name
        for task in expected[name]:
            np.testing.assert_allclose(
                actual[name][task],
                expected[name][task],
                rtol=1e-12,
                atol=1e-15,
                err_msg=f"{name} {task}",
            )


@pytest.mark.parametrize("with_captions", [False, True])
def test_baseline_scores_follow_the_definitions_in_read_order(tmp_path, with_captions):
    captions = TINY_CAPTIONS if with_captions else None
    out = write_tiny(tmp_path / "tiny", captions)
    manifest = reader.load_manifest(out)
    scores = bl.baseline_scores(out, "test", manifest, num_items=6)
    expected = reference_scores(out, manifest, captions)
    assert_scores_equal(scores, expected)
    assert sorted(scores) == ["ItemKNN", "popularity", "query match"]
    assert sorted(scores["query match"]) == ["search"]
    # Rows pair with read_examples' rows (what the model is scored on).
    read = np.concatenate(
        [
            batch[CANDIDATE_ITEMS].numpy()
            for batch in reader.read_examples(out, "test", "search", 3, manifest)
        ]
    )
    popularity = {3: 2, 4: 1, 1: 1}
    np.testing.assert_array_equal(
        scores["popularity"]["search"], np.vectorize(lambda c: popularity.get(c, 0))(read)
    )
    # Not vacuous: ItemKNN and query match score something on these lists, and the two
    # sources of item words give different overlaps.
    assert scores["ItemKNN"]["rec"].max() > 0
    assert scores["query match"]["search"].max() >= 1
    other = reference_scores(out, manifest, None if with_captions else TINY_CAPTIONS)
    assert not np.array_equal(scores["query match"]["search"], other["query match"]["search"])


def test_baseline_metrics_report_every_baseline_in_order(tmp_path):
    from unisar_tf.metrics import metrics_table, random_ranking_metrics
    from unisar_tf.train.evaluation import baseline_metrics, report_markdown

    out = write_tiny(tmp_path / "tiny")
    manifest = reader.load_manifest(out)
    results = baseline_metrics(out, "test", manifest, 6)
    assert list(results) == ["popularity", "random", "ItemKNN", "query match"]
    assert sorted(results["query match"]) == ["search"]
    scores = reference_scores(out, manifest)
    for name in ("popularity", "ItemKNN", "query match"):
        for task, values in scores[name].items():
            assert results[name][task] == dict(ranking_metrics(values), examples=len(values))
    for task, count in (("rec", 3), ("search", 4)):
        assert results["random"][task] == dict(random_ranking_metrics(4), examples=count)
    table = metrics_table(results)
    assert "| ItemKNN | rec |" in table and "| query match | search |" in table
    assert "| query match | rec |" not in table
    # The model's report: the model first, then popularity, random, ItemKNN, query match.
    report = dict(
        results,
        unisar=results["ItemKNN"],
        split="test",
        best_epoch=1,
        validation_score=0.5,
        negatives_per_example=3,
    )
    lines = [line for line in report_markdown(report).splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == [
        "unisar",
        "unisar",
        "popularity",
        "popularity",
        "random",
        "random",
        "ItemKNN",
        "ItemKNN",
        "query match",
    ]
    # Only the tasks asked for.
    rec_only = baseline_metrics(out, "test", manifest, 6, ("rec",))
    assert list(rec_only) == ["popularity", "random", "ItemKNN"]


def test_ablation_table_lists_the_non_learned_baselines_after_popularity():
    from unisar_tf.tools import ablation

    def metrics(v):
        return {"HR@1": v, "HR@5": v, "HR@10": v, "NDCG@5": v, "NDCG@10": v}

    reports = {
        "UniSAR": {
            "unisar": {"rec": metrics(0.3), "search": metrics(0.6)},
            "best_epoch": 1,
            "epochs_run": 2,
        }
    }
    baselines = {
        "popularity": {"rec": metrics(0.02), "search": metrics(0.03)},
        "random": {"rec": metrics(0.04), "search": metrics(0.04)},
        "ItemKNN": {"rec": metrics(0.19), "search": metrics(0.2)},
        "query match": {"search": metrics(0.7)},
    }
    rows = ablation.table_rows(reports, baselines)
    assert [row["name"] for row in rows] == ["UniSAR", "popularity", "ItemKNN", "query match"]
    text = ablation.ablation_markdown(rows, "header")
    line = next(row for row in text.splitlines() if row.startswith("| query match |"))
    assert line == "| query match | - | 0.7000 / 0.7000 |  | +0.1000 | - | - |"


# --- raw-id examples through Transform (the KuaiSAR fixture in both formats) ---------------
@pytest.mark.slow
def test_raw_examples_through_transform_score_as_the_id_examples(kuaisar_formats):
    """Same baselines from the id examples and from the raw ones read through Transform's
    vocabularies (side-feature captions re-keyed): rows compared by their raw strings, since
    the job's shards order them differently. Query match is compared where Transform knows
    every candidate and query word (it maps the others to 0, the job's vocabulary does not)."""
    from unisar_tf.data.transform import transform_ids
    from unisar_tf.data.vocab import read_vocabularies

    ids_dir, raw_dir, transform_dir = kuaisar_formats
    assert tf.io.gfile.glob(os.path.join(ids_dir, "side_features", "items-*.jsonl"))
    job = read_vocabularies(os.path.join(ids_dir, "vocab"))
    tft = transform_ids(transform_dir).vocabularies()

    def strings(kind, ids, vocab):
        """Raw strings of ids, "" for padding and for what Transform does not know."""
        values = np.asarray(vocab[kind])[ids]
        return np.where((ids > 0) & np.isin(values, tft[kind][1:]), values, "")

    by_format = {}
    for name, out, transform, vocab in (
        ("ids", ids_dir, None, job),
        ("raw", raw_dir, transform_dir, tft),
    ):
        manifest = reader.load_manifest(out, transform)
        scores = bl.baseline_scores(out, "test", manifest, manifest["vocab_sizes"]["items"] + 1)
        rows = {}
        for task in ("rec", "search"):
            names = [USER_ID, CANDIDATE_ITEMS, REC_HISTORY_ITEMS, SEARCH_HISTORY_CLICKED_ITEMS]
            names += [QUERY_TOKENS] if task == "search" else []
            features = bl.read_split(out, "test", task, manifest, names)
            columns = [
                strings(data_kind, features[feature].reshape(len(features[USER_ID]), -1), vocab)
                for feature, data_kind in (
                    (USER_ID, "users"),
                    (CANDIDATE_ITEMS, "items"),
                    (REC_HISTORY_ITEMS, "items"),
                    (SEARCH_HISTORY_CLICKED_ITEMS, "items"),
                )
                + (((QUERY_TOKENS, "words"),) if task == "search" else ())
            ]
            keys = [tuple(row) for row in np.concatenate(columns, axis=1).tolist()]
            assert len(set(keys)) == len(keys), "rows need unique keys"
            # Everything Transform maps to 0 that the job keeps: unknown candidates / words.
            unknown = np.count_nonzero(features[CANDIDATE_ITEMS], axis=1) - np.count_nonzero(
                columns[1] != "", axis=1
            )
            if task == "search":
                unknown += np.count_nonzero(features[QUERY_TOKENS], axis=1) - np.count_nonzero(
                    columns[-1] != "", axis=1
                )
            rows[task] = {key: (i, unknown[i] == 0) for i, key in enumerate(keys)}
        by_format[name] = (scores, rows)
    (ids_scores, ids_rows), (raw_scores, raw_rows) = by_format["ids"], by_format["raw"]
    compared = collections.Counter()
    for task in ("rec", "search"):
        assert sorted(ids_rows[task]) == sorted(raw_rows[task])
        for key, (i, all_known) in ids_rows[task].items():
            j, _ = raw_rows[task][key]
            names = ["popularity", "ItemKNN"]
            names += ["query match"] if task == "search" and all_known else []
            for baseline in names:
                np.testing.assert_allclose(
                    raw_scores[baseline][task][j],
                    ids_scores[baseline][task][i],
                    rtol=1e-9,
                    err_msg=f"{baseline} {task} {key}",
                )
                compared[baseline, task] += 1
    assert compared["query match", "search"] > 0
    # Not vacuous: ItemKNN and query match (captions) score something here.
    assert ids_scores["ItemKNN"]["rec"].max() > 0
    assert np.floor(ids_scores["query match"]["search"]).max() >= 1
