#!/usr/bin/env python
"""Tables of a folder of runs (CoOp's parse_test_res.py, for every protocol at once).

    python scripts/summarize.py output/base2new [--format plain|github|latex|csv]

The same as `gatescope summarize`; see trainers/tools/summarize.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainers.tools.summarize import summarize_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(summarize_main(prog="scripts/summarize.py"))
