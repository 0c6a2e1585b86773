"""A synthetic raw crawl of the paper's size: 91,707 posts with 15.5 hashtags each on average
(about 1.42 million tags, some 228,000 distinct), for timing the dataset builder.

Tags are drawn from a pool of WordNet nouns, their plurals and case variants, made-up words and tags with
digits, so the builder does all its work: rejecting, folding case and lemmatizing. As in the paper, the
1,000 most frequent tags hold about 59% of all tags and the 5,000 most frequent about 75%: 55% of the
draws come from a head of 1,000 nouns (their plurals and case variants in the tail add the rest), the
others from a Zipf-like tail. A fifth of the posts carry their tags in a caption. Deterministic for a seed.

    .venv/bin/python bench/make_crawl.py [--out bench/out/crawl_paper.jsonl] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harrison.dataset.wordnet import ensure_wordnet  # noqa: E402
from harrison.files import atomic_path  # noqa: E402

POSTS = 91_707
TAGS_PER_POST = 15.5
HEAD, HEAD_SHARE = 1000, 0.55
POOL = 1_000_000
TAIL_EXPONENT, ZIPF_OFFSET = 0.9, 10
DEFAULT_OUT = REPO / "bench" / "out" / "crawl_paper.jsonl"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "an", "el", "is", "or", "um", "gra", "pho", "sta", "ble"]


def tag_pool(rng: np.random.Generator) -> list[str]:
    """Candidate raw tags: a head of HEAD nouns, then nouns, plurals, case variants, made-up words and tags with digits."""
    ensure_wordnet()
    from nltk.corpus import wordnet

    nouns = sorted({name for name in wordnet.all_lemma_names("n") if name.isalpha() and name.islower()})
    nouns = [nouns[i] for i in rng.permutation(len(nouns))]
    plurals = [noun + "s" for noun in nouns[::2]]
    upper = [noun.upper() for noun in nouns[::7]] + [noun.title() for noun in nouns[1::7]]
    digits = [f"{noun}{rng.integers(0, 2020)}" for noun in nouns[::4]]
    pool = dict.fromkeys(nouns + plurals + upper + digits)
    lengths = rng.integers(2, 7, size=POOL)
    picks = rng.integers(0, len(SYLLABLES), size=(POOL, 6))
    for length, row in zip(lengths, picks):
        if len(pool) >= POOL:
            break
        pool.setdefault("".join(SYLLABLES[k] for k in row[:length]))
    tail = np.array(list(pool)[HEAD:], dtype=object)
    return nouns[:HEAD] + tail[rng.permutation(len(tail))].tolist()


def make_crawl(out: Path, seed: int = 0, posts: int = POSTS) -> Path:
    """Write the crawl (JSON Lines) atomically."""
    rng = np.random.default_rng(seed)
    pool = tag_pool(rng)
    sizes = np.maximum(1, rng.poisson(TAGS_PER_POST, size=posts))
    total = int(sizes.sum())
    head = 1.0 / (np.arange(HEAD) + ZIPF_OFFSET)
    tail = 1.0 / (np.arange(len(pool) - HEAD) + ZIPF_OFFSET) ** TAIL_EXPONENT
    draws = np.where(
        rng.random(total) < HEAD_SHARE,
        rng.choice(HEAD, size=total, p=head / head.sum()),
        HEAD + rng.choice(len(pool) - HEAD, size=total, p=tail / tail.sum()),
    )
    starts = np.concatenate([[0], np.cumsum(sizes)])
    captions = rng.random(posts) < 0.2
    with atomic_path(out, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for i in range(posts):
            tags = [pool[j] for j in draws[starts[i] : starts[i + 1]]]
            image = f"images/{i // 1000:03d}/{i:06d}.jpg"
            if captions[i]:
                record = {"image": image, "caption": "photo of the day " + " ".join("#" + t for t in tags)}
            else:
                record = {"image": image, "tags": ["#" + t for t in tags]}
            handle.write(json.dumps(record) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_crawl(args.out, args.seed))


if __name__ == "__main__":
    main()
