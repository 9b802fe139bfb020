"""The fault suite under pytest: the same cases as `streamrec bench faults` (harness/faults.py).

One Kafka broker and one Redis of the suite's own serve every case (the broker
and Redis cases stop and kill them); each case has its own topics and keys.
STREAMREC_FAULT_EVENTS sets the events per case (default 50,000).
"""

from __future__ import annotations

import pytest

from streamrec.harness import faults
from streamrec.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.stack]
EVENTS = Settings.from_env().fault_events


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    stack = faults.FaultStack(tmp_path_factory.mktemp("fault-stack"))
    try:  # a server that fails to start must not leave the others running after the session
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.mark.parametrize("case", faults.CASES)
def test_fault_case(fault_stack, tmp_path, case):
    result = faults.run_case(fault_stack, case, EVENTS, faults.DEFAULT_RATE, tmp_path)
    assert result.published == result.events >= EVENTS and result.valid > 0
    assert result.passed, f"{case}: {'; '.join(result.problems)}\n{result.as_dict()}"
