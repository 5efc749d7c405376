"""The serving benchmark's requests: replayed from the data job's id examples and from the
pipeline's raw-id examples (through the Transform output), the same lists either way."""
from serving import benchmark
from unisar_tf.data.transform import transform_ids


def test_requests_from_raw_examples_through_transform_match_those_from_id_examples(
        kuaisar_formats):
    ids_dir, raw_dir, transform_dir = kuaisar_formats
    from_ids = benchmark.load_requests(ids_dir, 3)
    from_raw = benchmark.load_requests(raw_dir, 3, transform_dir)
    known = {kind: set(words) for kind, words in
             transform_ids(transform_dir).vocabularies().items()}
    assert set(from_raw) == set(from_ids) == {"recommend", "search"}
    for signature in ("recommend", "search"):
        assert len(from_raw[signature]) == len(from_ids[signature]) == 3
        for raw, ids in zip(from_raw[signature], from_ids[signature]):
            assert set(raw) == set(ids)
            # The same list: a string Transform's vocabulary knows is kept, any other is "".
            expected = [item if item.decode() in known["items"] else b""
                        for item in ids["candidate_item_ids"][0]]
            assert list(raw["candidate_item_ids"][0]) == expected
            assert expected[0] != b""  # the positive is a training item here
            user = ids["user_id"][0]
            assert raw["user_id"][0] == (user if user.decode() in known["users"] else b"")
