"""Each benchmark script runs at its smallest setting and ends with the `ratio: X.XX` line that
benchmarks/README.md's figures come from (the figures themselves are measured, never tested)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

SMALL = {
    "text_eot_truncation.py": ["--backbone", "gatescope-tiny", "--classes", "5", "--repeat", "1"],
    "cocoop_batched.py": ["--backbone", "gatescope-tiny", "--classes", "3", "--device", "cpu"],
    "feature_cache_epoch.py": ["--epochs", "1"],
    "diagnostics_overhead.py": ["--size", "tiny", "--steps", "2", "--trainers", "CoOpGated"],
    "cocoopgated_epoch.py": ["--epochs", "1"],
    "time_to_error.py": ["--repeat", "1"],
    "demo_pretraining.py": ["--steps", "2", "--corpus-size", "64", "--repeat", "1"],
    "routing_epoch.py": ["--epochs", "1"],
}


def test_every_benchmark_script_is_listed():
    scripts = {f for f in os.listdir(os.path.join(REPO, "benchmarks")) if f.endswith(".py") and f != "common.py"}
    assert scripts == set(SMALL)


@pytest.mark.parametrize("script", sorted(SMALL))
def test_benchmark_runs_and_prints_its_ratio(script, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *SMALL[script]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"ratio: \d+\.\d\d", done.stdout.strip().splitlines()[-1]), done.stdout[-1000:]
