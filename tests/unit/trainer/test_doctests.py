"""The examples in the docstrings run (STYLE.md point 11)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["streamrec.hashing", "streamrec.registry", "streamrec.trainer.data", "streamrec.trainer.synth",
           "streamrec.trainer.importers", "streamrec.trainer.evaluate", "streamrec.trainer.train",
           "streamrec.harness.bench.online", "streamrec.online.attraction", "streamrec.online.learner"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
