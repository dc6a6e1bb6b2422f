"""Results at scale: where protocol runs live, reading finished runs, tables, and Ray sweeps.

- `layout`: the output folder layout of the protocols (CoOp's, shared with `scripts/*.sh`)
  and its parser, which also recognises the original CoOp / CoCoOp / MaPLe layouts;
- `runs`: one run folder -> a `Run` (results.json, or the `* accuracy:` lines of an old
  `log.txt`, plus `diagnostics/summary.json`), and whether a run is complete;
- `summarize`: `gatescope summarize DIR` (mean ± std over seeds, base / new / HM, gate verdicts);
- `tables`: rendering those tables as plain text, GitHub markdown, LaTeX or CSV;
- `grid`: a study grid (GRID.yaml) -> the runs it asks for and their `train.py` commands;
- `sweep`: `gatescope sweep GRID.yaml`, the grid's runs as Ray tasks;
- `study`: `gatescope study`, a grid shipped in `grids/` (the controlled benchmark and any
  other preset) run by `sweep` and tabulated by `summarize`.
"""
