"""`streamrec learn`, `streamrec simulate` and `streamrec bench online` are real subcommands."""

from __future__ import annotations

import subprocess
import sys

from streamrec.cli import build_parser


def test_subcommands_parse_with_their_flags():
    p = build_parser()
    a = p.parse_args(["learn", "--window-ms", "100", "--dry-run", "--reward-purchase", "7"])
    assert a.command == "learn" and a.window_ms == 100 and a.dry_run and a.reward_purchase == 7.0
    a = p.parse_args(["simulate", "--users", "3", "--rate", "5", "--bots", "1"])
    assert a.command == "simulate" and a.users == 3 and a.rate == 5.0 and a.bots == 1
    a = p.parse_args(["bench", "online", "--seconds", "10"])
    assert a.seconds == 10.0


def test_registering_the_commands_does_not_import_torch():
    code = ("import sys, argparse; import streamrec.online.cli as c, streamrec.harness.cli as h; "
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); c.register(s); h.register(s); h.register_bench(s); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_bad_impressions_mode_is_refused_with_the_flag_named():
    out = subprocess.run([sys.executable, "-m", "streamrec.cli", "learn", "--impressions", "sometimes"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "--impressions: 'sometimes'; use auto, required or ignored" in out.stderr


def test_the_demo_and_the_bench_simulate_the_same_world_and_its_flags_change_it():
    from streamrec.harness.simulator import SimConfig
    from streamrec.harness.simulator import BENCH_WORLD, world_of

    p = build_parser()
    demo, bench = world_of(p.parse_args(["demo"])), world_of(p.parse_args(["bench", "online"]))
    assert demo == bench
    assert {k: demo[k] for k in BENCH_WORLD} == BENCH_WORLD
    assert demo["attraction_bias"] < SimConfig.attraction_bias  # fewer clicks than the simulator's own world
    assert SimConfig(**demo).appeal == BENCH_WORLD["appeal"]  # every key is a SimConfig field
    flags = ["--attraction-bias", "-1.5", "--appeal", "1", "--drift", "0.1", "--new-item-every-s", "0",
             "--retire-oldest"]
    for argv in (["demo", *flags], ["bench", "online", *flags]):
        assert world_of(p.parse_args(argv)) == {"attraction_bias": -1.5, "appeal": 1.0, "drift": 0.1,
                                                "new_item_every_s": 0.0, "retire_oldest": True}


def test_learner_settings_are_read_and_flags_given_override_them():
    from streamrec.arguments import given_args
    from streamrec.online.config import LearnerConfig
    from streamrec.settings import Settings

    s = Settings.from_env({"STREAMREC_LEARNER_LR": "0.5", "STREAMREC_LEARNER_WINDOW_MS": "900"})
    args = build_parser().parse_args(["learn", "--window-ms", "100", "--batch", "8"])
    cfg = LearnerConfig.from_settings(s, **given_args(LearnerConfig, args))
    assert (cfg.lr, cfg.window_ms, cfg.batch) == (0.5, 100, 8)  # setting, flag over setting, flag
    assert cfg.reward_purchase == LearnerConfig().reward_purchase  # neither: the default
    assert LearnerConfig.from_settings(Settings()) == LearnerConfig()
