"""The fault suite's own Kafka reading must not be what stalls a case (RELIABILITY.md, fault 10)."""

from __future__ import annotations

import pytest

from streamrec.harness.faults import TopicCounter
from streamrec.stream import topics
from streamrec.stream.synthetic import synthetic_stream

from .helpers import publish

pytestmark = pytest.mark.integration


def test_the_answer_counter_replaces_a_client_that_failed_and_counts_again(fresh_settings):
    """After a broker restart a client can fail every reading for minutes while fresh ones read fine; the counter
    used to keep that client, and a case waited out pytest's time-out for answers that were all there."""
    publish(fresh_settings, list(synthetic_stream(120, users=20, items=30, seed=3)))
    counter = TopicCounter(fresh_settings, topics.EVENTS)
    try:
        assert counter.count() == 120
        broken = counter.consumer
        broken.close()  # a client that can no longer read, as the stuck one could not
        assert counter.count() is None  # this reading fails...
        assert counter.consumer is not broken
        assert counter.count() == 120  # ...the next one, on a fresh client, counts again
    finally:
        counter.close()
