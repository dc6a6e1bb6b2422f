"""`gatescope study`: when does gating work? The controlled benchmark, run and tabulated.

The benchmark is data: a grid file (`grids/study.yaml` next to this module; its comments say
what it runs) run by `gatescope sweep`'s machinery and tabulated by `gatescope summarize`'s
variants table. This command only picks the grid (`--preset NAME`, a file `grids/NAME.yaml`, or
a path), applies its `quick` section for `--quick`, and lets the command line change where and
what it runs (output folder, data root, seeds, remedies, extra options). So a finished run is
skipped, a failing one is recorded in `<output>/sweeps/<name>/failures.jsonl` while the others go
on, and each run is a `train.py` subprocess on a local Ray (or a cluster with `--address`).

A new preset is a new grid file in `grids/` (see `grids/study.yaml`): its `variants` are the
named option sets compared (remedies here), and its `summary` section chooses the tables
(`variants` for this view), the baseline of the Δ column and the table titles. The preset
`regime_map` (`grids/regime_map.yaml`) adds an `oracle` and the `regime` table: where gating
recovers the oracle's gap, ending with its `best: ...` line.
"""
import argparse
import os
import re
import sys

from .grid import GridError, apply_quick, expand_grid, read_grid_file, select_variants
from .sweep import add_run_arguments, describe, run_and_report

GRIDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")
DEFAULT_PRESET = "study"


def presets():
    """The names of the grid files shipped in `grids/`."""
    return sorted(os.path.splitext(name)[0] for name in os.listdir(GRIDS_DIR) if name.endswith(".yaml"))


def preset_path(preset):
    """The grid file of a preset name (`grids/<name>.yaml`) or of a path to a YAML file."""
    if preset.endswith((".yaml", ".yml")) or os.sep in preset:
        return preset
    path = os.path.join(GRIDS_DIR, f"{preset}.yaml")
    if not os.path.isfile(path):
        raise GridError(f"no study preset named {preset!r}; the presets are {', '.join(presets())} "
                        f"(files in {GRIDS_DIR}), or give the path of a grid file")
    return path


def study_grid(args):
    """The Grid that `args` ask for: the preset, its quick section, then the command line."""
    spec = read_grid_file(preset_path(args.preset))
    if args.quick:
        spec = apply_quick(spec)
    spec["output"] = args.output or spec.get("output") or os.path.join("output", spec["name"])
    # The study's tasks are generated: without --root (or a grid's `data`) they go to gatescope's
    # cache ($GATESCOPE_CACHE/datasets, what train.py's empty --root means), never into ./data.
    spec["data"] = args.root if args.root is not None else spec.get("data", "")
    if args.seeds:
        spec["seeds"] = args.seeds
    if args.remedies:
        spec = select_variants(spec, args.remedies, "--remedies")
    if args.opts:
        if len(args.opts) % 2:
            raise GridError(f"the options after the flags must be KEY VALUE pairs, found {args.opts}")
        spec["opts"] = [*map(str, spec.get("opts") or []), *args.opts]
    return expand_grid(spec)


def demo_weights_used(grid):
    """The demo weight tags (demo_weights.DEMO_VARIANTS) a run of `grid` asks for, in its options or
    config files, each once."""
    from trainers.backbone.demo_weights import DEMO_VARIANTS

    found, configs = set(), set()
    for cell in grid.cells:
        for step in cell.steps:
            found |= {value for key, value in zip(step.opts[::2], step.opts[1::2])
                      if key == "MODEL.BACKBONE.PRETRAINED" and value.lower() in DEMO_VARIANTS}
            configs.add(step.flags[step.flags.index("--config-file") + 1])
    for path in configs:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        found |= {tag for tag in DEMO_VARIANTS if re.search(rf"['\"\s]{re.escape(tag)}['\"\s]", text)}
    return sorted(found)


def build_parser(prog="gatescope study"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"the grid: a name in {GRIDS_DIR} (default {DEFAULT_PRESET}) or a grid file")
    parser.add_argument("--output", default=None, help="folder of the study's runs (default: the grid's, output/study)")
    parser.add_argument("--root", default=None,
                        help="data root where the tasks are generated (default: the grid's `data`, else "
                             "gatescope's cache, $GATESCOPE_CACHE/datasets)")
    parser.add_argument("--quick", action="store_true",
                        help="the grid's quick setting (study: 1 seed, 2 epochs, 4 shots, remedies none and "
                             "gradnorm; what CI runs)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the grid's; study: 1 2 3)")
    parser.add_argument("--remedies", nargs="+", metavar="NAME",
                        help="only these of the grid's variants (study: its remedies, 'none' included)")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs already there")
    parser.add_argument("--dry-run", action="store_true", help="print the train.py command of every run and exit")
    add_run_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs added to every run (before each trainer's and remedy's own)")
    return parser


def study_main(argv=None, prog="gatescope study"):
    args = build_parser(prog).parse_args(argv)
    try:
        grid = study_grid(args)
    except GridError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(grid))
        return 0
    if not args.tables_only:
        print(f"{prog}: {len(grid.cells)} runs in {grid.output}")
        tags = demo_weights_used(grid)
        if tags:
            # The runs start in parallel: make the demo backbone's weights here once, before them.
            from trainers.backbone.demo_weights import ensure_demo_weights
            for tag in tags:
                ensure_demo_weights(tag=tag)
    return run_and_report(grid, args, prog, tables_only=args.tables_only)
