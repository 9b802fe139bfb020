"""Model weights kept in the registry for fine-tuning: round trip, and nothing but tensors is loaded."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from streamrec.trainer.dcn import DCNRanker
from streamrec.trainer.weights import load_weights, save_weights


class Payload:
    """Stands for what an attacker would pickle: loading it must not even be attempted."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_round_trip(tmp_path):
    model = DCNRanker(user_buckets=50, item_buckets=80, cat_buckets=10, dim=4, hidden=(8,))
    loaded = load_weights(save_weights(model, tmp_path).read_bytes())
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_a_file_carrying_objects_is_refused():
    buf = io.BytesIO()
    torch.save({"kind": "dcn", "config": {}, "state": {}, "extra": Payload()}, buf)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(buf.getvalue())
