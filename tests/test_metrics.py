"""harness.definitions.metrics against scikit-learn and scipy, on fixed cases and hypothesis-generated ones."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from harness.definitions import metrics
from harness.definitions.tasks import TASK_TYPES

labels = st.integers(min_value=0, max_value=4)


@st.composite
def label_pairs(draw, min_size=1, max_size=60):
    n = draw(st.integers(min_size, max_size))
    y_true = draw(arrays(np.int64, n, elements=labels))
    y_pred = draw(arrays(np.int64, n, elements=labels))
    return y_true, y_pred


@st.composite
def score_pairs(draw, min_size=3, max_size=60, ties=False):
    """Pairs of score vectors; with `ties`, values come from a few levels so ranks tie often."""
    n = draw(st.integers(min_size, max_size))
    elements = (st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]) if ties
                else st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 4)))  # no 1e-300 underflow
    y_true = draw(arrays(np.float64, n, elements=elements))
    y_pred = draw(arrays(np.float64, n, elements=elements))
    return y_true, y_pred


def _is_constant(x) -> bool:
    return np.ptp(x) == 0


@settings(max_examples=150, deadline=None)
@given(label_pairs())
def test_accuracy_matches_sklearn(pair):
    y_true, y_pred = pair
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))


@settings(max_examples=150, deadline=None)
@given(label_pairs())
def test_macro_f1_matches_sklearn(pair):
    y_true, y_pred = pair
    expected = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(score_pairs())
def test_pearson_matches_scipy(pair):
    y_true, y_pred = pair
    if _is_constant(y_true) or _is_constant(y_pred):
        assert metrics.pearson(y_true, y_pred) == 0.0  # scipy says NaN; a constant predicts nothing
    else:
        assert metrics.pearson(y_true, y_pred) == pytest.approx(pearsonr(y_true, y_pred)[0], abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(st.one_of(score_pairs(ties=True), score_pairs()))
def test_spearman_matches_scipy_including_ties(pair):
    y_true, y_pred = pair
    if _is_constant(y_true) or _is_constant(y_pred):
        assert metrics.spearman(y_true, y_pred) == 0.0
    else:
        assert metrics.spearman(y_true, y_pred) == pytest.approx(spearmanr(y_true, y_pred)[0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(3, 40), st.integers(0, 2**32 - 1))
def test_batched_rows_equal_one_by_one(b, n, seed):
    """A (b, n) call scores each row as the (n,) call would: the bootstrap relies on this."""
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 3, (b, n)), rng.integers(0, 3, (b, n))
    s_true, s_pred = rng.normal(size=(b, n)).round(1), rng.normal(size=(b, n)).round(1)
    for name, (t, p) in {"accuracy": (y_true, y_pred), "macro_f1": (y_true, y_pred),
                         "pearson": (s_true, s_pred), "spearman": (s_true, s_pred)}.items():
        batched = metrics.FUNCTIONS[name](t, p)
        assert batched.shape == (b,)
        np.testing.assert_allclose(batched, [metrics.FUNCTIONS[name](t[i], p[i]) for i in range(b)], atol=1e-12)


def test_known_values():
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    # per class F1: 1, 2/3, 2/3
    assert metrics.macro_f1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert metrics.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert metrics.spearman([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)


def test_macro_f1_counts_labels_only_predicted():
    """A label that is predicted but absent from y_true lowers macro-F1, as in scikit-learn."""
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics.macro_f1(y_true, y_pred) < metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, 1])


def test_unbatched_input_returns_python_float():
    assert isinstance(metrics.accuracy([1, 0], [1, 1]), float)
    assert isinstance(metrics.spearman([1.0, 0.0, 2.0], [1.0, 1.5, 2.0]), float)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.accuracy([0, 1, 2], [0, 1])


@pytest.mark.parametrize("task", sorted(TASK_TYPES))
def test_score_reports_the_task_metrics_and_its_main_metric(task):
    y = np.array([0.0, 1.0, 2.0, 1.0])
    result = metrics.score(task, y, y)
    assert set(result) == set(TASK_TYPES[task].metrics)
    assert TASK_TYPES[task].main_metric in result
    assert all(v == pytest.approx(1.0) for v in result.values())
