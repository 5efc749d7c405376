"""The serving benchmark's requests: replayed from the data job's id examples and from the
pipeline's raw-id examples (through the Transform output), the same lists either way."""

import pytest

from serving import benchmark
from unisar_tf.data.transform import transform_ids

pytestmark = pytest.mark.slow  # every test here builds, trains, exports or serves


def test_requests_from_raw_examples_through_transform_match_those_from_id_examples(kuaisar_formats):
    ids_dir, raw_dir, transform_dir = kuaisar_formats
    # The fixture's test split has 3 lists per task; ask for more to get them all (the two
    # formats' files need not hold them in the same order).
    from_ids = benchmark.load_requests(ids_dir, 10)
    from_raw = benchmark.load_requests(raw_dir, 10, transform_dir)
    known = {
        kind: set(words) for kind, words in transform_ids(transform_dir).vocabularies().items()
    }
    assert set(from_raw) == set(from_ids) == {"recommend", "search"}

    def through_transform(strings, kind):
        # A string Transform's vocabulary knows is kept, any other comes back as "".
        return tuple(s if s.decode() in known[kind] else b"" for s in strings)

    for signature in ("recommend", "search"):
        assert len(from_raw[signature]) == len(from_ids[signature]) == 3
        assert all(set(raw) == set(from_ids[signature][0]) for raw in from_raw[signature])
        expected = sorted(
            (
                through_transform(r["user_id"], "users"),
                through_transform(r["candidate_item_ids"][0], "items"),
            )
            for r in from_ids[signature]
        )
        replayed = sorted(
            (tuple(r["user_id"]), tuple(r["candidate_item_ids"][0])) for r in from_raw[signature]
        )
        assert replayed == expected
        # Not vacuous: most candidates are items Transform's vocabulary knows.
        known_share = sum(item != b"" for _, items in replayed for item in items) / sum(
            len(items) for _, items in replayed
        )
        assert known_share > 0.5, replayed
