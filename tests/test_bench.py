"""The committed GPU measurement script runs end to end on the CPU at tiny sizes (the real run needs a lent GPU)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import MPDD, ROOT


@pytest.mark.skipif(not os.path.isdir(MPDD), reason="shared data not present")
def test_gpu_bench_smoke_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--device", "cpu", "--sizes", "32:4",
                           "--backbone", "test_vit", "--steps", "1", "--pgd_long", "3", "--out", str(tmp_path),
                           "--data", MPDD], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert figures["device"] == "cpu"
    ours = figures["ours_32px_b4_fp32"]
    assert ours["train_s_per_step"] > 0 and ours["eval_s_per_batch"] > 0 and ours["precision"] == "fp32"
    assert figures["ours_pgd3_32px"]["images_per_s"] > 0
