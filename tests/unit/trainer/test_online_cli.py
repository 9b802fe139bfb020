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
    code = ("import sys, argparse; import streamrec.trainer.online_cli as c; "
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); c.register(s); c.register_bench(s); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_bad_impressions_mode_is_refused_with_the_flag_named():
    out = subprocess.run([sys.executable, "-m", "streamrec.cli", "learn", "--impressions", "sometimes"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "--impressions: 'sometimes'; use auto, required or ignored" in out.stderr
