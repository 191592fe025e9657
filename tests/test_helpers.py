"""The whole-table comparison helper fails where it should, and names what differs."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import assert_rows_equal

ROWS = [
    {"sop": "1", "frame": 0, "label": "a", "score": 0.5},
    {"sop": "1", "frame": 1, "label": "b", "score": 0.25},
    {"sop": "2", "frame": None, "label": None, "score": None},
]


def test_equal_in_any_order_and_from_pandas():
    assert_rows_equal(list(reversed(ROWS)), ROWS, keys=["sop", "frame"])
    assert_rows_equal(pd.DataFrame(ROWS[:2]), ROWS[:2], keys=["sop", "frame"])


def test_a_differing_value_names_row_column_and_values():
    changed = [dict(ROWS[0], label="z"), *ROWS[1:]]
    with pytest.raises(AssertionError, match=r"row \('1', 0\), column label: 'z' != expected 'a'"):
        assert_rows_equal(changed, ROWS, keys=["sop", "frame"])


def test_missing_extra_and_duplicate_rows_fail():
    with pytest.raises(AssertionError, match="1 row\\(s\\) missing"):
        assert_rows_equal(ROWS[:2], ROWS, keys=["sop", "frame"])
    with pytest.raises(AssertionError, match="1 extra"):
        assert_rows_equal(ROWS, ROWS[:2], keys=["sop", "frame"])
    with pytest.raises(AssertionError, match="two rows with key"):
        assert_rows_equal(ROWS, ROWS, keys=["sop"])


def test_empty_tables_prove_nothing_unless_allowed():
    with pytest.raises(AssertionError, match="prove nothing"):
        assert_rows_equal([], [], keys=["sop"])
    assert_rows_equal([], [], keys=["sop"], allow_empty=True)


def test_columns_drop_and_approx():
    noisy = [dict(r, score=None if r["score"] is None else r["score"] + 1e-7) for r in ROWS]
    with pytest.raises(AssertionError, match="column score"):
        assert_rows_equal(noisy, ROWS, keys=["sop", "frame"])
    assert_rows_equal(noisy, ROWS, keys=["sop", "frame"], approx=["score"])
    assert_rows_equal(noisy, ROWS, keys=["sop", "frame"], drop=["score"])
    assert_rows_equal(noisy, ROWS, keys=["sop", "frame"], columns=["sop", "frame", "label"])
