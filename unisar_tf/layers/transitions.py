"""The mixed rec/search sequence: merging, the transition mask, and gathering by type (spec 3-4).

`history_types` (B, M) holds TYPE_REC / TYPE_SEARCH per slot in time order, padding
(TYPE_PAD) at the end. The i-th TYPE_REC slot is rec behaviour i, the j-th TYPE_SEARCH slot
is search behaviour j.
"""

from __future__ import annotations

import tensorflow as tf

from feature_specs import TYPE_REC, TYPE_SEARCH


def _rank_within_type(history_types: tf.Tensor, type_id: int) -> tf.Tensor:
    """(B, M) -> (B, M) int32: for slots of `type_id`, their index in that type's list."""
    is_type = tf.cast(tf.equal(history_types, type_id), tf.int32)
    return tf.maximum(tf.cumsum(is_type, axis=1) - 1, 0)


def merge_histories(
    rec_sequence: tf.Tensor, search_sequence: tf.Tensor, history_types: tf.Tensor
) -> tf.Tensor:
    """Interleave the two lists in the mixed order.

    rec_sequence (B, R, d), search_sequence (B, S, d), history_types (B, M) -> (B, M, d);
    padding slots are exact zeros.
    """
    rec_slots = tf.gather(rec_sequence, _rank_within_type(history_types, TYPE_REC), batch_dims=1)
    search_slots = tf.gather(
        search_sequence, _rank_within_type(history_types, TYPE_SEARCH), batch_dims=1
    )
    is_rec = tf.equal(history_types, TYPE_REC)[..., tf.newaxis]
    is_search = tf.equal(history_types, TYPE_SEARCH)[..., tf.newaxis]
    zeros = tf.zeros_like(rec_slots)
    return tf.where(is_rec, rec_slots, tf.where(is_search, search_slots, zeros))


def gather_by_type(mixed_sequence: tf.Tensor, history_types: tf.Tensor, type_id: int, length: int):
    """Outputs at the slots of one type, in time order, padding dropped and re-padded at the end.

    mixed_sequence (B, M, d), history_types (B, M) -> ((B, length, d), valid (B, length) bool).
    Gathering the rec slots of the mixed encoder gives H_s2r aligned with the rec list;
    the search slots give H_r2s aligned with the search list.
    """
    mixed_length = tf.shape(history_types)[1]
    positions = tf.range(mixed_length)[tf.newaxis, :]
    is_type = tf.equal(history_types, type_id)
    # Slots of the type sort first, each group in time order (stable argsort).
    sort_key = tf.where(is_type, positions, positions + mixed_length)
    order = tf.argsort(sort_key, axis=1, stable=True)[:, :length]
    gathered = tf.gather(mixed_sequence, order, batch_dims=1)
    count = tf.reduce_sum(tf.cast(is_type, tf.int32), axis=1, keepdims=True)
    valid = tf.range(length)[tf.newaxis, :] < count
    return gathered * tf.cast(valid, gathered.dtype)[..., tf.newaxis], valid


def transition_attention_mask(
    history_types: tf.Tensor, use_transition_mask: bool = True
) -> tf.Tensor:
    """(B, M) -> (B, M, M) bool: query slot i may attend key slot j.

    Both slots must be real behaviours; with the transition mask they must also be of the other
    type (a rec slot reads only search behaviours, and vice versa).
    """
    valid = tf.not_equal(history_types, 0)
    # Padded query slots attend nothing, so their outputs are defined (and never used).
    allowed = tf.logical_and(valid[:, :, tf.newaxis], valid[:, tf.newaxis, :])
    if not use_transition_mask:
        return allowed
    other_type = tf.not_equal(history_types[:, :, tf.newaxis], history_types[:, tf.newaxis, :])
    return tf.logical_and(allowed, other_type)


def padding_attention_mask(valid: tf.Tensor) -> tf.Tensor:
    """valid (B, L) bool -> (B, L, L) bool: every query may attend every real key."""
    length = tf.shape(valid)[1]
    return tf.tile(valid[:, tf.newaxis, :], [1, length, 1])


def masked_mean(sequence: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Mean over valid positions: (B, L, d), (B, L) bool -> (B, d); no valid position -> 0."""
    weights = tf.cast(valid, sequence.dtype)[..., tf.newaxis]
    total = tf.reduce_sum(sequence * weights, axis=1)
    return tf.math.divide_no_nan(total, tf.reduce_sum(weights, axis=1))
