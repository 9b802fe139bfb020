"""Explanations (leave-one-group-out on the ranker): plain words, groups from the version's meta,
honesty against the ranker itself, stability, and the optional message field.

The ranker here is a DCN-V2 of the trainer's class with *planted* weights: its
logit is a known linear function of the standardised dense features and of one
embedding coordinate of the user and the item, so which way each group must
push every score is known without the code under test.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest

from streamrec.registry import Registry
from streamrec.serving.explain import (FEATURES, ID_GROUPS as ID_WORDS, MIN_EFFECT, Explainer, ItemFacts, explainer_for,
                                       feature_words, groups_of)
from streamrec.serving.features import DENSE_FEATURES, NEVER_HOURS
from streamrec.settings import Settings
from streamrec.stream import schemas
from streamrec.stream.schemas import Contribution, Recommendation, RecommendedItem

PLANTED = {"item_log_views": 1.0, "item_ctr": 1.5, "item_recency": -1.0, "category_affinity": 1.2}
"""Head weights on the standardised dense features; every other dense feature weighs 0."""
TRAIN_STATS = {"item_log_views": (2.0, 1.0), "item_ctr": (0.12, 0.05), "item_recency": (5.0, 2.0),
               "session_length": (1.0, 0.5), "category_affinity": (0.3, 0.2)}
"""(mean, std) of the planted training set per dense feature; others (0, 1)."""
USER_W, ITEM_W = 0.8, 0.5
ID_GROUPS = {"user": [0, 1], "item": [2, 3], "category": [4]}


def planted_dcn(fit_stats: bool = True):
    """A DCNRanker whose logit = sum_f w_f (x_f - mean_f) / std_f + USER_W * u[0] + ITEM_W * i[0]."""
    import torch

    from streamrec.trainer.dcn import DENSE_FEATURES as TRAINED, DCNRanker

    torch.manual_seed(0)
    model = DCNRanker(user_buckets=64, item_buckets=64, cat_buckets=16, dim=4, cross_layers=1, hidden=(8,))
    if fit_stats:
        rng = np.random.default_rng(0)
        mean = np.array([TRAIN_STATS.get(f, (0.0, 1.0))[0] for f in TRAINED])
        std = np.array([TRAIN_STATS.get(f, (0.0, 1.0))[1] for f in TRAINED])
        z = rng.normal(size=(4000, len(TRAINED)))
        z = (z - z.mean(0)) / z.std(0)  # exactly the planted mean and std
        model.set_dense_stats((z * std + mean).astype(np.float32))
    dim = model.config["dim"]
    with torch.no_grad():
        for p in list(model.cross.parameters()) + list(model.deep.parameters()):
            p.zero_()  # cross layers pass x0 through; the deep tower outputs 0
        model.head.weight.zero_()
        model.head.bias.zero_()
        for name, w in PLANTED.items():
            model.head.weight[0, 3 * dim + TRAINED.index(name)] = w
        model.head.weight[0, 0], model.head.weight[0, dim] = USER_W, ITEM_W
        model.users.weight[:, 0] = torch.linspace(-0.5, 0.5, 64)
        model.items.weight[:, 0] = torch.linspace(0.5, -0.5, 64)
        model.users.weight[0] = model.items.weight[0] = 0.0  # padding rows: the "unknown id" baseline
    return model


def publish_planted(registry_uri: str, tmp_path, version: str = "v1", settings: Settings | None = None,
                    send: bool = False, fit_stats: bool = True, name: str = "ranker"):
    """Export (parity-checked) and publish the planted ranker as ``NAME/VERSION``; returns (model, folder, meta)."""
    from streamrec.trainer.export import export_dcn
    from streamrec.trainer.publish import publish

    model = planted_dcn(fit_stats)
    exported = export_dcn(model, tmp_path / f"planted-{version}")
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    s = (settings or Settings()).replace(registry_uri=registry_uri)
    meta, _ = publish(s, name, exported, kind=model.kind, metrics={"auc": 0.5}, data_window={},
                      hashing=hashing, version=version, send=send)
    return model, Registry(registry_uri).location(name, version), meta


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from streamrec.serving.ranking import Ranker

    tmp = tmp_path_factory.mktemp("explain")
    model, folder, meta = publish_planted(str(tmp / "registry"), tmp)
    return model, folder, meta, Ranker(folder, meta, device="cpu")


def batch(ranker, n: int = 12, seed: int = 1):
    """Realistic raw inputs: distinct users and items, dense features around the training statistics."""
    rng = np.random.default_rng(seed)
    sparse = ranker.sparse([f"u{k % 3}" for k in range(n)], [f"i{k}" for k in range(n)],
                           ["shoes" if k % 2 else "books" for k in range(n)])
    cols = []
    for name in ranker.dense_features:
        mean, std = TRAIN_STATS.get(name, (0.0, 1.0))
        cols.append(mean + std * rng.normal(size=n) * 1.5)
    dense = np.stack(cols, 1)
    dense[:, ranker.dense_features.index("item_ctr")] = np.clip(dense[:, ranker.dense_features.index("item_ctr")],
                                                                0.01, 1)
    return sparse, dense.astype(np.float32)


def neutralised(model, ranker, group: str, sparse: np.ndarray, dense: np.ndarray):
    """The test's own neutralisation: ids to bucket 0, a dense feature to the torch model's training mean."""
    sparse, dense = sparse.copy(), dense.copy()
    if group in ID_GROUPS:
        sparse[:, ID_GROUPS[group]] = 0
    else:
        j = ranker.dense_features.index(group)
        dense[:, j] = float(model.dense_mean[j])
    return sparse, dense


# --- plain words ------------------------------------------------------------------------------ #
@pytest.mark.parametrize("feature,up,value,facts,text", [
    ("category_affinity", True, 0.7, ItemFacts("shoes", 3, 0.8), "viewed 3 similar items (shoes) in this session"),
    ("category_affinity", True, 0.7, ItemFacts("shoes", 1, 0.8), "viewed 1 similar item (shoes) in this session"),
    ("category_affinity", True, 0.7, ItemFacts("shoes", 0, 0.25), "you often choose shoes (25% of your history)"),
    ("category_affinity", False, 0.02, ItemFacts("books", 0, None), "books is new to you"),
    ("category_affinity", False, 0.05, ItemFacts("books", 0, 0.04), "you seldom choose books (4% of your history)"),
    ("item_log_views", True, math.log1p(12), ItemFacts(), "popular right now (12 recent interactions)"),
    ("item_log_views", False, 0.0, ItemFacts(), "no interactions yet"),
    ("item_ctr", True, 0.123, ItemFacts(), "often clicked when shown (12% of impressions)"),
    ("item_ctr", False, 0.02, ItemFacts(), "rarely clicked when shown (2% of impressions)"),
    ("item_recency", True, math.log1p(NEVER_HOURS), ItemFacts(), "new: nobody has interacted with it yet"),
    ("item_recency", True, math.log1p(0.25), ItemFacts(), "active right now (last interaction 15 min ago)"),
    ("item_recency", False, math.log1p(72), ItemFacts(), "quiet lately (last interaction 3 days ago)"),
    ("session_length", True, math.log1p(4), ItemFacts(), "suits a session of 4 interactions like yours"),
    ("session_length", False, math.log1p(1), ItemFacts(), "less suited to a session of 1 interaction like yours"),
    ("user_h1", True, None, ItemFacts(), "matches your taste as learnt from your past"),
    ("category", False, None, ItemFacts("books"), "books items do less well"),
    ("seq_score", True, 1.3, ItemFacts(), "follows on from what you viewed"),
    ("segment_popularity", True, 0.4, ItemFacts(), "popular in your segment"),
    ("content_similarity", False, 0.1, ItemFacts(), "unlike what you viewed in content"),
    ("price_rank", False, 1.5, ItemFacts(), "price rank (1.5) lowered the score"),
])
def test_plain_words(feature, up, value, facts, text):
    render = ID_WORDS[feature][1] if feature in ID_WORDS else feature_words(feature).render
    assert render(up, value, facts) == text


def test_the_words_table_names_features_the_scorer_computes():
    assert set(FEATURES) <= set(DENSE_FEATURES), "a typo in FEATURES would silently fall back to generic words"


def test_groups_come_from_the_versions_meta_and_new_features_get_generic_words():
    meta = SimpleNamespace(extra={"dense_features": ["item_ctr", "segment_pop", "brand_new"],
                                  "dense_baseline": {"item_ctr": 0.07, "brand_new": 3.0}})
    groups = groups_of(meta, meta.extra["dense_features"])
    assert [g.name for g in groups] == ["user", "item", "category", "item_ctr", "segment_pop", "brand_new"]
    by = {g.name: g for g in groups}
    assert by["user"].sparse_cols == (0, 1) and by["item"].sparse_cols == (2, 3) and by["category"].sparse_cols == (4,)
    assert by["item_ctr"].baseline == (0.07,) and by["item_ctr"].baseline_source == "training mean"
    assert by["segment_pop"].baseline == (0.0,) and by["segment_pop"].baseline_source == "declared neutral value"
    assert by["brand_new"].dense_cols == (2,) and by["brand_new"].render(True, 2.0, ItemFacts()) == \
        "brand new (2) raised the score"
    # Without training means (an old or never-fitted version): the declared no-information values.
    bare = groups_of(SimpleNamespace(extra={}), ["item_ctr", "item_recency"])
    assert [g.baseline for g in bare[3:]] == [(FEATURES["item_ctr"].neutral,), (FEATURES["item_recency"].neutral,)]


def test_export_writes_the_training_means_only_when_the_ranker_learnt_them(tmp_path):
    from streamrec.trainer.dcn import DENSE_FEATURES as TRAINED

    _, _, meta = publish_planted(str(tmp_path / "reg"), tmp_path)
    assert meta.extra["dense_baseline"] == pytest.approx(
        {f: TRAIN_STATS.get(f, (0.0, 1.0))[0] for f in TRAINED}, abs=1e-5)
    _, _, bare = publish_planted(str(tmp_path / "reg"), tmp_path, version="v2", fit_stats=False)
    assert "dense_baseline" not in bare.extra


# --- honesty and stability -------------------------------------------------------------------- #
def test_every_stated_effect_is_what_neutralising_the_group_does_to_the_ranker(planted):
    model, _, _, ranker = planted
    sparse, dense = batch(ranker)
    facts = [ItemFacts("shoes" if k % 2 else "books") for k in range(len(sparse))]
    explainer = explainer_for(ranker)
    explained = explainer.explain(sparse, dense, facts, top=len(explainer.groups))
    full = ranker.score(sparse, dense).astype(np.float64)
    assert all(explained), "the planted ranker moves every score"
    for j, reasons in enumerate(explained):
        effects = [abs(c.effect) for c in reasons]
        assert effects == sorted(effects, reverse=True)
        # Groups that weigh nothing in the planted ranker never move a score, so they are never named.
        assert not {c.group for c in reasons} & ({"category"} | set(ranker.dense_features) - set(PLANTED))
        for c in reasons:
            s, d = neutralised(model, ranker, c.group, sparse[j:j + 1], dense[j:j + 1])
            delta = full[j] - float(ranker.score(s, d)[0])
            assert (delta > 0) == (c.direction == "up"), (j, c)
            assert c.effect == pytest.approx(delta, abs=2e-6)
            assert abs(c.effect) >= MIN_EFFECT
            if c.group in PLANTED:  # and the direction is the planted one: sign of w * standardised value
                k = ranker.dense_features.index(c.group)
                z = (dense[j, k] - float(model.dense_mean[k])) / float(model.dense_std[k])
                assert c.direction == ("up" if PLANTED[c.group] * z > 0 else "down")


def test_the_same_input_gives_the_same_explanation_twice_and_across_instances(planted):
    from streamrec.serving.ranking import Ranker

    _, folder, meta, ranker = planted
    sparse, dense = batch(ranker, seed=7)
    facts = [ItemFacts("shoes", 2, 0.5)] * len(sparse)
    first = explainer_for(ranker).explain(sparse, dense, facts, top=4)
    again = explainer_for(ranker).explain(sparse, dense, facts, top=4)
    other = Explainer(Ranker(folder, meta, device="cpu")).explain(sparse, dense, facts, top=4)
    assert first == again == other
    assert all(len(r) == 4 for r in first)


def test_top_limits_the_reasons_and_keeps_the_largest(planted):
    _, _, _, ranker = planted
    sparse, dense = batch(ranker, seed=3)
    facts = [ItemFacts()] * len(sparse)
    full = explainer_for(ranker).explain(sparse, dense, facts, top=20)
    two = explainer_for(ranker).explain(sparse, dense, facts, top=2)
    assert [r[:2] for r in full] == two
    assert explainer_for(ranker).explain(sparse[:0], dense[:0], [], top=3) == []


# --- the message field ------------------------------------------------------------------------ #
class _OldItem(msgspec.Struct, kw_only=True):
    item_id: str
    score: float
    propensity: float
    reason: str


class _OldRecommendation(msgspec.Struct, kw_only=True):
    rec_id: str
    user_id: str
    session_id: str
    trigger_event_id: str
    items: list[_OldItem]


def test_explanation_is_optional_in_the_message_and_old_consumers_read_it():
    item = RecommendedItem(item_id="i1", score=0.7, propensity=1.0, reason="seq")
    rec = Recommendation(rec_id="r", user_id="u", session_id="s", trigger_event_id="e", items=[item])
    assert b"explanation" not in schemas.encode(rec)  # off by default: not a byte more per message
    item.explanation = [Contribution(group="item_ctr", direction="up", effect=0.0123,
                                     text="often clicked when shown (12% of impressions)")]
    data = schemas.encode(rec)
    old = msgspec.json.decode(data, type=_OldRecommendation)
    assert old.items[0].item_id == "i1" and old.items[0].score == 0.7
    assert msgspec.json.decode(data, type=Recommendation).items[0].explanation == item.explanation


def test_explain_top_below_one_is_refused_naming_the_setting():
    from streamrec.serving.config import ConfigError, ScorerConfig

    with pytest.raises(ConfigError, match="scorer_explain_top"):
        ScorerConfig(explain_top=0)
