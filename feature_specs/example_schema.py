"""Names, dtypes and fixed shapes of the features one UniSAR example carries.

One example is one target event (a positive rec item, or a search session with a click) of one
user, with that user's behaviours strictly before it:

| feature                          | dtype | shape (per example)            |
|----------------------------------|-------|--------------------------------|
| `user_id`                        | int64 | ()                             |
| `history_types`                  | int64 | (rec_len + search_len,)        |
| `rec_history_items`              | int64 | (rec_len,)                     |
| `search_history_query_tokens`    | int64 | (search_len, query_len)        |
| `search_history_clicked_items`   | int64 | (search_len, clicks_per_session) |
| `candidate_items`                | int64 | (num_candidates,)              |
| `query_tokens` (search only)     | int64 | (query_len,)                   |

Id 0 is padding everywhere. Lists are oldest first and padded at the end.
`history_types` is the mixed (merged, time-ordered) sequence: slot k holds TYPE_REC or
TYPE_SEARCH, ties between a rec and a search behaviour put rec first, and padding
(TYPE_PAD) comes last. The i-th TYPE_REC slot is `rec_history_items[i]`, the j-th
TYPE_SEARCH slot is search session j, so the merged order needs no extra ids.
`candidate_items[0]` is the positive in training and evaluation examples. Training files built
with `--train_negative_pool K` also carry `negative_pool` (K,): distinct negatives of which
`candidate_items[1:]` are the first, for drawing fresh negatives every epoch.

Id formats (build option `--id_format`, recorded as `id_format` in manifest.json):
- "ids" (default): the int64 ids above, from the job's vocab/{users,items,words}.txt (line k,
  1-based, = id k; 0 = padding).
- "raw": for TensorFlow Transform to build the vocabularies itself. The id features
  (ID_FEATURE_VOCABULARIES: `user_id`, the item lists, the word lists) are bytes (tf.string)
  holding the raw id, i.e. exactly the (UTF-8) text of that id's vocab file line, and b"" where
  "ids" holds padding 0. Same names, shapes, padding positions, candidates and presence;
  `history_types` stays int64. Mapping a raw example through the vocab files (b"" -> 0)
  gives the "ids" example.

Per training step (not per example), the relevance loss takes sampled negatives:
`rel_negative_items` (num_negatives,) and `rel_negative_query_tokens` (num_negatives, query_len).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

USER_ID = "user_id"
HISTORY_TYPES = "history_types"
REC_HISTORY_ITEMS = "rec_history_items"
SEARCH_HISTORY_QUERY_TOKENS = "search_history_query_tokens"
SEARCH_HISTORY_CLICKED_ITEMS = "search_history_clicked_items"
CANDIDATE_ITEMS = "candidate_items"
QUERY_TOKENS = "query_tokens"
# Optional, training files only (build option --train_negative_pool K): K distinct negatives
# for the example, candidate_items[1:] being its first ones; for fresh negatives per epoch.
NEGATIVE_POOL = "negative_pool"
REL_NEGATIVE_ITEMS = "rel_negative_items"
REL_NEGATIVE_QUERY_TOKENS = "rel_negative_query_tokens"

# The feature -> vocabulary (vocab/<name>.txt) of every id feature; in the "raw" id format
# these features are bytes. HISTORY_TYPES is not an id feature: int64 in both formats.
ID_FEATURE_VOCABULARIES = {
    USER_ID: "users",
    REC_HISTORY_ITEMS: "items",
    SEARCH_HISTORY_CLICKED_ITEMS: "items",
    CANDIDATE_ITEMS: "items",
    NEGATIVE_POOL: "items",
    SEARCH_HISTORY_QUERY_TOKENS: "words",
    QUERY_TOKENS: "words",
}
ID_FORMAT_IDS = "ids"  # int64 ids of the job's vocabularies (0 = padding)
ID_FORMAT_RAW = "raw"  # the raw strings (b"" = padding), for TF Transform's vocabularies
ID_FORMATS = (ID_FORMAT_IDS, ID_FORMAT_RAW)

TYPE_PAD = 0
TYPE_REC = 1
TYPE_SEARCH = 2


@dataclasses.dataclass(frozen=True)
class SequenceShapes:
    """Fixed lengths of the padded sequences (spec sections 2-3)."""

    rec_len: int = 30
    search_len: int = 30
    query_len: int = 50
    clicks_per_session: int = 5

    @property
    def mixed_len(self) -> int:
        return self.rec_len + self.search_len


def model_feature_shapes(
    shapes: SequenceShapes, num_candidates: int, with_query: bool
) -> Dict[str, Tuple[int, ...]]:
    """Per-example shapes of the features the model reads (batch dim excluded)."""
    feature_shapes = {
        USER_ID: (),
        HISTORY_TYPES: (shapes.mixed_len,),
        REC_HISTORY_ITEMS: (shapes.rec_len,),
        SEARCH_HISTORY_QUERY_TOKENS: (shapes.search_len, shapes.query_len),
        SEARCH_HISTORY_CLICKED_ITEMS: (shapes.search_len, shapes.clicks_per_session),
        CANDIDATE_ITEMS: (num_candidates,),
    }
    if with_query:
        feature_shapes[QUERY_TOKENS] = (shapes.query_len,)
    return feature_shapes
