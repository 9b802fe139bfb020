"""The online trainer's learning and gating on synthetic joined slates (no Kafka: publication is not sent).

Honest users click the first shown item of their hidden category; a bot clicks everything.
"""

from __future__ import annotations

import copy
import dataclasses

import msgspec
import numpy as np
import pytest
import torch

from streamrec.settings import Settings
from streamrec.online.attraction import attraction_offsets
from streamrec.trainer.dcn import DENSE_FEATURES, DCNRanker
from streamrec.trainer.export import export_dcn, export_sasrec
from streamrec.online.joiner import Slate
from streamrec.online.learner import LearnerConfig, OnlineLearner
from streamrec.trainer.publish import publish
from streamrec.trainer.sasrec import SASRec
from streamrec.trainer.weights import WEIGHTS, save_weights

ITEMS = [f"i{i}" for i in range(40)]
CATS = {i: f"c{n % 4}" for n, i in enumerate(ITEMS)}


def publish_models(settings, out, seed=0, item_bias=False):
    """Tiny untrained models with their weights, published to the registry (not announced)."""
    torch.manual_seed(seed)
    seq = SASRec(item_buckets=200, cat_buckets=20, dim=8, layers=1, heads=1, max_len=10, dropout=0.0)
    seq.set_catalog(ITEMS, [CATS[i] for i in ITEMS])
    dcn = DCNRanker(user_buckets=100, item_buckets=200, cat_buckets=20, dim=4, hidden=(8,), dropout=0.0,
                    item_bias=item_bias)
    torch.nn.init.zeros_(dcn.head.weight)  # knows nothing yet: every item scores the same
    for name, model, exported in (("sasrec", seq, export_sasrec(seq, out / "seq", ITEMS, CATS)),
                                  ("ranker", dcn, export_dcn(dcn, out / "dcn"))):
        exported.files[WEIGHTS] = save_weights(model, out / name)
        hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
        publish(settings, name, exported, kind=model.kind, metrics={}, data_window={}, hashing=hashing,
                send=False)


def dense(items, u):
    """Ranker features as the scorer would read them: here only the user's category affinity varies."""
    x = np.zeros((len(items), len(DENSE_FEATURES)))
    x[:, DENSE_FEATURES.index("category_affinity")] = [0.8 if CATS[i] == f"c{u % 4}" else 0.05 for i in items]
    return x.tolist()


def slates(n, seed=0, bot=False, start=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        u = int(rng.integers(20))
        user = f"bot{u}" if bot else f"u{u}"
        items = [ITEMS[j] for j in rng.choice(len(ITEMS), 6, replace=False)]
        if bot:
            rewards = [1.0] * 6
        else:
            rewards = [0.0] * 6
            for p, it in enumerate(items):
                if CATS[it] == f"c{u % 4}":
                    rewards[p] = 1.0
                    break
        out.append(Slate(rec_id=f"{'b' if bot else 'r'}{seed}-{k}", user_id=user, session_id="s",
                         variant="default", created_ts=start + k, items=items, propensities=[1.0] * 6,
                         scores=[0.0] * 6, reasons=["seq"] * 6, models=[], rewards=rewards,
                         features={"dense": dense(items, u),
                                   "cats": [CATS[i] for i in items],
                                   "session": [it for it in ITEMS if CATS[it] == f"c{u % 4}"][:3]}))
    return out


@pytest.fixture
def learner(tmp_path):
    s = Settings.from_env().replace(registry_uri=str(tmp_path / "registry"))
    publish_models(s, tmp_path)
    # This world's signal is in the category ids, so the ranker's id embeddings must learn here (the
    # default, 0, leaves them as trained offline).
    cfg = LearnerConfig(dry_run=True, min_gate_samples=100, checkpoint_dir=str(tmp_path / "ckpt"), lr=0.01,
                        seq_lr=0.005, embedding_lr=0.05, epochs_per_round=3)
    lr = OnlineLearner(s, cfg, port=0)
    assert set(lr.models.load()) == {"sasrec", "ranker"}
    return lr


def honest_auc(models, name, which):
    f = models.flat(slates(300, seed=99))
    score = models.ranker_scores if name == "ranker" else models.seq_scores
    metrics, _ = models.gate.evaluate(f["slate_of"], f["reward"], f["propensity"], score(which[name], f))
    return metrics["auc"]


def test_learns_from_honest_slates_and_the_gate_accepts(learner):
    learner._accept(slates(600, seed=1))
    decisions = {d["model"]: d for d in learner.train_round(force_gate=True)}
    assert decisions["ranker"]["accepted"], decisions["ranker"]
    assert decisions["ranker"]["candidate"]["auc"] > decisions["ranker"]["live"]["auc"]
    assert decisions["ranker"]["candidate"]["snips"] >= decisions["ranker"]["live"]["snips"]
    assert honest_auc(learner.models, "ranker", learner.models.cand) > 0.6
    assert "sasrec" in decisions and np.isfinite(decisions["sasrec"]["candidate"]["snips"])
    # The sequence model also learned the users' own next items (each slate's sequence ends with one).
    seq = decisions["sasrec"]
    assert seq["candidate"]["next_item_loss"] < seq["live"]["next_item_loss"], seq


def test_a_sequence_model_that_drifted_from_what_users_browse_is_rejected(learner):
    learner._accept(slates(600, seed=1))
    models = learner.models
    cand = models.cand["sasrec"]
    with torch.no_grad():  # the candidate forgets its catalog: shown items may still order by luck
        for p in cand.parameters():
            p.copy_(torch.randn_like(p) * 3)
    d = models.gate_models(list(learner.holdout))["sasrec"]
    assert d.candidate["next_item_loss"] > d.live["next_item_loss"] * 1.01
    assert not d.accepted


def test_next_item_data_trains_the_last_step_of_each_sequence_and_every_step_of_a_click(learner):
    models = learner.models
    seq = models.live["sasrec"]
    organic = [["i0", "i1", "i2"], ["i3"], ["i4", "not-in-catalog", "i5"]]
    data = models.next_item_data(seq, organic, clicked=[["i6", "i7", "i8"]])
    target = data["target"].numpy()
    index = {item: k for k, item in enumerate(models.catalog)}
    # ["i3"] alone has no next item; the unknown item is dropped from the third.
    assert len(target) == 3
    assert [[t for t in row if t != -100] for row in target] == [[index["i2"]], [index["i5"]],
                                                                 [index["i7"], index["i8"]]]


def test_gate_rejects_a_worse_model(learner):
    learner._accept(slates(600, seed=1))
    learner.train_round(force_gate=False)
    good = learner.models.cand["ranker"]
    learner.models.live["ranker"] = copy.deepcopy(good)  # the live model is now a good one
    # The candidate learns the opposite of what users do.
    for s in learner.train_buf:
        s.rewards = [0.0 if r > 0 else 1.0 for r in s.rewards]
    buf = list(learner.train_buf)
    for _ in range(5):
        for k in range(0, len(buf), 64):
            learner.models.train(buf[k:k + 64])
    d = learner.models.gate_models(list(learner.holdout))["ranker"]
    assert not d.accepted and ("auc" in d.reason or "snips" in d.reason), d.reason


def test_poisoned_stream_does_not_get_a_worse_model_promoted(learner):
    before = honest_auc(learner.models, "ranker", learner.models.live)
    honest, bots = slates(600, seed=2), slates(1200, seed=3, bot=True)
    mixed = [s for pair in zip(honest, bots[:600]) for s in pair] + bots[600:]
    learner._accept(mixed)
    assert learner.counts["filtered_bot"] == 1200
    assert all(not s.user_id.startswith("bot") for s in list(learner.train_buf) + list(learner.holdout))
    decisions = learner.train_round(force_gate=True)
    for d in decisions:
        if d["accepted"] and d["model"] == "ranker":
            assert honest_auc(learner.models, "ranker", learner.models.cand) >= before - 0.01


def test_checkpoint_restores_buffers_and_join_state(learner, tmp_path):
    learner._accept(slates(50, seed=4))
    learner.joiner.add_recommendation({"rec_id": "open1", "user_id": "u", "created_ts": 10, "items": []})
    learner.offsets = {"t:0": 42}
    learner.checkpoint()
    again = OnlineLearner(learner.settings, learner.cfg, port=0)
    again._restore()
    assert again.offsets == {"t:0": 42} and "open1" in again.joiner.open
    assert [s.rec_id for s in again.train_buf] == [s.rec_id for s in learner.train_buf]
    assert len(again.holdout) == len(learner.holdout)
    # Whole slates (rewards, features as served), not only their ids, encoded straight from the dataclasses.
    assert list(again.train_buf) == list(learner.train_buf) and list(again.holdout) == list(learner.holdout)


def test_a_rejected_candidate_restarts_from_the_live_model_and_replays_only_the_newest_slates(learner):
    learner.cfg = dataclasses.replace(learner.cfg, replay_slates=100, replay_epochs=1)
    learner._accept(slates(600, seed=1))
    models, trained = learner.models, []
    train = models.train
    models.train = lambda batch, only=None: (trained.extend(s.rec_id for s in batch), train(batch, only=only))
    with torch.no_grad():  # a candidate that drifted, as a rejected one has
        for p in models.cand["ranker"].parameters():
            p.add_(torch.randn_like(p))
    models.reject("ranker")
    learner.replay("ranker")
    assert sorted(trained) == sorted(s.rec_id for s in list(learner.train_buf)[-100:])
    live, cand = models.live["ranker"].state_dict(), models.cand["ranker"].state_dict()
    assert any(not torch.equal(live[k], cand[k]) for k in live)  # it trained from the live model...
    drifted = max((cand[k] - live[k]).abs().max().item() for k in live if live[k].is_floating_point())
    assert drifted < 0.5  # ...not from the drifted candidate (a step of about 1 everywhere)
    trained.clear()
    learner.cfg = dataclasses.replace(learner.cfg, replay_slates=0)
    models.reject("ranker")
    learner.replay("ranker")
    assert trained == [] and all(torch.equal(v, models.cand["ranker"].state_dict()[k]) for k, v in live.items())


def learner_with_item_bias(tmp_path, **cfg) -> OnlineLearner:
    """A dry-run learner over tiny published models whose ranker has a per-item bias."""
    s = Settings.from_env().replace(registry_uri=str(tmp_path / "registry"))
    publish_models(s, tmp_path, item_bias=True)
    learner = OnlineLearner(s, LearnerConfig(dry_run=True, checkpoint_dir=str(tmp_path / "ckpt"), **cfg), port=0)
    learner.models.load()
    return learner


def test_the_items_attraction_from_training_slates_goes_into_the_rankers_per_item_bias(tmp_path):
    learner = learner_with_item_bias(tmp_path)
    data = slates(800, seed=5)
    for sl in data:  # i0 sells whenever it is shown, i1 never does
        sl.rewards = [1.0 if it == "i0" else 0.0 if it == "i1" else r for it, r in zip(sl.items, sl.rewards)]
    learner._accept(data)
    learner.train_round(force_gate=True)  # offsets and their scale are set for the candidate the gate sees
    model = learner.models.cand["ranker"]
    offsets = learner.evidence.offsets(learner.models.examination)
    assert offsets["i0"] > 0 > offsets["i1"]
    bias = item_bias(model, ["i0", "i1"])
    # Both carry the offset at the one scale fitted against the ranker's own logit (shared rows: least squares).
    scale = bias / np.array([offsets["i0"], offsets["i1"]])
    assert scale[0] > 0
    np.testing.assert_allclose(scale[1], scale[0], rtol=1e-3)
    # Only training slates count: the gate's held-out slates never reach the estimate.
    held = {sl.rec_id for sl in learner.holdout}
    assert held and not held & {sl.rec_id for sl in learner.train_buf}


def test_an_items_attraction_keeps_the_evidence_that_has_left_the_training_buffer(tmp_path):
    learner = learner_with_item_bias(tmp_path, buffer_slates=300)
    early = slates(1000, seed=8)
    for sl in early:  # i0 sells whenever it is shown, i1 never does
        sl.rewards = [1.0 if it == "i0" else 0.0 if it == "i1" else r for it, r in zip(sl.items, sl.rewards)]
    late = [sl for sl in slates(1400, seed=9, start=1000) if not {"i0", "i1"} & set(sl.items)][:400]
    learner._accept(early + late)
    buf = list(learner.train_buf)
    assert not {"i0", "i1"} & {it for sl in buf for it in sl.items}, "both left the buffer"
    learner.train_round(force_gate=True)
    offsets = learner.evidence.offsets(learner.models.examination)
    assert offsets["i0"] > 0 > offsets["i1"]
    assert item_bias(learner.models.cand["ranker"], ["i0"])[0] > 0 > item_bias(learner.models.cand["ranker"], ["i1"])[0]
    # Training slates only (the gate's held-out slates never reach the estimate), each counted once.
    trained = [sl for sl in early + late if sl.rec_id not in {h.rec_id for h in learner.holdout}]
    assert learner.holdout and len(trained) < len(early + late)
    # (2.4 s of event time against a half-life of an hour: the counts fade by less than 0.1%)
    shown = sum(sum(v) for v in learner.evidence.shown.values())
    assert shown == pytest.approx(sum(len(sl.items) for sl in trained), rel=1e-3)
    # It survives a restart with the checkpoint; an older checkpoint without it starts from its buffer.
    learner.checkpoint()
    again = OnlineLearner(learner.settings, learner.cfg, port=0)
    again._restore()
    assert again.evidence.offsets(learner.models.examination) == offsets
    state = (tmp_path / "ckpt" / "learner.json")
    older = msgspec.json.decode(state.read_bytes())
    del older["evidence"]
    state.write_bytes(msgspec.json.encode(older))
    old = OnlineLearner(learner.settings, learner.cfg, port=0)
    old._restore()
    assert old.evidence.offsets(learner.models.examination) == pytest.approx(
        attraction_offsets(buf, learner.models.examination), abs=1e-3)


def item_bias(model, items):
    with torch.no_grad():
        return model.item_bias(torch.from_numpy(model.item_hasher(items))).sum(1).squeeze(-1).numpy()


def test_the_ranker_and_the_offsets_are_rescaled_to_what_the_slates_support(tmp_path):
    learner = learner_with_item_bias(tmp_path)
    models = learner.models
    model = models.cand["ranker"]
    with torch.no_grad():  # a ranker that reads the (predictive) category affinity ten times too loudly
        model.head.weight[0, 3 * 4 + DENSE_FEATURES.index("category_affinity")] = 30.0
    data = slates(1500, seed=6)
    for sl in data:  # on top of the category: i0 sells whenever it is shown, i1 never does
        sl.rewards = [1.0 if it == "i0" else 0.0 if it == "i1" else r for it, r in zip(sl.items, sl.rewards)]
    models.estimate_examination(data)
    before = models.ranker_scores(model, models.flat(data[:50]))
    assert models.set_attraction(data) > 0
    logit_scale = ranker_calibration("logit_scale")
    assert 0 < logit_scale < 0.5, "the over-loud logit was turned down"
    after = models.ranker_scores(model, models.flat(data[:50]))
    assert np.corrcoef(before, after)[0, 1] > 0.5
    assert item_bias(model, ["i0"])[0] > 0 > item_bias(model, ["i1"])[0]
    # A fixed point: fitted again on the rescaled ranker, its logit keeps its scale.
    offsets = attraction_offsets(data, models.examination)
    models.calibrate_ranker(model, data, offsets)
    assert ranker_calibration("logit_scale") == pytest.approx(1.0, abs=0.05)


def test_a_rejected_fine_tuned_ranker_still_brings_the_fresh_attraction_through_the_gate(tmp_path):
    from prometheus_client import REGISTRY

    learner = learner_with_item_bias(tmp_path, min_gate_samples=100, lr=0.05)
    models = learner.models
    data = slates(1200, seed=7)
    for sl in data:  # on top of the category: i0 sells whenever it is shown, i1 never does
        sl.rewards = [1.0 if it == "i0" else 0.0 if it == "i1" else r for it, r in zip(sl.items, sl.rewards)]
    learner._accept(data)
    buf = list(learner.train_buf)
    models.estimate_examination(buf)
    inverted = copy.deepcopy(buf)  # the fine-tuning goes wrong: it learns the opposite of what users do
    for sl in inverted:
        sl.rewards = [0.0 if r > 0 else 1.0 for r in sl.rewards]
    for _ in range(5):
        for k in range(0, len(inverted), 64):
            models.train(inverted[k:k + 64], only="ranker")
    models.set_attraction(buf)
    tuned = models.cand["ranker"]
    before = REGISTRY.get_sample_value("streamrec_learner_gate_fallbacks_total") or 0.0
    d = models.gate_models(list(learner.holdout))["ranker"]
    assert d.accepted and "fresh attraction" in d.reason and "fine-tuned: " in d.reason, d.reason
    assert REGISTRY.get_sample_value("streamrec_learner_gate_fallbacks_total") == before + 1
    # What would be published is the live network with the offsets, not the fine-tuned one.
    chosen, live = models.cand["ranker"], models.live["ranker"]
    network = [n for n, _ in live.named_parameters() if not n.startswith(("head.", "item_bias."))]
    assert network and all(torch.equal(dict(chosen.named_parameters())[n], dict(live.named_parameters())[n])
                           for n in network)
    assert any(not torch.equal(dict(tuned.named_parameters())[n], dict(live.named_parameters())[n]) for n in network)
    assert item_bias(chosen, ["i0"])[0] > 0 > item_bias(chosen, ["i1"])[0]
    assert models.refreshed is None


def ranker_calibration(term):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("streamrec_learner_ranker_calibration", {"term": term})


@pytest.mark.parametrize("mode, impressions_seen, kept", [
    ("auto", False, 20), ("auto", True, 10), ("required", False, 10), ("ignored", True, 20)])
def test_slates_nobody_saw_are_left_out_once_the_app_logs_impressions(tmp_path, mode, impressions_seen, kept):
    s = Settings.from_env().replace(registry_uri=str(tmp_path / "registry"))
    learner = OnlineLearner(s, LearnerConfig(dry_run=True, impressions=mode, holdout_every=10**9,
                                             checkpoint_dir=str(tmp_path / "ckpt")), port=0)
    if impressions_seen:
        learner.joiner.counts["impressions"] += 1
    data = slates(20, seed=7)
    for k, sl in enumerate(data):
        sl.shown = k % 2 == 0
    learner._accept(data)
    assert len(learner.train_buf) == kept
    assert learner.counts.get("filtered_not_shown", 0) == 20 - kept
    assert all(sl.shown for sl in learner.train_buf) or kept == 20


def test_an_unknown_impressions_mode_is_refused():
    with pytest.raises(ValueError, match="impressions: 'sometimes'; use auto, required or ignored"):
        LearnerConfig(impressions="sometimes")


def test_a_feature_constant_in_the_first_batch_joins_when_it_varies_instead_of_blowing_up_the_ranker(tmp_path):
    learner = learner_with_item_bias(tmp_path)
    models = learner.models
    ctr, affinity = DENSE_FEATURES.index("item_ctr"), DENSE_FEATURES.index("category_affinity")
    early = slates(100, seed=8)  # at first every item's click rate is still the prior
    for sl in early:
        for row in sl.features["dense"]:
            row[ctr] = 0.1
    models.train(early, only="ranker")
    model = models.cand["ranker"]
    assert model.has_dense_stats() and not model.varied_dense()[ctr] and model.varied_dense()[affinity]
    affinity_stats = (float(model.dense_mean[affinity]), float(model.dense_std[affinity]))
    later = slates(100, seed=9)
    rng = np.random.default_rng(9)
    for sl in later:
        for row in sl.features["dense"]:
            row[ctr] = float(rng.uniform(0.0, 0.3))
    same_but_prior = copy.deepcopy(later)
    for sl in same_but_prior:
        for row in sl.features["dense"]:
            row[ctr] = 0.1
    f, f_prior = models.flat(later), models.flat(same_but_prior)
    # Until the learner sees it vary, the served click rate moves no score (it used to be divided by 1e-6).
    np.testing.assert_allclose(models.ranker_scores(model, f), models.ranker_scores(model, f_prior), atol=1e-3)
    models.train(later, only="ranker")
    assert model.varied_dense()[ctr]
    assert float(model.dense_std[ctr]) == pytest.approx(np.std(f["dense"][:, ctr]), rel=1e-4)
    assert (float(model.dense_mean[affinity]), float(model.dense_std[affinity])) == affinity_stats
    assert np.abs(models.ranker_scores(model, f)).max() < 50
