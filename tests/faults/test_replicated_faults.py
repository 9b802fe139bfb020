"""The replicated topology under pytest: three KRaft brokers, a Redis primary with a replica and three Sentinels
(`streamrec up --replicated`), on ports and a folder of the suite's own. `make test` runs the cheapest fault cases
(`harness.replicated.MAKE_TEST_CASES`) at STREAMREC_FAULT_EVENTS events; `streamrec bench faults --topology
replicated` runs them all."""

from __future__ import annotations

import pytest

from streamrec.deploy.localstack import REPLICATED
from streamrec.harness import faults
from streamrec.harness.replicated import MAKE_TEST_CASES, ReplicatedFaultStack, run_replicated_case
from streamrec.settings import Settings
from streamrec.stream import topics

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.stack]
EVENTS = Settings.from_env().fault_events


@pytest.fixture(scope="module")
def replicated_stack(tmp_path_factory):
    stack = ReplicatedFaultStack(tmp_path_factory.mktemp("replicated-stack"))
    try:  # a server that fails to start must not leave the others running after the session
        stack.up()
        yield stack
    finally:
        stack.down()


def test_topics_have_three_replicas_need_two_in_sync_and_every_server_runs(replicated_stack):
    s = replicated_stack.settings.replace(topic_prefix="topo.")
    topics.create_topics(s)
    infos = topics.describe_topics(s)
    assert {i.replication for i in infos} == {3}
    assert all(i.configs.get("min.insync.replicas") == "2" for i in infos), infos
    states = {st.name: st.state for st in replicated_stack.stack.status()}
    assert {n: states[n] for n in ("redis", *REPLICATED)} == {n: "running" for n in ("redis", *REPLICATED)}
    assert replicated_stack.stack.quorum_leader() in (1, 2, 3)


@pytest.mark.parametrize("case", MAKE_TEST_CASES)
def test_replicated_fault_case(replicated_stack, tmp_path, case):
    result = run_replicated_case(replicated_stack, case, EVENTS, faults.DEFAULT_RATE, tmp_path)
    assert result.published == result.events >= EVENTS and result.valid > 0
    assert result.passed, f"{case}: {'; '.join(result.problems)}\n{result.as_dict()}"
