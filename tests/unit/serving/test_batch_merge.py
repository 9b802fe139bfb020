"""The scorer's batch merge on catalog ids gives exactly what the string reference gives, on random inputs."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamrec.serving.candidates import (COVISIT, SEQ, TRENDING, CovisTable, IdSource, ReasonTable, Source, merge, merge_batch,
                                          proposers)
from streamrec.serving.catalog import ItemCatalog
from streamrec.serving.exploration import choose, choose_all, greedy_slates

ITEMS = [f"i{k}" for k in range(40)]
items = st.lists(st.sampled_from(ITEMS), max_size=25, unique=True)
request = st.tuples(items, items, items, items, st.lists(st.sampled_from(ITEMS), max_size=8))
"""co-visitation, sequence, graph and trending items of one request, and the items it excludes."""


def _id_sources(catalog: ItemCatalog, reasons: ReasonTable, sources: list[Source]) -> list[IdSource]:
    out = []
    for s in sources:
        codes = np.array([reasons.code(r) for r in s.reasons], dtype=np.int64) if s.reasons is not None else None
        weights = np.asarray(s.scores, dtype=np.float64) if s.reason == COVISIT else None
        out.append(IdSource(reasons.code(s.reason), catalog.ids(s.items), codes, weights))
    return out


def _string_sources(covis, seq, graph, trending) -> list[Source]:
    return [Source(COVISIT, covis, [1.0 + k for k in range(len(covis))], [f"covisit:{ITEMS[k % 3]}" for k in
                                                                           range(len(covis))]),
            Source(SEQ, seq), Source("graph", graph), Source(TRENDING, trending)]


@given(st.lists(request, min_size=1, max_size=6), st.integers(0, 60))
def test_batch_merge_equals_the_reference_merge_of_each_request(batch, limit):
    catalog, reasons = ItemCatalog(), ReasonTable()
    catalog.ids(ITEMS[::-1])  # catalog ids in another order than the names
    strings = [_string_sources(*r[:4]) for r in batch]
    sources = [_id_sources(catalog, reasons, s) for s in strings]
    exclude = [catalog.ids(r[4]) for r in batch]
    merged = merge_batch(sources, exclude, limit, len(catalog))
    assert len(merged) == len(batch)
    for i, (r, srcs) in enumerate(zip(batch, strings)):
        want = merge(srcs, set(r[4]), limit)
        span = merged.span(i)
        assert catalog.names_of(merged.items[span]) == want.items
        assert [reasons.names[c] for c in merged.reasons[span].tolist()] == want.reasons
        weight = dict(zip(srcs[0].items, srcs[0].scores))
        assert merged.covis[span].tolist() == [weight.get(item, 0.0) for item in want.items]
        assert merged.counts(i, reasons) == want.counts()
        served = want.items[:10] + ["never-proposed"]
        assert merged.proposers(i, catalog.ids(served), reasons) == list(proposers(srcs, served).values())


@given(st.lists(request, min_size=1, max_size=5), st.integers(0, 40))
def test_dropping_removed_items_keeps_each_requests_order(batch, limit):
    catalog, reasons = ItemCatalog(), ReasonTable()
    strings = [_string_sources(*r[:4]) for r in batch]
    merged = merge_batch([_id_sources(catalog, reasons, s) for s in strings], [catalog.ids(r[4]) for r in batch],
                         limit, len(catalog))
    removed = set(ITEMS[::3])
    kept = merged.keep(np.array([catalog.names[j] not in removed for j in merged.items.tolist()], dtype=bool))
    for i in range(len(batch)):
        before = catalog.names_of(merged.items[merged.span(i)])
        assert catalog.names_of(kept.items[kept.span(i)]) == [x for x in before if x not in removed]


@given(st.lists(st.lists(st.integers(0, 4), max_size=30), min_size=1, max_size=8), st.integers(0, 12))
def test_greedy_slates_are_the_stable_sort_of_each_request(scores, n):
    arrays = [np.asarray(s, dtype=np.float32) / 4 for s in scores]  # few distinct values: many ties
    got = greedy_slates(arrays, n)
    for s, idx in zip(arrays, got):
        assert idx.tolist() == np.argsort(-s.astype(np.float64), kind="stable")[:n].tolist()
    picks = choose_all(arrays, n)
    assert [p[0].tolist() for p in picks] == [choose(s, n)[0].tolist() for s in arrays]


def test_exploring_batches_draw_as_request_by_request_choices_do():
    rng_scores = np.random.default_rng(3)
    arrays = [rng_scores.random(50) for _ in range(4)]
    batch = choose_all(arrays, 5, "epsilon", epsilon=0.5, rng=np.random.default_rng(7))
    one_by_one, rng = [], np.random.default_rng(7)
    for s in arrays:
        one_by_one.append(choose(s, 5, "epsilon", epsilon=0.5, rng=rng))
    for (a, pa, ea), (b, pb, eb) in zip(batch, one_by_one):
        assert a.tolist() == b.tolist() and pa.tolist() == pb.tolist() and ea.tolist() == eb.tolist()
    assert any(e.any() for _, _, e in batch)  # epsilon 0.5 over 20 slots explores


lists = st.dictionaries(st.sampled_from(ITEMS[:8]),
                        st.lists(st.tuples(st.sampled_from(ITEMS), st.integers(1, 4).map(float)), max_size=6,
                                 unique_by=lambda p: p[0]), max_size=8)


@given(lists, st.lists(st.lists(st.sampled_from(ITEMS[:10]), max_size=4, unique=True), min_size=1, max_size=5),
       st.integers(1, 12))
def test_covisitation_sums_of_a_batch_equal_a_plain_sum_per_session(table_lists, recents, limit):
    table = CovisTable(table_lists)
    got, via = table.summed(recents, limit)
    for recent, (ids, weights, origin) in zip(recents, got):
        total, lead = {}, {}
        for src in recent:  # newest first: the first list naming an item gives its reason
            for item, w in table_lists.get(src, []):
                total[item] = total.get(item, 0.0) + w
                lead.setdefault(item, src)
        want = sorted(total, key=lambda item: -total[item])[:limit]  # sorted() is stable: first appearance
        assert table.catalog.names_of(ids) == want
        assert weights.tolist() == [total[i] for i in want]
        assert [via[o] for o in origin.tolist()] == [lead[i] for i in want]
