"""Tables of results rendered as plain text, GitHub markdown, LaTeX or CSV.

A table holds typed cells, so each format shows the same numbers its own way:
- `Stat(mean, std)`: "82.69 ± 0.35" (LaTeX "82.69 $\\pm$ 0.35"; CSV two columns, `<name>` and
  `<name> std`); a Stat without std shows the mean alone;
- `Delta(value, count, of, unit)`: a signed difference "+1.23", with "(2 seeds)" when it rests on
  fewer seeds (or datasets, for an average row) than the row (CSV: `<name>` and `<name> n`);
- `Sci(x)`: a quantity spanning orders of magnitude (gradient ratios), 3 significant digits;
- float: `digits` decimals; int and str as they are; None: "-" (empty in CSV).
"""
import csv
import io
from dataclasses import dataclass, field

from tabulate import tabulate

FORMATS = ("plain", "github", "latex", "csv")
# tabulate's names for our formats; "plain" is tabulate's "simple" (a rule under the header).
_TABULATE_FORMAT = {"plain": "simple", "github": "github", "latex": "latex_raw"}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$"}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float = None


@dataclass(frozen=True)
class Delta:
    value: float
    count: int  # how many seeds (or datasets) the difference rests on
    of: int  # how many the row has
    unit: str = "seeds"


class Sci(float):
    """A float shown with 3 significant digits."""


@dataclass
class Table:
    title: str
    headers: list
    rows: list = field(default_factory=list)
    note: str = ""


def drop_empty_columns(table, names):
    """`table` without those of the columns `names` whose cells are all None (optional columns,
    such as flags that no row has). Returns the same table, changed in place."""
    empty = [j for j, name in enumerate(table.headers) if name in names and all(row[j] is None for row in table.rows)]
    if empty:
        table.headers = [h for j, h in enumerate(table.headers) if j not in empty]
        table.rows = [[c for j, c in enumerate(row) if j not in empty] for row in table.rows]
    return table


def latex_escape(text):
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def format_cell(cell, fmt, digits):
    """One cell as text for the plain, github and latex formats."""
    if cell is None:
        return "-"
    if isinstance(cell, Stat):
        mean = f"{cell.mean:.{digits}f}"
        if cell.std is None:
            return mean
        sep = " $\\pm$ " if fmt == "latex" else " ± "
        return f"{mean}{sep}{cell.std:.{digits}f}"
    if isinstance(cell, Delta):
        text = f"{cell.value:+.{digits}f}"
        return text if cell.count == cell.of else f"{text} ({cell.count} {cell.unit})"
    if isinstance(cell, Sci):
        return f"{float(cell):.3g}"
    if isinstance(cell, float):
        return f"{cell:.{digits}f}"
    return latex_escape(cell) if fmt == "latex" else str(cell)


def _csv_number(x):
    return "" if x is None else repr(round(float(x), 6))


def _csv_columns(table):
    """CSV header and, per column, how many CSV columns it takes (Stat and Delta take two)."""
    header, widths = [], []
    for j, name in enumerate(table.headers):
        kinds = {type(row[j]) for row in table.rows if row[j] is not None}
        if Stat in kinds:
            header += [name, f"{name} std"]
            widths.append(2)
        elif Delta in kinds:
            header += [name, f"{name} n"]
            widths.append(2)
        else:
            header.append(name)
            widths.append(1)
    return header, widths


def _csv_cells(cell, width):
    if isinstance(cell, Stat):
        return [_csv_number(cell.mean), _csv_number(cell.std)]
    if isinstance(cell, Delta):
        return [_csv_number(cell.value), str(cell.count)]
    if isinstance(cell, float):
        return [_csv_number(cell)] + [""] * (width - 1)
    return ["" if cell is None else str(cell)] + [""] * (width - 1)


def render_csv(table):
    """The table as CSV, headed by a `# title` line so several tables can share one stream."""
    out = io.StringIO()
    out.write(f"# {table.title}\n")
    writer = csv.writer(out, lineterminator="\n")
    header, widths = _csv_columns(table)
    writer.writerow(header)
    for row in table.rows:
        writer.writerow([value for cell, width in zip(row, widths) for value in _csv_cells(cell, width)])
    return out.getvalue().rstrip("\n")


def render(table, fmt="plain", digits=2):
    """The table as text in `fmt` (one of FORMATS), with its title and note."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return render_csv(table)
    headers = [latex_escape(h) if fmt == "latex" else h for h in table.headers]
    rows = [[format_cell(cell, fmt, digits) for cell in row] for row in table.rows]
    body = tabulate(rows, headers=headers, tablefmt=_TABULATE_FORMAT[fmt], disable_numparse=True)
    if fmt == "latex":
        lines = [f"% {table.title}", body] + ([f"% {table.note}"] if table.note else [])
    elif fmt == "github":
        lines = [f"### {table.title}", "", body] + (["", table.note] if table.note else [])
    else:
        lines = [table.title, body] + ([table.note] if table.note else [])
    return "\n".join(lines)
