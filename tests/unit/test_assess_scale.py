"""assess's near-duplicate search stays bounded on large sets: past a comparison budget it queries a fixed sample of
texts (each against all texts) and says so in the assessment's notes."""

from __future__ import annotations

import numpy as np

from loratune import assess as A
from loratune.assess import profile as P

from test_assess import clean_rows, make_dataset


def test_query_count_is_capped_and_linear():
    assert P.neighbour_queries(8_000) == 8_000  # every text queried up to the budget
    assert P.neighbour_queries(25_000) == P.NEIGHBOUR_COMPARISONS_MAX // 25_000
    assert P.neighbour_queries(1_000_000) == P.NEIGHBOUR_QUERIES_MIN
    for n in (10_000, 100_000, 1_000_000):
        assert P.neighbour_queries(n) * n <= max(P.NEIGHBOUR_COMPARISONS_MAX, P.NEIGHBOUR_QUERIES_MIN * n)
    assert P.neighbour_sample_note(8_000) is None
    assert "2,560 of 25,000" in P.neighbour_sample_note(25_000)


def test_sampled_rows_equal_the_full_search_and_the_rest_are_skipped(monkeypatch):
    train, val = clean_rows()
    texts = list(dict.fromkeys(t for t, _ in train + val))
    full_s, full_i = P.char_neighbours(texts, 5)
    monkeypatch.setattr(P, "NEIGHBOUR_COMPARISONS_MAX", 40 * len(texts))
    monkeypatch.setattr(P, "NEIGHBOUR_QUERIES_MIN", 10)
    s, i = P.char_neighbours(texts, 5)
    queried = np.flatnonzero(s[:, 0] > 0)
    assert len(queried) == P.neighbour_queries(len(texts)) == 40
    np.testing.assert_allclose(s[queried], full_s[queried], atol=1e-6)
    rest = np.setdiff1d(np.arange(len(texts)), queried)
    assert (s[rest] == 0).all() and (i[rest] == rest[:, None]).all()  # (0.0, itself): below every threshold
    again = P.char_neighbours(texts, 5)  # deterministic
    assert (again[1] == i).all()


def test_assess_notes_the_sample(monkeypatch):
    train, val = clean_rows()
    assert not any("sample" in n for n in A.assess_dataset(make_dataset(train, val)).notes)
    monkeypatch.setattr(P, "NEIGHBOUR_COMPARISONS_MAX", 1_000)
    monkeypatch.setattr(P, "NEIGHBOUR_QUERIES_MIN", 10)
    a = A.assess_dataset(make_dataset(train, val))
    note = next(n for n in a.notes if "sample" in n)
    assert "of 120 unique texts" in note and "lower bounds" in note
    assert a.to_dict()["notes"] == list(a.notes)
