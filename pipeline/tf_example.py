"""Serialise int64 and bytes feature dicts as tf.train.Example bytes without TensorFlow.

The Beam workers build ~1,700 values per example (the padded 30 x 50 search-history queries
dominate); importing TensorFlow in every worker and filling protos value by value would cost
more than the whole job. The wire format is small and fixed:

    Example   { 1: Features }
    Features  { 1: repeated MapEntry { 1: key (string), 2: Feature } }
    Feature   { 1: BytesList | 3: Int64List }
    Int64List { 1: packed varint values }
    BytesList { 1: repeated bytes }: one entry per value, 0x0A + varint length + bytes

Callers that repeat values (the job's raw-id examples) precompute each value's entry once with
`bytes_entry` and join entries into a BytesList payload themselves.

tests/pipeline/test_tf_example.py checks the bytes parse with tf.train.Example and
tf.io.parse_example.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def _varint_uncached(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = [_varint_uncached(n) for n in range(1 << 14)]  # ids and feature lengths
_CACHED_VARINTS = len(_SMALL_VARINTS)


def _varint(value: int) -> bytes:
    if 0 <= value < _CACHED_VARINTS:
        return _SMALL_VARINTS[value]
    if value < 0:
        raise ValueError(
            f"varint() takes non-negative ints, got {value}; "
            "use encode_varints for negative values"
        )
    return _varint_uncached(value)


def _varint_bytes(values: np.ndarray):
    """(n,) int64 -> (packed varint bytes of all values, (n,) bytes per value)."""
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high < 0x80:
        return values.astype(np.uint8).tobytes(), np.ones(values.shape, np.int64)
    if low >= 0 and high < 0x4000:  # ids below 16,384: one or two bytes, no 2-D temporaries
        two = values >= 0x80
        lengths = 1 + two
        out = np.empty(int(lengths.sum()), np.uint8)
        starts = np.cumsum(lengths) - lengths
        out[starts] = (values & 0x7F) | (two << 7)
        out[starts[two] + 1] = values[two] >> 7
        return out.tobytes(), lengths
    if low < 0:  # two's complement: always 10 bytes, as protobuf writes them
        rest = values.view(np.uint64)
        width = 10
    else:
        rest = values
        width = (high.bit_length() + 6) // 7
    out = np.empty((values.size, width), np.uint8)
    lengths = np.ones(values.size, np.int64)
    for column in range(width):
        following = rest >> 7
        has_more = following != 0
        out[:, column] = (rest & 0x7F) | (has_more.astype(np.uint8) << 7)
        lengths += has_more
        rest = following
    used = np.arange(width)[None, :] < lengths[:, None]
    return out[used].tobytes(), lengths


def encode_varints(values: np.ndarray) -> bytes:
    """Packed base-128 varints of int64 values (negatives as two's complement, as protobuf)."""
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    return _varint_bytes(v)[0] if v.size else b""


def _length_delimited(field_tag: int, payload: bytes) -> bytes:
    return bytes([field_tag]) + _varint(len(payload)) + payload


_KEY_FIELDS = {}


def _key_field(name: str) -> bytes:
    field = _KEY_FIELDS.get(name)
    if field is None:
        field = _KEY_FIELDS[name] = _length_delimited(0x0A, name.encode("utf-8"))
    return field


def _example(features: Mapping[str, bytes]) -> bytes:
    """{name: encoded Feature message} -> Example, features in sorted-name order (the order
    of TF's deterministic serialization)."""
    return _length_delimited(
        0x0A,
        b"".join(
            [
                _length_delimited(0x0A, _key_field(name) + _length_delimited(0x12, features[name]))
                for name in sorted(features)
            ]
        ),
    )


def _int64_features(packed: Mapping[str, bytes]) -> dict:
    return {
        name: _length_delimited(0x1A, _length_delimited(0x0A, payload))
        for name, payload in packed.items()
    }


def encode_packed_example(packed: Mapping[str, bytes]) -> bytes:
    """{name: packed varint payload} -> serialized tf.train.Example with int64_list features."""
    return _example(_int64_features(packed))


def encode_mixed_example(packed: Mapping[str, bytes], bytes_lists: Mapping[str, bytes]) -> bytes:
    """Serialized tf.train.Example of int64_list features ({name: packed varint payload}) and
    bytes_list features ({name: BytesList payload, i.e. joined `bytes_entry` values})."""
    both = set(packed) & set(bytes_lists)
    if both:
        raise ValueError(f"features {sorted(both)} given both as int64 and as bytes lists")
    features = _int64_features(packed)
    features.update(
        {name: _length_delimited(0x0A, payload) for name, payload in bytes_lists.items()}
    )
    return _example(features)


def bytes_entry(value) -> bytes:
    """One BytesList value (bytes, or str as UTF-8) as its wire entry: 0x0A, varint length,
    bytes. A BytesList payload is the concatenation of its values' entries."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, (bytes, bytearray)):
        raise TypeError(
            f"bytes_list values are bytes or str, got {type(value).__name__} " f"{value!r}"
        )
    return _length_delimited(0x0A, bytes(value))


def encode_bytes_list(values) -> bytes:
    """An iterable of bytes / str -> BytesList payload (for encode_mixed_example)."""
    return b"".join([bytes_entry(value) for value in values])


# One non-negative int as varint bytes (cached for values below 16,384).
varint = _varint


def encode_int64_example(features: Mapping[str, np.ndarray]) -> bytes:
    """{name: int array of any shape} -> serialized tf.train.Example (arrays are flattened)."""
    return encode_packed_example(
        {name: encode_varints(np.asarray(values)) for name, values in features.items()}
    )


def encode_example(features: Mapping[str, np.ndarray]) -> bytes:
    """{name: array of any shape} -> serialized tf.train.Example: integer arrays as int64_list,
    bytes / str (or object arrays of them) as bytes_list; arrays are flattened."""
    packed, bytes_lists = {}, {}
    for name, values in features.items():
        values = np.asarray(values)
        if values.dtype.kind in "iub":
            packed[name] = encode_varints(values)
        elif values.dtype.kind in "SUO":
            bytes_lists[name] = encode_bytes_list(values.reshape(-1).tolist())
        else:
            raise TypeError(
                f"feature {name!r}: dtype {values.dtype} is neither integer nor " "bytes / str"
            )
    return encode_mixed_example(packed, bytes_lists)
