"""The services' garbage-collector setting."""

import gc

from streamrec.runtime import tune_gc
from streamrec.settings import Settings


def test_tune_gc_sets_the_young_threshold_and_zero_keeps_pythons():
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(Settings.from_env({"STREAMREC_GC_GEN0": "12345"}).gc_gen0)
        assert gc.get_threshold() == (12345, *before[1:])
    finally:
        gc.set_threshold(*before)
