"""Helpers the test modules share (tests/ is on sys.path: pytest.ini `pythonpath`).

    helpers.REPO, helpers.FIXTURES     the repository and tests/fixtures/
    helpers.model                      small model configurations, vocabulary files
    helpers.event_logs                 hand-built event logs for the sequence builder
    helpers.data_job                   running the data job on the fixtures
    helpers.serving                    a toy SavedModel with the serving contract
    helpers.runs                       a run directory (config, best checkpoint) and its data,
                                       without training
    helpers.pipeline                   the TFX pipeline's component names
Fixtures shared between folders are in tests/conftest.py.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
