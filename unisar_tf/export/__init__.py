"""SavedModel export: the serving contract of UniSAR (`recommend`, `search`, `serving_default`).

    requests.py    raw request tensors <-> model id features (and the inverse, for replay)
    signatures.py  the three signature functions
    push.py        a versioned, atomic SavedModel with warmup requests (a failed export
                   leaves nothing behind)
    checkpoint.py  reading a run's checkpoint back first, naming a damaged file
    __main__.py    python -m unisar_tf.export
Input names, dtypes and the warmup path: feature_specs.serving.

`recommend` and `search` take raw inputs, dense and padded with explicit lengths (TF Serving
batches dense tensors only). B = requests in the batch, C = candidates, R / S = history slots
sent, K = clicks per search session sent; the sizes are free, the model keeps what it was
trained with (the last rec_len rec and search_len search behaviours, the first query_len words
and clicks_per_session clicks, as the data job does):

| input                           | dtype  | shape     |                                   |
|---------------------------------|--------|-----------|-----------------------------------|
| user_id                         | string | (B,)      |                                   |
| candidate_item_ids              | string | (B, C)    | every entry is scored             |
| rec_history_item_ids            | string | (B, R)    | padded past rec_history_length    |
| rec_history_timestamps          | int64  | (B, R)    | any monotone clock                |
| rec_history_length              | int64  | (B,)      | 0 <= length <= R                  |
| search_history_queries          | string | (B, S)    | query text, words split on spaces |
| search_history_clicked_item_ids | string | (B, S, K) | "" pads a session's clicks        |
| search_history_timestamps       | int64  | (B, S)    |                                   |
| search_history_length           | int64  | (B,)      | 0 <= length <= S                  |
| query (`search` only)           | string | (B,)      | the query text                    |

Output: {"scores": (B, C) float32}, click probabilities. Ids are mapped inside the graph with
the vocabularies the model was trained with: for the TFX pipeline's models the Transform
graph itself (pipeline/transform_module.py, unisar_tf/data/transform.py), for `unisar_tf.train`
runs the data job's `vocab/{users,items,words}.txt` (line k = id k + 1). Anything not in them
(and "") becomes id 0, padding/out-of-vocabulary. Unknown users
and words still score; an unknown candidate item gets score 0 (the model knows nothing of it)
and a rec behaviour on an unknown item is left out of the history.
Timestamps only order the two histories into the mixed sequence; ties put rec first, as the
data job does.

`serving_default` takes {"examples": (B,) string}, serialized tf.Examples in the format the
model trained on (feature_specs: raw string ids through Transform for the pipeline's models,
the data job's ids otherwise), for batch inference and evaluation, and returns the search score
for examples that carry `query_tokens` and the rec score otherwise.

The export also writes `assets.extra/tf_serving_warmup_requests` (one request per signature),
which TF Serving replays when it loads a version, so the first user request is not slow.
"""
