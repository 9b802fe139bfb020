"""Feature assembly: batch-first dense matrix with the trainer's feature definitions."""

import math

import numpy as np
import pytest

from streamrec.serving.features import DENSE_FEATURES, ItemStats, RequestContext, dense_matrix
from streamrec.stream.schemas import ScoreRequest

HOUR = 3_600_000


def ctx(user, ts, session_positive=0, user_positive=0, affinity=None):
    r = ScoreRequest(event_id="e", user_id=user, session_id="s", item_id="x", type="view", ts=ts, feature_version=1)
    return RequestContext(r, session_positive=session_positive, user_positive=user_positive,
                          affinity=affinity or {}, known=True)


def stats():
    s = ItemStats.empty(["a", "b", "c"])
    s.views = np.array([9.0, 0.0, 3.0])
    s.clicks = np.array([2.0, 0.0, 0.0])
    s.impressions = np.array([10.0, 0.0, 5.0])
    s.last_ts = np.array([10 * HOUR, np.nan, 12 * HOUR])
    s.categories = ["c1", "c2", "c1"]
    return s


def test_dense_matrix_shape_order_and_values():
    contexts = [ctx("u1", 12 * HOUR, session_positive=3, user_positive=4, affinity={"c1": 0.75, "c2": 0.25}),
                ctx("u2", 14 * HOUR)]
    rows = np.array([0, 1, 2, 2])
    owner = np.array([0, 0, 0, 1])
    seq = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
    m = dense_matrix(DENSE_FEATURES, stats(), rows, contexts, owner, seq)
    assert m.shape == (4, len(DENSE_FEATURES)) and m.dtype == np.float32
    col = {n: m[:, i] for i, n in enumerate(DENSE_FEATURES)}
    assert col["item_log_views"][0] == pytest.approx(math.log1p(9))
    assert col["item_ctr"][0] == pytest.approx(3 / 20) and col["item_ctr"][1] == pytest.approx(0.1)
    assert col["item_recency"][0] == pytest.approx(math.log1p(2.0))      # 2 h since last seen
    assert col["item_recency"][1] == pytest.approx(math.log1p(24 * 365))  # never seen
    assert col["item_recency"][3] == pytest.approx(math.log1p(2.0))      # u2's request is 2 h later
    assert col["session_length"].tolist() == pytest.approx([math.log1p(3)] * 3 + [0.0])
    assert col["category_affinity"][0] == pytest.approx((0.75 * 4 + 0.1) / 5)
    assert col["category_affinity"][3] == pytest.approx(0.1)
    assert col["seq_score"].tolist() == pytest.approx(seq.tolist())


def test_dense_matrix_follows_the_rankers_order_and_refuses_unknown_features():
    contexts = [ctx("u1", HOUR)]
    m = dense_matrix(["seq_score", "item_ctr"], stats(), np.array([0]), contexts, np.array([0]))
    assert m.shape == (1, 2) and m[0, 0] == 0.0
    assert dense_matrix(DENSE_FEATURES, stats(), np.zeros(0, np.int64), contexts,
                        np.zeros(0, np.int64)).shape == (0, len(DENSE_FEATURES))
    with pytest.raises(KeyError, match="price"):
        dense_matrix(["price"], stats(), np.array([0]), contexts, np.array([0]))


def test_dense_features_match_the_trainer():
    trainer_dcn = pytest.importorskip("streamrec.trainer.dcn")
    assert tuple(trainer_dcn.DENSE_FEATURES) == DENSE_FEATURES
