"""What a Predict request will make the stand-in build, in bytes, known before it builds it.

A TensorProto of a few bytes can declare any shape, and the model builds in proportion to
the shape, not to the bytes received: UniSAR's default preset on Beauty's shapes builds
~6 KB per candidate, so a 420-byte `recommend` request declaring 15,000,000 candidates had
the stand-in killed by the kernel at 19.6 GB (issue 23). Caps on what a request declares
(elements, bytes) do not bound that; this module bounds what the model will build:

- `measure_costs(session, signature_defs, export_dir)` runs small probe requests through
  each signature when a version loads, with TensorFlow's allocation records on
  (RunOptions SOFTWARE_TRACE) and the ops run one at a time, and counts the bytes each run
  allocates in all. That total is deterministic, linear in the request's sizes from the
  smallest probe on, and never less than the most bytes live at once, which depends on how
  the ops interleave and reaches its own slope only for big requests (16,000 candidates on
  Beauty's shapes). A signature's cost is that total for a base request plus, for each
  measure of a request (rows, candidates, history slots, clicks, text bytes of each string
  input), the total's growth per unit of that measure, from a probe where it alone grows.
- `SignatureCost.estimate(...)` is then, for a request, SAFETY_FACTOR x (base + the sum of
  coefficient x the request's excess over the base request in each measure), plus what the
  server itself holds outside the model run (the request, its numpy and TensorFlow copies,
  the response: `direct_bytes`). Everything is computed from the protos alone.
- `MemoryBudget`: the server-wide sum of the estimates of the requests in flight; a request
  waits until its estimate fits, or gets RESOURCE_EXHAUSTED.

The probes follow the raw request contract (feature_specs.serving). Each grows one measure
where it costs most: candidates with full histories of known items (assets.extra/online:
the model's shapes and item vocabulary), clicks and history text with one search session
(the model gathers its search_len sessions from what is sent, so a single long session is
copied search_len times). The allocation records miss the bytes of long strings (their
heap, outside TensorFlow's allocators) and allocator overhead: SAFETY_FACTOR covers them,
checked against the process's peak RSS (docs/serving.md, "Memory limits", has the numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import threading
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from feature_specs import CANDIDATE_ITEMS
from feature_specs.serving import (
    CANDIDATES_INPUT,
    EXAMPLES_INPUT,
    ONLINE_DIR,
    ONLINE_ITEMS_FILE,
    ONLINE_METADATA_FILE,
    QUERY_INPUT,
    RAW_INPUTS,
    REC_ITEMS_INPUT,
    REC_LENGTH_INPUT,
    REC_TIMESTAMPS_INPUT,
    SEARCH_CLICKS_INPUT,
    SEARCH_LENGTH_INPUT,
    SEARCH_QUERIES_INPUT,
    SEARCH_TIMESTAMPS_INPUT,
    USER_ID_INPUT,
)

log = logging.getLogger(__name__)

# Measured totals are multiplied by this: on Beauty's shapes the totals were 1.2 to 2.3 times
# the peak RSS growth of big requests, except long history queries (0.8: their copies'
# bytes are outside the records); docs/serving.md, "Memory limits".
SAFETY_FACTOR = 1.5
# How much a probe grows its one measure (candidates, slots, clicks; rows; text bytes).
PROBE_UNITS = 128
PROBE_ROWS = 8
PROBE_TEXT_BYTES = 2048
# What the server holds outside the model run, per element of every input (its numpy array,
# object references, the fed TensorFlow tensor: 8 + 8 + 24 bytes) and per output score
# (numpy, TensorProto, serialized response).
ELEMENT_OVERHEAD = 40
OUTPUT_OVERHEAD = 16
# Coefficients used when nothing could be measured (a signature outside the contracts, or
# allocation records that came back empty): 16 KiB per element or byte, above anything
# measured on UniSAR so far.
FALLBACK_BYTES_PER_UNIT = 16 * 1024

# Measures of a request (what the estimate is linear in).
ROWS = "rows"  # B
CANDIDATES = "candidates"  # B x C
REC_SLOTS = "rec_slots"  # B x R
SEARCH_SLOTS = "search_slots"  # B x S
CLICKS = "clicks"  # B x S x K
ELEMENTS = "elements"  # other elements (serving_default, unknown signatures)
TEXT = "text:"  # TEXT + alias: expanded bytes of that string input
BYTES = "bytes"  # all string bytes (unknown signatures)

_RAW = frozenset(RAW_INPUTS)
_RAW_SEARCH = _RAW | {QUERY_INPUT}
_REC_DIM = (REC_ITEMS_INPUT, REC_TIMESTAMPS_INPUT)
_SEARCH_DIM = (SEARCH_QUERIES_INPUT, SEARCH_CLICKS_INPUT, SEARCH_TIMESTAMPS_INPUT)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def kind_of(signature: meta_graph_pb2.SignatureDef) -> str:
    """ "raw" (the recommend/search contract), "examples" (serving_default) or "other"."""
    names = set(signature.inputs)
    if names in (_RAW, _RAW_SEARCH):
        return "raw"
    if names == {EXAMPLES_INPUT} and signature.inputs[EXAMPLES_INPUT].dtype == types_pb2.DT_STRING:
        return "examples"
    return "other"


# ----------------------------------------------------------------------------- measures


def raw_measures(
    dims: Mapping[str, Sequence[int]], string_bytes: Mapping[str, int]
) -> Dict[str, int]:
    """Measures of a raw-contract request: dims and expanded string bytes by input."""
    batch = max([d[0] for d in dims.values() if d] or [0])
    candidates = dims[CANDIDATES_INPUT]
    rec = max(dims[name][1] for name in _REC_DIM)
    search = max(dims[name][1] for name in _SEARCH_DIM)
    clicks = math.prod(dims[SEARCH_CLICKS_INPUT])
    measures = {
        ROWS: batch,
        CANDIDATES: batch * candidates[1],
        REC_SLOTS: batch * rec,
        SEARCH_SLOTS: batch * search,
        CLICKS: clicks,
    }
    for alias, size in string_bytes.items():
        measures[TEXT + alias] = size
    return measures


def generic_measures(
    dims: Mapping[str, Sequence[int]], string_bytes: Mapping[str, int]
) -> Dict[str, int]:
    return {ELEMENTS: sum(math.prod(d) for d in dims.values()), BYTES: sum(string_bytes.values())}


@dataclasses.dataclass(frozen=True)
class ExampleCounts:
    """What a serving_default request's tf.Examples hold: B, the most candidates in one
    example, and per other feature the most values in one example (each feature is made
    dense to (B, most))."""

    rows: int
    most_candidates: int
    most_values: Dict[str, int]

    def measures(self) -> Dict[str, int]:
        return {
            ROWS: self.rows,
            CANDIDATES: self.rows * self.most_candidates,
            ELEMENTS: self.rows * sum(self.most_values.values()),
        }


def count_example_values(examples: Sequence[tf.train.Example], rows: int) -> ExampleCounts:
    most: Dict[str, int] = {}
    for example in examples:
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            count = len(getattr(feature, kind).value) if kind else 0
            most[name] = max(most.get(name, 0), count)
    candidates = most.pop(CANDIDATE_ITEMS, 0)
    return ExampleCounts(rows, candidates, most)


def direct_bytes(request_bytes: int, elements: int, string_bytes: int, outputs: int) -> int:
    """What the server holds for a request outside the model run: the received message and
    its parsed proto, each input as numpy and as a fed tensor, the response."""
    return (
        2 * request_bytes
        + ELEMENT_OVERHEAD * elements
        + 2 * string_bytes
        + OUTPUT_OVERHEAD * outputs
    )


# ----------------------------------------------------------------------------- costs


@dataclasses.dataclass(frozen=True)
class SignatureCost:
    """Bytes the base probe allocated, its measures, and bytes per unit of each measure."""

    base: float
    base_measures: Dict[str, int]
    per_unit: Dict[str, float]
    measured: bool = True

    def model_bytes(self, measures: Mapping[str, int]) -> float:
        """SAFETY_FACTOR x what the model run will allocate (a bound of what it holds)."""
        total = self.base
        for name, count in measures.items():
            rate = self.per_unit.get(name)
            if rate is None and name.startswith(TEXT):
                rate = self.per_unit.get(BYTES, 0.0)
            total += (rate or 0.0) * max(0, count - self.base_measures.get(name, 0))
        return SAFETY_FACTOR * total

    def per_candidate(self) -> Optional[float]:
        rate = self.per_unit.get(CANDIDATES)
        return None if rate is None else SAFETY_FACTOR * rate

    def terms(self, measures: Mapping[str, int], top: int = 3) -> List[str]:
        """The largest parts of the estimate, as text."""
        parts = []
        for name, count in measures.items():
            rate = self.per_unit.get(
                name, self.per_unit.get(BYTES, 0.0) if name.startswith(TEXT) else 0.0
            )
            extra = max(0, count - self.base_measures.get(name, 0))
            if rate and extra:
                unit = "bytes of " + name[len(TEXT) :] if name.startswith(TEXT) else name
                parts.append(
                    (
                        rate * extra,
                        f"{count:,} {unit} at " f"~{format_bytes(SAFETY_FACTOR * rate)} each",
                    )
                )
        return [text for _, text in sorted(parts, reverse=True)[:top]]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What scoring one request will hold: the model run (its signature's cost of its
    measures) and what the server holds besides (direct_bytes)."""

    cost: SignatureCost
    measures: Dict[str, int]
    request_bytes: int
    elements: int
    string_bytes: int
    outputs: int

    @property
    def total(self) -> int:
        return int(
            math.ceil(
                self.cost.model_bytes(self.measures)
                + direct_bytes(self.request_bytes, self.elements, self.string_bytes, self.outputs)
            )
        )

    def with_candidates(self, per_row: int) -> "Estimate":
        """The same request with `per_row` candidates per row (same text per candidate)."""
        rows = self.measures[ROWS]
        old = self.measures[CANDIDATES]
        text = self.measures.get(TEXT + CANDIDATES_INPUT, 0)
        new_text = text * rows * per_row // old if old else 0
        measures = dict(self.measures, **{CANDIDATES: rows * per_row})
        if TEXT + CANDIDATES_INPUT in measures:
            measures[TEXT + CANDIDATES_INPUT] = new_text
        return dataclasses.replace(
            self,
            measures=measures,
            elements=self.elements - old + rows * per_row,
            string_bytes=self.string_bytes - text + new_text,
            outputs=rows * per_row,
        )

    def most_candidates(self, cap: int) -> Optional[int]:
        """The most candidates per row that keep this request (same rows, histories and
        text) within `cap` bytes; None for a request without candidates."""
        if not self.measures.get(ROWS) or CANDIDATES not in self.measures:
            return None
        one, two = self.with_candidates(1).total, self.with_candidates(2).total
        if one > cap:
            return 0
        fit = 1 + int((cap - one) // max(two - one, 1))
        while fit > 1 and self.with_candidates(fit).total > cap:  # integer rounding
            fit -= 1
        return fit


def fallback_cost(kind: str) -> SignatureCost:
    rate = float(FALLBACK_BYTES_PER_UNIT)
    units = (
        [ROWS, CANDIDATES, REC_SLOTS, SEARCH_SLOTS, CLICKS, BYTES]
        if kind == "raw"
        else [ROWS, CANDIDATES, ELEMENTS, BYTES]
    )
    return SignatureCost(0.0, {}, {name: rate for name in units}, measured=False)


def _allocated_bytes(run_metadata: tf.compat.v1.RunMetadata) -> int:
    """Bytes a traced run allocated in all, from every allocator's allocation records."""
    return sum(
        record.alloc_bytes
        for device in run_metadata.step_stats.dev_stats
        for node in device.node_stats
        for memory in node.memory
        for record in memory.allocation_records
        if record.alloc_bytes > 0
    )


def _read_online(export_dir: str) -> Tuple[Dict[str, int], List[bytes]]:
    """(the model's sequence shapes, a few known item ids) from assets.extra/online, or
    ({}, []) for exports without it."""
    online = os.path.join(export_dir, ONLINE_DIR)
    shapes: Dict[str, int] = {}
    items: List[bytes] = []
    try:
        with open(os.path.join(online, ONLINE_METADATA_FILE)) as handle:
            shapes = {k: int(v) for k, v in json.load(handle).get("shapes", {}).items()}
        with open(os.path.join(online, ONLINE_ITEMS_FILE), "rb") as handle:
            for line in handle:
                if len(items) >= 64:
                    break
                if line.strip():
                    items.append(line.rstrip(b"\n"))
    except (OSError, ValueError, AttributeError):
        return {}, []
    return shapes, items


class _RawProbes:
    """Probe requests of the raw contract for one signature (numpy arrays by input)."""

    def __init__(self, with_query: bool, shapes: Mapping[str, int], items: List[bytes]):
        self.with_query = with_query
        self.full = (
            max(shapes.get("rec_len", 1), 1),
            max(shapes.get("search_len", 1), 1),
            max(shapes.get("clicks_per_session", 1), 1),
            max(shapes.get("query_len", 1), 1),
        )
        self.items = items or [b"i"]

    def _item_ids(self, count: int) -> List[bytes]:
        return [self.items[k % len(self.items)] for k in range(count)]

    def request(
        self,
        rows=1,
        candidates=1,
        rec=None,
        search=None,
        clicks=None,
        text: Optional[Tuple[str, int]] = None,
    ) -> Dict[str, np.ndarray]:
        """One request: `rows` copies of a row with `candidates` candidates and the given
        history sizes (default: the model's full history); `text` = (input, n) puts n bytes
        of one-letter words in that input's first string."""
        full_rec, full_search, full_clicks, query_len = self.full
        rec = full_rec if rec is None else rec
        search = full_search if search is None else search
        clicks = full_clicks if clicks is None else clicks
        words = b" ".join([b"a"] * query_len)
        row = {
            USER_ID_INPUT: np.array([b"u"], dtype=object),
            CANDIDATES_INPUT: np.array([self._item_ids(candidates)], dtype=object),
            REC_ITEMS_INPUT: np.array([self._item_ids(rec)], dtype=object),
            REC_TIMESTAMPS_INPUT: np.arange(rec, dtype=np.int64)[np.newaxis],
            REC_LENGTH_INPUT: np.array([rec], np.int64),
            SEARCH_QUERIES_INPUT: np.array([[words] * search], dtype=object),
            SEARCH_CLICKS_INPUT: np.array([[self._item_ids(clicks)] * search], dtype=object),
            SEARCH_TIMESTAMPS_INPUT: rec + np.arange(search, dtype=np.int64)[np.newaxis],
            SEARCH_LENGTH_INPUT: np.array([search], np.int64),
        }
        if self.with_query:
            row[QUERY_INPUT] = np.array([words], dtype=object)
        if text is not None:
            alias, size = text
            value = row[alias].copy()
            value.flat[0] = (b"a " * (size // 2 + 1))[:size]
            row[alias] = value
        return {name: np.concatenate([value] * rows) for name, value in row.items()}

    def pairs(self) -> Dict[str, Tuple[dict, dict, int]]:
        """measure -> (base request, the request where only it grows, by how much)."""
        minimal = dict(rec=1, search=1, clicks=1)
        p = PROBE_UNITS
        full_rec, full_search, full_clicks, _ = self.full
        base = self.request()
        result = {
            ROWS: (base, self.request(rows=1 + PROBE_ROWS), PROBE_ROWS),
            CANDIDATES: (base, self.request(candidates=1 + p), p),
            REC_SLOTS: (base, self.request(rec=full_rec + p), p),
            SEARCH_SLOTS: (base, self.request(search=full_search + p), p),
            # One session with many clicks: the model gathers it search_len times.
            CLICKS: (self.request(**minimal), self.request(rec=1, search=1, clicks=1 + p), p),
        }
        small = self.request(**minimal)
        for alias, array in small.items():
            if array.dtype == object:
                grown = PROBE_TEXT_BYTES - len(array.flat[0])
                result[TEXT + alias] = (
                    small,
                    self.request(**minimal, text=(alias, PROBE_TEXT_BYTES)),
                    grown,
                )
        return result


def _string_bytes(arrays: Mapping[str, np.ndarray]) -> Dict[str, int]:
    return {
        name: int(sum(len(v) for v in value.flat))
        for name, value in arrays.items()
        if value.dtype == object
    }


def _probe_measures(arrays: Mapping[str, np.ndarray]) -> Dict[str, int]:
    return raw_measures(
        {name: value.shape for name, value in arrays.items()}, _string_bytes(arrays)
    )


def measure_raw_cost(
    session: tf.compat.v1.Session,
    signature: meta_graph_pb2.SignatureDef,
    shapes: Mapping[str, int],
    items: List[bytes],
) -> SignatureCost:
    """Bytes the base probe allocates and each measure's bytes per unit (module doc)."""
    probes = _RawProbes(QUERY_INPUT in signature.inputs, shapes, items)
    fetches = [info.name for info in signature.outputs.values()]
    # Ops one at a time in the calling thread: the same allocations on every run.
    options = tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE, inter_op_thread_pool=-1
    )
    totals: Dict[int, int] = {}

    def run(arrays, traced=True) -> int:
        feeds = {signature.inputs[name].name: value for name, value in arrays.items()}
        if not traced:
            session.run(fetches, feeds)
            return 0
        key = id(arrays)
        if key not in totals:
            metadata = tf.compat.v1.RunMetadata()
            session.run(fetches, feeds, options=options, run_metadata=metadata)
            totals[key] = _allocated_bytes(metadata)
        return totals[key]

    pairs = probes.pairs()
    base_arrays = pairs[ROWS][0]
    run(base_arrays, traced=False)  # the first run of a signature sets things up once
    base = run(base_arrays)
    if base <= 0:
        raise RuntimeError("the traced run recorded no allocations")
    per_unit = {
        name: max(0.0, (run(grown) - run(start)) / units)
        for name, (start, grown, units) in pairs.items()
    }
    return SignatureCost(float(base), _probe_measures(base_arrays), per_unit)


def measure_costs(
    session: tf.compat.v1.Session,
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
    export_dir: str,
    skip: Sequence[str] = (),
) -> Dict[str, SignatureCost]:
    """Each signature's SignatureCost; signatures that cannot be probed get the measured
    signatures' largest coefficients (serving_default: the same model behind tf.Examples)
    or, if none was measured, FALLBACK_BYTES_PER_UNIT."""
    shapes, items = _read_online(export_dir)
    costs: Dict[str, SignatureCost] = {}
    started = time.time()
    for name, signature in signature_defs.items():
        if name in skip or kind_of(signature) != "raw":
            continue
        try:
            costs[name] = measure_raw_cost(session, signature, shapes, items)
        except Exception as e:  # a model the probes do not fit: be conservative
            log.warning(
                "signature %s: cannot measure its memory cost (%s); assuming %s per " "unit",
                name,
                e,
                format_bytes(FALLBACK_BYTES_PER_UNIT),
            )
            costs[name] = fallback_cost("raw")
    measured = [cost for cost in costs.values() if cost.measured]
    for name, signature in signature_defs.items():
        if name in skip or name in costs:
            continue
        kind = kind_of(signature)
        if not measured:
            costs[name] = fallback_cost(kind)
            continue
        largest = {}
        for cost in measured:
            for unit, rate in cost.per_unit.items():
                key = unit
                if kind == "examples" and unit in (REC_SLOTS, SEARCH_SLOTS, CLICKS):
                    key = ELEMENTS
                elif kind == "other" and unit != ROWS:
                    key = BYTES if unit.startswith(TEXT) else ELEMENTS
                elif unit.startswith(TEXT):
                    key = BYTES
                largest[key] = max(largest.get(key, 0.0), rate)
        if kind == "other":  # no idea what an element is: the dearest of all
            largest[ELEMENTS] = max(largest.values())
        costs[name] = SignatureCost(max(cost.base for cost in measured), {}, largest)
    log.info(
        "measured the memory cost of %s in %.1f s: %s",
        sorted(costs),
        time.time() - started,
        ", ".join(
            f"{name} {format_bytes(cost.per_candidate() or 0)}/candidate"
            for name, cost in sorted(costs.items())
            if cost.per_candidate() is not None
        ),
    )
    return costs


# ----------------------------------------------------------------------------- budget


class BudgetExhausted(Exception):
    """The requests in flight hold the budget for longer than this one may wait."""

    def __init__(self, needed: int, in_use: int, limit: int, waited: float):
        super().__init__(f"needs {needed}, {in_use} of {limit} in use")
        self.needed, self.in_use, self.limit, self.waited = needed, in_use, limit, waited


class MemoryBudget:
    """The server-wide bound on the estimated bytes of the requests in flight."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"memory budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextlib.contextmanager
    def reserve(self, nbytes: int, wait_seconds: float) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block; wait up to `wait_seconds` for it.

        Raises BudgetExhausted when it does not fit in time (at once if it never can)."""
        start = time.monotonic()
        with self._changed:
            while self._in_use + nbytes > self.limit:
                left = wait_seconds - (time.monotonic() - start)
                if nbytes > self.limit or left <= 0:
                    raise BudgetExhausted(
                        nbytes, self._in_use, self.limit, time.monotonic() - start
                    )
                self._changed.wait(left)
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()


def request_string_bytes(
    checked: Mapping[str, Tuple[tensor_pb2.TensorProto, List[int]]], expanded
) -> Tuple[Dict[str, Sequence[int]], Dict[str, int], int]:
    """(dims by input, expanded string bytes by string input, all elements) of checked
    inputs; `expanded(tensor, dims)` -> (elements, bytes) (serving.server.expanded_size)."""
    dims, strings, elements = {}, {}, 0
    for alias, (tensor, shape) in checked.items():
        count, size = expanded(tensor, shape)
        dims[alias] = shape
        elements += count
        if tensor.dtype == types_pb2.DT_STRING:
            strings[alias] = size
    return dims, strings, elements
