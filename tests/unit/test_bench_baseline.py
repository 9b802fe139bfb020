"""`--baseline REF`: an older commit laid out from git archive and its scorer core run in a child process."""

from __future__ import annotations

import pytest

from streamrec.harness.bench.baseline import BaselineError, materialise, run_core


def test_a_commit_is_laid_out_by_its_own_folder_mapping_and_its_core_runs(tmp_path):
    site = materialise("HEAD", root=tmp_path)
    assert (site / "streamrec" / "stream" / "lua" / "user.lua").exists()  # stream/ mapped to streamrec.stream
    assert (site / "streamrec" / "harness" / "bench" / "core.py").exists()
    assert materialise("HEAD", root=tmp_path) == site  # laid out once per commit
    result = run_core(site, str(tmp_path / "empty-registry"), candidates=20, batch=8, seconds=0.3)
    assert result["code"].startswith(str(site)) and result["requests_per_s"] > 0
    assert result["candidates"] == 20 and result["models"] == []


def test_an_unknown_commit_is_refused_with_gits_reason(tmp_path):
    with pytest.raises(BaselineError, match="rev-parse"):
        materialise("no-such-ref-anywhere", root=tmp_path)
