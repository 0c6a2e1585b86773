"""Speed of the dataset builder on a raw crawl of the paper's size, on one core.

The crawl (bench/make_crawl.py: 91,707 posts, 15.5 tags each, about 228,000 distinct) is made once into
bench/out/. The build runs in this process pinned to one CPU; its wall time, from reading the crawl to
the finished folder (WordNet loading, figures and manifest included), must stay under 30 s; the CPU
time beside it shows how much of the wall time other processes took.
Figures go to bench/out/dataset.json.

    .venv/bin/python bench/bench_dataset.py [--seed 0] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from make_crawl import DEFAULT_OUT, make_crawl  # noqa: E402

from harrison.dataset.build import BuildOptions, build_dataset  # noqa: E402
from harrison.files import write_json  # noqa: E402

TARGET_S = 30.0
OUT = REPO / "bench" / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic crawl")
    parser.add_argument("--rounds", type=int, default=1, help="timed builds (the best is reported)")
    args = parser.parse_args()
    crawl = DEFAULT_OUT.with_name(f"crawl_paper_seed{args.seed}.jsonl")
    if not crawl.exists():
        print(f"making {crawl} ...", file=sys.stderr)
        make_crawl(crawl, args.seed)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    times, cpu_times = [], []
    for _ in range(args.rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        out, built = build_dataset(OUT / "bench_dataset", image_root=OUT, crawl=crawl, options=BuildOptions(), force=True)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        assert built
    stats = json.loads((out / "stats.json").read_text())
    record = {
        "build_seconds": round(min(times), 2),
        "target_seconds": TARGET_S,
        "passed": min(times) < TARGET_S,
        "rounds": [round(t, 2) for t in times],
        "cpu_seconds": [round(t, 2) for t in cpu_times],
        "crawl": {"posts": stats["posts_read"], "raw_tags": stats["raw_tags"], "distinct_raw_tags": stats["distinct_raw_tags"],
                  "tags_per_post": round(stats["raw_tags"] / stats["posts_read"], 2)},
        "dataset": {k: stats[k] for k in ("images", "classes", "tag_assignments", "distinct_tags", "coverage")},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_used": 1, "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    write_json(OUT / "dataset.json", record)
    print(json.dumps(record, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
