"""ONNX export: ONNX Runtime equals torch within 1e-4; dynamic batch and length; arrays without pickle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from streamrec.trainer.export import ATOL, OPSET, ExportError, export_dcn, export_sasrec, parity, session
from streamrec.trainer.features import build_samples


@pytest.fixture(scope="module")
def seq_export(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    return export_sasrec(trained.sasrec, out, trained.catalog, trained.categories, trained.split.test_history)


@pytest.fixture(scope="module")
def dcn_export(trained, tmp_path_factory):
    return export_dcn(trained.dcn, tmp_path_factory.mktemp("dcn"))


def run(path, names, *arrays):
    return session(path).run(None, dict(zip(names, arrays)))[0]


def torch_user_vecs(model, histories, categories):
    items, cats = model.encode_sequences(histories, categories)
    with torch.no_grad():
        return items, cats, model(torch.from_numpy(items), torch.from_numpy(cats)).numpy()


@pytest.mark.parametrize("histories", [
    pytest.param(None, id="real"),
    pytest.param([[]], id="empty"),
    pytest.param([["i3"]], id="length-1"),
    pytest.param([["unseen-1", "unseen-2"], [], ["i1"] * 80], id="unseen-empty-overlong"),
])
def test_encoder_matches_torch(trained, seq_export, histories):
    histories = histories or trained.split.test_history[:100]
    items, cats, expected = torch_user_vecs(trained.sasrec, histories, trained.categories)
    got = run(seq_export.files["encoder.onnx"], ["seq_items", "seq_cats"], items, cats)
    assert got.shape == expected.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch, length", [(1, 1), (3, 7), (64, 20), (2, 13)])
def test_encoder_dynamic_batch_and_length_on_random_ids(trained, seq_export, batch, length):
    items, cats = trained.sasrec.example_inputs(batch, length)
    with torch.no_grad():
        expected = trained.sasrec(items, cats).numpy()
    got = run(seq_export.files["encoder.onnx"], ["seq_items", "seq_cats"], items.numpy(), cats.numpy())
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_item_vectors_and_item_encoder_agree_and_load_without_pickle(trained, seq_export):
    vectors = np.load(seq_export.files["item_vectors.npy"], allow_pickle=False)
    ids = np.load(seq_export.files["item_ids.npy"], allow_pickle=False)
    assert ids.tolist() == trained.catalog and vectors.shape == (len(ids), trained.sasrec.items.embedding_dim)
    m = trained.sasrec
    new = ids.tolist()[:5] + ["item-added-after-training"]
    cats = [trained.categories.get(i, "") for i in new]
    got = run(seq_export.files["item_encoder.onnx"], ["item_ids", "item_cats"], m.item_hasher(new),
              m.cat_hasher.first(cats))
    np.testing.assert_allclose(got[:5], vectors[:5], atol=ATOL, rtol=0)
    # Retrieval without torch reproduces the torch scores.
    items, cats2, user = torch_user_vecs(m, trained.split.test_history[:10], trained.categories)
    onnx_user = run(seq_export.files["encoder.onnx"], ["seq_items", "seq_cats"], items, cats2)
    np.testing.assert_allclose(onnx_user @ vectors.T, user @ vectors.T, atol=1e-3, rtol=0)


def test_ranker_matches_torch_on_real_random_and_unseen_batches(trained, dcn_export, interactions):
    model = trained.dcn
    samples = build_samples(interactions.take(np.arange(len(interactions)) < 3000))
    sparse = model.sparse_ids(samples.users, samples.items, samples.cats)
    unseen = model.sparse_ids(["nobody"] * 3, ["nothing", "", "x"], ["", "new", "c1"])
    batches = [(sparse, samples.dense), (unseen, samples.dense[:3])]
    batches += [tuple(t.numpy() for t in model.example_inputs(b)) for b in (1, 17, 1000)]
    for sp, dn in batches:
        with torch.no_grad():
            expected = model(torch.from_numpy(sp), torch.from_numpy(dn)).numpy()
        got = run(dcn_export.files["model.onnx"], ["sparse", "dense"], sp, dn)
        assert got.shape == (len(sp),)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_opset_and_signature_are_those_recorded(seq_export, dcn_export):
    for exported in (seq_export, dcn_export):
        assert exported.opset == OPSET
        for fname, sig in exported.signatures.items():
            graph = onnx.load(exported.files[fname])
            assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
            assert [i.name for i in graph.graph.input] == [t.name for t in sig.inputs]
            dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input]
            assert [[-1 if isinstance(d, str) else d for d in ds] for ds in dims] == [t.shape for t in sig.inputs]


def test_parity_check_refuses_a_graph_that_differs(trained, dcn_export):
    other = type(trained.dcn)(**trained.dcn.config)  # same shape, different weights
    with pytest.raises(ExportError, match="differs from torch"):
        parity(dcn_export.files["model.onnx"], other, [other.example_inputs(8)], other.signature())


def test_a_dense_feature_that_never_varied_stays_silent_in_torch_and_onnx(tmp_path):
    from streamrec.trainer.dcn import DENSE_CLIP, DENSE_FEATURES, DCNRanker

    torch.manual_seed(0)
    model = DCNRanker(user_buckets=64, item_buckets=64, cat_buckets=16, dim=4, hidden=(8,), dropout=0.0)
    ctr = DENSE_FEATURES.index("item_ctr")
    train = np.random.default_rng(0).random((600, len(DENSE_FEATURES))).astype(np.float32)
    train[:, ctr] = 0.1  # every item still at its prior: no spread to learn
    model.set_dense_stats(train)
    assert list(np.flatnonzero(~model.varied_dense())) == [ctr]
    sparse, dense = model.example_inputs(300)
    served = dense.clone()
    served[:, ctr] = torch.rand(300) * 0.5  # the feature varies once served
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model.logit(sparse, served), model.logit(sparse, dense), atol=1e-4)
    path = export_dcn(model, tmp_path / "dcn").files["model.onnx"]
    onnx_prob = run(path, ["sparse", "dense"], sparse.numpy(), served.numpy())
    np.testing.assert_allclose(onnx_prob, model(sparse, dense).detach().numpy(), atol=1e-4)
    # A varied feature far outside what the statistics saw is a bounded input, the same in ONNX.
    far = dense.clone()
    far[:, 0] = model.dense_mean[0] + 1e4 * model.dense_std[0]
    edge = dense.clone()
    edge[:, 0] = model.dense_mean[0] + DENSE_CLIP * model.dense_std[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(sparse, far), model(sparse, edge), atol=1e-6)
    np.testing.assert_allclose(run(path, ["sparse", "dense"], sparse.numpy(), far.numpy()),
                               model(sparse, edge).detach().numpy(), atol=1e-4)


def test_a_checkpoint_of_the_older_standardisation_marks_its_constant_features_as_not_varied():
    from streamrec.trainer.dcn import DCNRanker

    model = DCNRanker(user_buckets=64, item_buckets=64, cat_buckets=16, dim=4, hidden=(8,))
    assert not model.has_dense_stats() and model.varied_dense().all()
    model.dense_std = torch.tensor([1e-6, 0.5, 1e-6, 2.0, 0.01, 1.0, 1e-6])  # as saved before: floor 1e-6
    assert model.has_dense_stats()
    assert model.varied_dense().tolist() == [False, True, False, True, True, True, False]
