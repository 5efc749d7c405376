"""Hand-built event logs and vocabularies for the sequence builder and tf.Example tests."""

import numpy as np

from feature_specs.event_schema import SCENARIO_REC, SCENARIO_SEARCH, Event
from pipeline import sequence_builder as sb


def small_options(**overrides):
    base = dict(
        rec_len=3,
        search_len=2,
        query_len=4,
        clicks_per_session=2,
        num_train_negatives=2,
        num_eval_negatives=3,
    )
    base.update(overrides)
    return sb.BuildOptions(**base)


class Log:
    """Builds one user's events; `line` follows call order so input order is explicit."""

    def __init__(self, user="u"):
        self.user = user
        self.events = []

    def _add(self, **fields):
        self.events.append(
            Event(user_id=self.user, source="log.csv", line=len(self.events) + 1, **fields)
        )

    def rec(self, ts, item, click=1):
        self._add(timestamp=ts, scenario=SCENARIO_REC, item_id=item, click=click)
        return self

    def search(self, ts, session, query, *rows):
        """rows: (item, click) pairs, one event each; no rows = a search without results."""
        tokens = tuple(query.split())
        for item, click in rows or [("", 0)]:
            self._add(
                timestamp=ts,
                scenario=SCENARIO_SEARCH,
                item_id=item,
                click=click,
                search_session_id=session,
                query_tokens=tokens,
            )
        return self


def long_log(user="u"):
    return (
        Log(user)
        .rec(10, "A")
        .search(20, "s1", "w1 w2", ("B", 1))
        .rec(30, "C")
        .rec(40, "D")
        .search(50, "s2", "w3", ("E", 1), ("F", 1))
        .rec(60, "G")
        .rec(70, "H")
        .search(80, "s3", "w1 w2 w3 w4 w5", ("I", 1), ("J", 1), ("K", 1))
        .rec(90, "L")
    )


def mixed_log(user="u"):
    """long_log plus an impression and returned-but-unclicked search rows."""
    log = long_log(user)
    log.rec(15, "X", click=0)
    log.search(85, "s4", "w6", ("P", 0), ("Q", 0))
    log.search(86, "s5", "w7", ("R", 0), ("S", 1), ("T", 0))
    return log


def wide_vocab():
    """A dense vocabulary whose log items and words need two- and three-byte varints."""
    special = {
        "A": 1,
        "B": 130,
        "C": 16_500,
        "D": 127,
        "E": 128,
        "F": 16_383,
        "G": 16_384,
        "H": 300,
        "I": 20_000,
        "J": 5,
        "K": 9_999,
        "L": 200,
        "P": 7,
        "Q": 70,
        "R": 700,
        "S": 7_000,
        "T": 17_000,
        "X": 2,
    }
    free = set(range(1, 20_001)) - set(special.values())
    items = dict(special, **{f"filler{n}": n for n in free})
    words = {f"w{i}": wid for i, wid in enumerate([3, 200, 16_384, 1, 128, 127, 9], start=1)}
    words.update({f"other{n}": n for n in set(range(1, 16_385)) - set(words.values())})
    users = {f"user{n}": n for n in range(1, 20_001)}
    clicks = np.ones(20_001, np.int64)
    clicks[0] = 0
    return sb.Vocabularies(users=users, items=items, words=words, item_clicks=clicks)
