"""``harrison report``: the run's static HTML report, ``<workdir>/results/report/index.html`` with its PNGs beside it.

The page opens offline (no script, no external link): Table 1 against the paper, the loss curves, the dataset's
statistics and figures, a gallery of test images with their top-K hashtags against the ground truth, and per-tag
precision and recall of the most frequent tags. Parts a run has not reached yet say which command fills them
in. The folder is built beside its place and renamed into it, so a report is either the old one or complete.
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

from harrison.config import Config, add_config_arguments, config_from_args
from harrison.dataset.folders import building_folder
from harrison.errors import HarrisonError
from harrison.files import read_json, write_text
from harrison.report import collect, figures, html
from harrison.stages.extract import image_root
from harrison.table import load_paper

GALLERY_IMAGES = 12
TOP_TAGS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="the model whose scores fill the gallery and the per-tag table "
                                        "(default: the config's last evaluated model)")
    parser.add_argument("--images", type=int, default=GALLERY_IMAGES, help=f"test images in the gallery (default: {GALLERY_IMAGES})")
    parser.add_argument("--tags", type=int, default=TOP_TAGS, help=f"most frequent tags in the per-tag table (default: {TOP_TAGS})")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    workdir = config.workdir
    models = list(config.section("models"))
    if args.model is not None and args.model not in models:
        raise HarrisonError(f"--model {args.model!r}: {config.path} defines {', '.join(models)}")
    evaluated = [m for m in models if (workdir / "eval" / m / "scores.h5").exists()]
    model = args.model or (evaluated[-1] if evaluated else None)
    out = workdir / "results" / "report"
    try:
        _write(out, config, model, args)
    except OSError as exc:
        raise HarrisonError(f"cannot write the report in {out.parent}: {exc.strerror} ({exc.filename2 or exc.filename}); free some space or "
                            "choose a writable --workdir; the previous report, if any, is intact") from None
    print(out / "index.html")
    return 0


def _write(out: Path, config: Config, model: str | None, args: argparse.Namespace) -> None:
    """Build the report folder beside ``out`` and rename it into place; ``model`` fills the gallery and tag table."""
    workdir, models = config.workdir, list(config.section("models"))
    k = int(config.section("evaluate", "k"))
    labels = {name: row.get("label", name) for name, row in load_paper()["rows"].items()}
    with building_folder(out) as tmp:
        sections = [html.table_section(collect.read_table(workdir, models))]
        curves = collect.read_losses(workdir, models)
        loss_png = figures.loss_figure(curves, labels, tmp / "loss.png").name if curves else None
        sections.append(html.loss_section(loss_png, collect.read_trainings(workdir, models), labels))
        stats, dataset_figures = collect.read_dataset(workdir)
        copied = []
        for source in dataset_figures:
            shutil.copyfile(source, tmp / f"dataset_{source.name}")
            copied.append(f"dataset_{source.name}")
        sections.append(html.dataset_section(stats, copied))
        scored = collect.read_scored(workdir, model) if model else None
        label = labels.get(model, model or "")
        if scored is None:
            sections += [html.gallery_section(label, [], k), html.tag_section(label, [], None, k)]
        else:
            sections.append(html.gallery_section(label, _gallery(scored, workdir, tmp, args.images, k), k))
            rows = collect.tag_quality(scored, k, args.tags)
            sections.append(html.tag_section(label, rows, figures.tag_quality_figure(rows, k, tmp / "tags.png").name, k))
        written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta = f"run '{config['name']}' in {workdir}; config {config.path}; {_engines(workdir, models)}written {written}"
        write_text(tmp / "index.html", html.page(f"HARRISON hashtag recommendation: {config['name']}", meta, sections))


def _gallery(scored: collect.Scored, workdir: Path, folder: Path, count: int, k: int) -> list:
    """Predictions of ``count`` test images with their thumbnails copied into ``folder/thumbs``."""
    root = image_root(workdir / "dataset")
    items = []
    for number, item in enumerate(collect.predictions(scored, collect.gallery_rows(count, len(scored.images)), k)):
        name = f"thumbs/{number:03d}.jpg"
        problem = figures.thumbnail(root / item.image, folder / name)
        if problem:
            print(f"{root / item.image}: {problem}; shown without its picture", file=sys.stderr)
        items.append((item, None if problem else name, problem))
    return items


def _engines(workdir: Path, models: list[str]) -> str:
    found = {}
    for model in models:
        path = workdir / "eval" / model / "metrics.json"
        if path.exists():
            found.setdefault(str(read_json(path).get("engine", "?")), []).append(model)
    return "".join(f"engine {engine}: {', '.join(names)}; " for engine, names in found.items())
