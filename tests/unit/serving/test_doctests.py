"""The examples in the serving modules' docstrings run."""

import doctest

import pytest

from streamrec.serving import ab, candidates, config, exploration, ranking


@pytest.mark.parametrize("module", [ab, candidates, config, exploration, ranking])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0
