"""`streamrec bench explain` measures what it says: the ranking run and the explanation run it reports."""

from streamrec.harness.bench.train import explain_cost


def test_explain_cost_times_the_ranking_and_the_explanation_of_each_request_size():
    result = explain_cost(repeats=1)
    assert result["groups"] >= 9  # user, item, category + the ranker's dense features
    assert [r["requests"] for r in result["rows"]] == [1, 256]
    for row in result["rows"]:
        assert row["rank_rows"] == row["requests"] * 200
        assert row["explain_rows"] == row["requests"] * 10 * (result["groups"] + 1)
        assert 0 < row["rank_best_ms"] <= row["rank_median_ms"]
        assert 0 < row["explain_best_ms"] <= row["explain_median_ms"]
