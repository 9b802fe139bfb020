"""The examples in the serving modules' docstrings run."""

import doctest

import pytest

from streamrec.serving import ab, candidates, catalog, config, exploration, providers
from streamrec.harness.bench import serve as bench


@pytest.mark.parametrize("module", [ab, bench, candidates, catalog, config, exploration, providers])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
