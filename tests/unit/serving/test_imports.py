"""The serving image has no torch: nothing in serving may import it."""

import subprocess
import sys


def test_serving_imports_without_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
            "import streamrec.serving.scorer, streamrec.harness.bench.serve, streamrec.serving.cli\n"
            "import streamrec.cli\n"
            "streamrec.cli.build_parser().parse_args(['serve'])\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
