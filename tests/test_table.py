"""Table 1 rendering beside the paper's numbers (read from configs/paper.yaml)."""
import csv
import json

import pytest
import yaml

from harrison.table import PAPER, markdown_table1, table1, write_table1

RESULTS = {
    "object": {"precision@1": 0.2830, "recall@5": 0.2, "accuracy@5": 0.5},
    "object_scene": {"precision@1": 0.31, "recall@5": 0.21385, "accuracy@5": 0.5},
}


def test_ours_in_percent_beside_the_paper():
    paper = yaml.safe_load(PAPER.read_text())
    table = table1(RESULTS)
    assert table["columns"] == paper["columns"]
    assert list(table["rows"]) == ["object", "scene", "object_scene"]
    cell = table["rows"]["object_scene"]["metrics"]["precision@1"]
    assert cell["paper"] == paper["rows"]["object_scene"]["precision@1"]
    assert cell["ours"] == pytest.approx(31.0)
    assert cell["difference"] == pytest.approx(31.0 - cell["paper"])
    assert table["rows"]["object"]["metrics"]["precision@1"]["difference"] == pytest.approx(0.0)
    assert table["rows"]["scene"]["metrics"]["recall@5"]["ours"] is None


def test_markdown_has_one_row_per_model():
    text = markdown_table1(RESULTS)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| VGG-Object |") and "| 28.30 | 28.30 | +0.00 |" in lines[2]
    assert "| 20.00 | 20.83 | -0.83 |" in lines[2]
    assert "–" in lines[3]  # the scene model has no result yet


def test_write_table1_writes_three_consistent_files(tmp_path):
    paths = write_table1(RESULTS, tmp_path)
    assert [p.name for p in paths] == ["table1.md", "table1.csv", "table1.json"]
    assert json.loads(paths[2].read_text()) == json.loads(json.dumps(table1(RESULTS)))
    rows = list(csv.DictReader(paths[1].open()))
    assert [r["model"] for r in rows] == ["object", "scene", "object_scene"]
    assert rows[0]["recall@5 ours"] == "20.00" and rows[0]["recall@5 paper"] == "20.83"
    assert rows[1]["recall@5 ours"] == ""
    assert paths[0].read_text() == markdown_table1(RESULTS)



def test_a_note_goes_below_the_markdown_and_into_the_json(tmp_path):
    note = "demo data and nets: not comparable with the paper's numbers"
    paths = write_table1(RESULTS, tmp_path, note=note)
    assert paths[0].read_text().splitlines()[-1] == "Note: Demo data and nets: not comparable with the paper's numbers."
    assert json.loads(paths[2].read_text())["note"] == note
    assert "note" not in table1(RESULTS) and "Note" not in markdown_table1(RESULTS)

def test_other_paper_file(tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text("columns: [precision@1]\nrows:\n  object: {label: X, precision@1: 10.0}\n")
    table = table1({"object": {"precision@1": 0.125}}, paper)
    assert table["rows"]["object"]["metrics"]["precision@1"] == {"ours": 12.5, "paper": 10.0, "difference": 2.5}
