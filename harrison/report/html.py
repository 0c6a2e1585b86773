"""The report page: one static HTML document with inline CSS, relative image links and no script.

Each ``*_section`` function returns an HTML fragment; ``page`` puts them in the document. Every text that
comes from the run (tags, paths, labels) is escaped.
"""
from __future__ import annotations

import string
from html import escape
from typing import Any, Mapping, Sequence

from harrison.report.collect import Prediction, TagQuality

PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
.pos { color: #1a7f37; } .neg { color: #b42318; } .neutral { color: #666; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
img.figure { max-width: 100%; border: 1px solid #eee; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; background: #fafafa; }
.card img { display: block; margin: 0 auto 0.5em; width: 200px; height: 200px; object-fit: contain; }
.card .path { font-size: 0.75em; color: #666; word-break: break-all; }
.card ol { margin: 0.3em 0; padding-left: 1.6em; }
.tag { display: inline-block; padding: 0 0.35em; margin: 0.1em; border-radius: 3px; background: #eee; }
.hit { background: #c6f0c2; font-weight: bold; }
.missing { background: #f4f4f4; color: #888; text-align: center; height: 200px; line-height: 200px; margin-bottom: 0.5em; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="meta">$meta</p>
$sections
</body>
</html>
""")


def page(title: str, meta: str, sections: Sequence[str]) -> str:
    """The whole document."""
    return PAGE.substitute(title=escape(title), meta=escape(meta), sections="\n".join(sections))


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def figure(src: str, alt: str) -> str:
    return f'<img class="figure" src="{escape(src)}" alt="{escape(alt)}">'


def _number(value: float | None, signed: bool = False, neutral: bool = False) -> str:
    """Two decimals; ``signed`` ones with their sign, green or red (grey when ``neutral``)."""
    if value is None:
        return "–"
    if not signed:
        return f"{value:.2f}"
    colour = "neutral" if neutral else "pos" if value >= 0 else "neg"
    return f'<span class="{colour}">{value:+.2f}</span>'


def table_section(table: Mapping[str, Any] | None) -> str:
    """Table 1: per model and metric, ours beside the paper's and the difference (percent).

    When ``table["not_comparable"]`` gives a reason, the differences are grey and the reason is shown above the table.
    """
    head = "<h2>Table 1: ours against the paper</h2>"
    if table is None:
        return head + note("No model is evaluated yet: run harrison evaluate and harrison table.")
    reason = table.get("not_comparable")
    if reason:
        head += note(reason[0].upper() + reason[1:] + ".")
    columns = table["columns"]
    header = "".join(f'<th colspan="3">{escape(c)}</th>' for c in columns)
    sub = "".join("<th>ours</th><th>paper</th><th>diff</th>" for _ in columns)
    body = []
    for row in table["rows"].values():
        cells = "".join(
            f"<td>{_number(cell['ours'])}</td><td>{_number(cell['paper'])}</td><td>{_number(cell['difference'], True, bool(reason))}</td>"
            for cell in (row["metrics"][c] for c in columns)
        )
        body.append(f"<tr><td>{escape(row['label'])}</td>{cells}</tr>")
    return (f'{head}<table class="table1"><thead><tr><th rowspan="2">Model</th>{header}</tr><tr>{sub}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table><p class=\"meta\">Percentages on the test images; "
            "the paper's numbers are for the 5,000 test images of the HARRISON release.</p>")


def loss_section(image: str | None, trainings: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]) -> str:
    """The loss curves and, per model, how its training ran."""
    head = "<h2>Loss curves</h2>"
    if image is None and not trainings:
        return head + note("No model is trained yet: run harrison train.")

    def cell(value: Any) -> str:
        return "–" if value is None else escape(f"{value:,}" if isinstance(value, int) else str(value))

    rows = "".join(
        f"<tr><td>{escape(labels.get(model, model))}</td><td>{cell(t['status'])}</td>"
        f"<td>{cell(' '.join(str(t[k]) for k in ('engine', 'version', 'device') if t[k]))}</td>"
        f"<td>{cell(t['iterations'])}</td><td>{cell(t['seconds'])}</td><td>{cell(t['created'])}</td></tr>"
        for model, t in trainings.items()
    )
    table = ('<table class="runs"><thead><tr><th>model</th><th>status</th><th>engine</th><th>iterations</th>'
             f"<th>seconds</th><th>written</th></tr></thead><tbody>{rows}</tbody></table>") if trainings else ""
    return head + (figure(image, "loss curves of the classifiers") if image else "") + table


STAT_ROWS = (
    ("images", "images"), ("classes", "classes (hashtags)"), ("train", "training images"), ("test", "test images"),
    ("tag_assignments", "tag assignments"),
)


def dataset_section(stats: Mapping[str, Any] | None, figures: Sequence[str]) -> str:
    """The dataset's numbers and figures."""
    head = "<h2>Dataset</h2>"
    if stats is None and not figures:
        return head + note("The dataset is not built yet: run harrison build-dataset.")
    rows = []
    if stats is not None:
        rows += [(label, f"{stats[key]:,}") for key, label in STAT_ROWS if key in stats]
        per_image = stats.get("tags_per_image", {})
        if per_image:
            rows.append(("tags per image: mean (min to max)",
                         f"{per_image['mean']:.2f} ({per_image['min']} to {per_image['max']})"))
        rows += _coverage_rows(stats)
    table = "".join(f"<tr><td>{escape(label)}</td><td>{escape(value)}</td></tr>" for label, value in rows)
    shown = "".join(f"<p>{figure(src, 'dataset figure ' + src)}</p>" for src in figures)
    return f'{head}<table class="stats"><tbody>{table}</tbody></table>{shown}'


def _coverage_rows(stats: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) per ``top_N`` of stats.json's ``coverage``: a percentage, or "n/a" with the reason when it has none.

    A value may be a share, null, or ``{"share": ..., "reason": ...}``; a ``reason`` beside the ``top_N`` keys applies to
    each null. Without a reason, a top N that holds every distinct tag is "n/a" too (it would be 100% by definition).
    """
    coverage = stats.get("coverage") or {}
    if not isinstance(coverage, Mapping):
        return []
    common = coverage.get("reason")
    rows = []
    for name, value in coverage.items():
        if not name.startswith("top_"):
            continue
        reason = common
        if isinstance(value, Mapping):
            value, reason = value.get("share", value.get("value")), value.get("reason", common)
        top, distinct = name.removeprefix("top_"), stats.get("distinct_tags")
        if value is not None and reason is None and top.isdigit() and isinstance(distinct, int) and distinct <= int(top):
            value, reason = None, f"only {distinct:,} distinct tags"
        label = f"share of all tag occurrences held by the top {top} tags"
        shown = f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"
        rows.append((label, f"{shown} ({reason})" if shown == "n/a" and reason else shown))
    return rows


def gallery_section(model_label: str, items: Sequence[tuple[Prediction, str | None, str | None]], k: int) -> str:
    """Test images with their top-``k`` hashtags against the ground truth; ``items`` are (prediction, thumbnail, problem)."""
    head = f"<h2>Recommended hashtags for test images ({escape(model_label)})</h2>"
    if not items:
        return head + note("No model is evaluated yet: run harrison evaluate.")
    cards = []
    for item, thumb, problem in items:
        picture = (f'<img src="{escape(thumb)}" alt="{escape(item.image)}">' if thumb
                   else f'<div class="missing">{escape(problem or "image unavailable")}</div>')
        top = "".join(
            f'<li><span class="tag{" hit" if hit else ""}">#{escape(tag)}</span> {score:.3f}</li>' for tag, score, hit in item.top
        )
        truth = " ".join(f'<span class="tag{" hit" if hit else ""}">#{escape(tag)}</span>' for tag, hit in item.truth)
        cards.append(f'<div class="card">{picture}<div class="path">{escape(item.image)}</div>'
                     f"<div>top {k} ({item.hits} correct):</div><ol>{top}</ol><div>ground truth: {truth}</div></div>")
    legend = '<p class="meta">Highlighted: a recommended hashtag that the post really carries.</p>'
    return f'{head}{legend}<div class="gallery">{"".join(cards)}</div>'


def tag_section(model_label: str, rows: Sequence[TagQuality], image: str | None, k: int) -> str:
    """Per-tag precision and recall of the most frequent tags."""
    head = f"<h2>Per-tag precision and recall of the most frequent hashtags ({escape(model_label)})</h2>"
    if not rows:
        return head + note("No model is evaluated yet: run harrison evaluate.")

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    body = "".join(
        f"<tr><td>#{escape(r.tag)}</td><td>{r.count:,}</td><td>{r.support:,}</td><td>{r.predicted:,}</td>"
        f"<td>{percent(r.precision)}</td><td>{percent(r.recall)}</td></tr>"
        for r in rows
    )
    table = (f'<table class="tags"><thead><tr><th>hashtag</th><th>images (dataset)</th><th>test images with it</th>'
             f"<th>test images given it</th><th>precision@{k} %</th><th>recall@{k} %</th></tr></thead><tbody>{body}</tbody></table>")
    return head + (figure(image, "per-tag precision and recall") if image else "") + table
