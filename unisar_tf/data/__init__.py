"""The data side of the model: reading what the data job writes, and what is counted from it.

    example_rules.py  the example rules: events -> behaviours -> history features (data job,
                      online path and synthetic generator share them)
    reader.py         manifest.json and the TFRecord examples (tf.data), the data's identity
    vocab.py          the data job's vocabularies (files, and an in-graph id lookup)
    transform.py      the Transform graph's id mapping (the TFX pipeline's raw-id examples)
    side_features.py  item / user side features as per-id tables
    cooccurrence.py   item co-occurrence and transitions counted on the training split
    synthetic.py      planted-structure synthetic data (tests, the demo)

File names and layout: feature_specs.layout; feature names and shapes: feature_specs.
"""
