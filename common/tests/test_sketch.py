"""Unit tests for telemetry_common.domain.sketch: stated relative error, library parity, merging."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.domain.sketch import RELATIVE_ACCURACY, QuantileSketch, bin_key, bin_value

PROPS = settings(database=None, deadline=None, max_examples=300)
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)

values_strategy = st.lists(
    st.one_of(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False),
        st.just(0.0),
        st.floats(min_value=1e-6, max_value=1e3),
    ),
    min_size=1,
    max_size=200,
)


def exact_quantile(values: list[float], q: float) -> float:
    """The value DDSketch promises to approximate: rank floor(q * (n - 1)) of the sorted values."""
    return sorted(values)[math.floor(q * (len(values) - 1))]


def sketch_of(values: Iterable[float]) -> QuantileSketch:
    sketch = QuantileSketch()
    for value in values:
        sketch.add_key(bin_key(value))
    return sketch


def quantile(sketch: QuantileSketch, q: float) -> float | None:
    """One quantile, the plain way (the oracle ``quantiles`` is checked against): the bin
    holding rank floor(q * (n - 1))."""
    total = sketch.count
    if total == 0:
        return None
    seen = 0
    for key in sorted(sketch.bins):
        seen += sketch.bins[key]
        if seen > q * (total - 1):
            return bin_value(key)
    return bin_value(max(sketch.bins))


def within_bound(estimate: float, exact: float) -> bool:
    # Values too small for the mapping (below about 2.2e-308) count as zero.
    return abs(estimate - exact) <= RELATIVE_ACCURACY * abs(exact) + 1e-300


@PROPS
@given(values_strategy)
def test_every_quantile_is_within_the_stated_relative_error(values: list[float]) -> None:
    sketch = sketch_of(values)
    for q in QUANTILES:
        estimate = quantile(sketch, q)
        assert estimate is not None
        assert within_bound(estimate, exact_quantile(values, q)), q


@PROPS
@given(values_strategy)
def test_quantiles_equal_the_ddsketch_library(values: list[float]) -> None:
    ours = sketch_of(values)
    library = DDSketch(RELATIVE_ACCURACY)
    for v in values:
        library.add(v)
    for q in QUANTILES:
        assert quantile(ours, q) == library.get_quantile_value(q), q


def test_accuracy_on_a_large_skewed_sample() -> None:
    rnd = random.Random(7)
    values = [rnd.lognormvariate(3, 1.5) for _ in range(50_000)]
    sketch = sketch_of(values)
    worst = max(
        abs(quantile(sketch, q) - exact_quantile(values, q)) / exact_quantile(values, q)
        for q in (0.5, 0.95, 0.99)
    )
    assert worst <= RELATIVE_ACCURACY
    # A few hundred bins summarise 50,000 values spread over four orders of magnitude.
    assert len(sketch.bins) < 600


@PROPS
@given(st.lists(values_strategy, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_merging_in_any_order_equals_one_sketch(groups: list[list[float]], rnd) -> None:
    parts = [sketch_of(g) for g in groups]
    rnd.shuffle(parts)
    merged = QuantileSketch()
    for part in parts:
        merged.merge(part)
    assert merged == sketch_of(v for g in groups for v in g)


@PROPS
@given(values_strategy)
def test_several_quantiles_at_once_equal_one_at_a_time(values: list[float]) -> None:
    sketch = sketch_of(values)
    qs = {f"q{i}": q for i, q in enumerate(QUANTILES)}
    assert sketch.quantiles(qs) == {name: quantile(sketch, q) for name, q in qs.items()}


def test_signed_keys_sort_like_their_values() -> None:
    ordered = [-1e6, -2.0, -1e-9, 0.0, 1e-9, 0.5, 2.0, 1e6]
    keys = [bin_key(v) for v in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_document_round_trip() -> None:
    sketch = sketch_of([-3.0, 0.0, 1.5, 1.5, 900.0])
    doc = sketch.to_document()
    assert all(isinstance(k, str) for k in doc["bins"])
    assert QuantileSketch.from_document(doc) == sketch
    assert QuantileSketch.from_document(None) == QuantileSketch()


def test_a_sketch_of_another_accuracy_is_refused() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        QuantileSketch.from_document({"relative_accuracy": 0.02, "bins": {"1": 1}})


def test_empty_sketch_has_no_quantiles() -> None:
    assert QuantileSketch().quantiles() == {"p50": None, "p95": None, "p99": None}


@pytest.mark.parametrize("value", [1.7976931348623157e308, -1.7976931348623157e308, 1e308])
def test_values_at_the_top_of_the_float_range_are_served_finite_and_close(value: float) -> None:
    # A device may send any finite number; its bucket must still be served.
    served = bin_value(bin_key(value))
    assert math.isfinite(served)
    assert abs(served - value) <= RELATIVE_ACCURACY * abs(value) * 1.0001
