"""Seconds from `python train.py --trainer CoOpp ...` to its error (issue 17: fail in seconds).

Fast: the command as a user types it; the mistyped trainer is reported by the config check,
before open_clip, timm or torchvision are imported and before anything is written.
Reference: the same command in a process that first imports open_clip and torchvision, as
`import trainers` did before they became lazy (the other work is the same in both).
Floor: `python -c "import torch"`, which no trainer can avoid. Each is a fresh process, timed
from start to exit; the median of --repeat runs is printed, with the load average before them.

    python benchmarks/time_to_error.py [--repeat 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = ["--trainer", "CoOpp", "--config-file", "configs/trainers/CoOp/demo.yaml"]
EAGER = ("import sys, open_clip, torchvision\n"
         "from trainers.cli import train_main\n"
         "train_main(sys.argv[1:])\n")


def seconds(argv, env, expect_error):
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if expect_error and 'did you mean "CoOp"' not in done.stderr:
        raise SystemExit(f"expected the mistyped-trainer error, got rc {done.returncode}:\n{done.stderr[-2000:]}")
    if not expect_error and done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               GATESCOPE_DISABLE_PLUGIN_AUTOLOAD=os.environ.get("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1"))
    with tempfile.TemporaryDirectory() as out:
        command = COMMAND + ["--output-dir", os.path.join(out, "run")]
        runs = {"fast": [], "reference": [], "floor": []}
        load = os.getloadavg()[0]
        for _ in range(args.repeat):
            runs["fast"].append(seconds([sys.executable, "train.py", *command], env, True))
            runs["reference"].append(seconds([sys.executable, "-c", EAGER, *command], env, True))
            runs["floor"].append(seconds([sys.executable, "-c", "import torch"], env, False))
        if os.path.exists(os.path.join(out, "run")):
            raise SystemExit("the mistyped run wrote into its output folder")
    fast, reference, floor = (statistics.median(runs[k]) for k in ("fast", "reference", "floor"))
    print(f"# load average (1 min) before the runs: {load:.2f}; {os.cpu_count()} CPUs; median of {args.repeat}")
    print(f"time to error, train.py --trainer CoOpp: {fast:.2f} s")
    print(f"reference (open_clip and torchvision imported first): {reference:.2f} s")
    print(f"floor (python -c 'import torch'): {floor:.2f} s")
    print(f"ratio: {reference / fast:.2f}")


if __name__ == "__main__":
    main()
