"""Table 1 of the paper beside ours: Markdown, CSV and JSON.

The paper's numbers live in configs/paper.yaml (its columns, and per model a label and percentages).
Our results come in as fractions (what harrison.metrics.evaluate returns) and are shown in percent.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from harrison.config import PROJECT_ROOT
from harrison.errors import HarrisonError
from harrison.files import write_json, write_text

PAPER = PROJECT_ROOT / "configs" / "paper.yaml"

Results = Mapping[str, Mapping[str, float]]


def load_paper(paper: str | os.PathLike = PAPER) -> dict[str, Any]:
    """configs/paper.yaml: ``columns`` (metric names) and ``rows`` (model -> label and percentages)."""
    path = Path(paper)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarrisonError(f"{path}: not found; it holds the paper's Table 1 (see configs/paper.yaml)") from None
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or not isinstance(data.get("rows"), dict):
        raise HarrisonError(f"{path}: expected 'columns' (a list) and 'rows' (a mapping); restore it from git")
    return data


def table1(results: Results, paper: str | os.PathLike = PAPER, note: str | None = None) -> dict[str, Any]:
    """Table 1 as data: per model its label and, per column, ours (percent), the paper's and the difference.

    Models come in the paper's order; a model without results has ``None`` for ours and the difference.
    ``note`` (e.g. why the run cannot be compared with the paper) is kept under ``note`` when given.
    """
    reference = load_paper(paper)
    columns = list(reference["columns"])
    rows = {}
    for model, row in reference["rows"].items():
        ours = results.get(model)
        cells = {}
        for column in columns:
            paper_value = float(row[column])
            value = None if ours is None or column not in ours else round(100.0 * float(ours[column]), 2)
            cells[column] = {
                "ours": value,
                "paper": paper_value,
                "difference": None if value is None else round(value - paper_value, 2),
            }
        rows[model] = {"label": row.get("label", model), "metrics": cells}
    return {"columns": columns, "unit": "percent", "rows": rows, **({"note": note} if note else {})}


def markdown_table1(results: Results, paper: str | os.PathLike = PAPER, note: str | None = None) -> str:
    """Table 1 as Markdown: one row per model, ours, the paper's and the difference per column; ``note`` below it."""
    table = table1(results, paper)
    columns = table["columns"]
    lines = [
        "| Model | " + " | ".join(f"{c} ours | {c} paper | {c} diff" for c in columns) + " |",
        "| --- |" + " ---: |" * (3 * len(columns)),
    ]
    for row in table["rows"].values():
        cells = []
        for column in columns:
            cell = row["metrics"][column]
            cells += [_fmt(cell["ours"]), _fmt(cell["paper"]), _fmt(cell["difference"], signed=True)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    if note:
        lines += ["", f"Note: {note[0].upper()}{note[1:]}."]
    return "\n".join(lines) + "\n"


def csv_table1(results: Results, paper: str | os.PathLike = PAPER) -> str:
    """Table 1 as CSV: model, label, then ours/paper/difference per column (percent)."""
    table = table1(results, paper)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "label"] + [f"{c} {kind}" for c in table["columns"] for kind in ("ours", "paper", "difference")])
    for model, row in table["rows"].items():
        values = []
        for column in table["columns"]:
            cell = row["metrics"][column]
            values += ["" if cell[kind] is None else f"{cell[kind]:.2f}" for kind in ("ours", "paper", "difference")]
        writer.writerow([model, row["label"]] + values)
    return buffer.getvalue()


def write_table1(results: Results, out_dir: str | os.PathLike, paper: str | os.PathLike = PAPER,
                 note: str | None = None) -> list[Path]:
    """Write table1.md, table1.csv and table1.json into ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    return [
        write_text(out / "table1.md", markdown_table1(results, paper, note)),
        write_text(out / "table1.csv", csv_table1(results, paper)),
        write_json(out / "table1.json", table1(results, paper, note)),
    ]


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
