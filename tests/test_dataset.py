"""The builder on small hand-made crawls: cleaning, counting, vocabulary, filtering, split, outputs."""
import json

import numpy as np

from harrison.cli import main
from harrison.dataset.build import BuildOptions, build_dataset
from harrison.dataset.lists import dataset_info, read_split, read_vocab
from harrison.manifest import read_manifest


def write_crawl(path, posts):
    path.write_text("".join(json.dumps(p) + "\n" for p in posts), encoding="utf-8")
    return path


def small_options(**changes):
    values = dict(top_n=1000, min_tags=1, max_tags=10, test_size=1, seed=0)
    values.update(changes)
    return BuildOptions(**values)


def labels_by_image(dataset, vocab):
    names = {class_id: tag for class_id, tag, _ in vocab}
    out = {}
    for split in ("train", "test"):
        for image, ids in zip(*read_split(dataset, split)):
            out[image] = [names[i] for i in ids]
    return out


def test_cleaning_counting_and_class_ids(tmp_path):
    crawl = write_crawl(
        tmp_path / "crawl.jsonl",
        [
            {"image": "a.jpg", "tags": ["#Dogs", "dog", "#love2016", "l4l", "Beach"]},
            {"image": "b.jpg", "caption": "Sunny! #beach #DOG #girls #walking"},
            {"image": "c.jpg", "tags": ["cat", "#cats", "beaches"], "caption": "and #Dog"},
            {"image": "a.jpg", "tags": ["repost"]},
            {"image": "d.jpg", "tags": ["2016", "#f4f"]},
        ],
    )
    out, built = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=small_options())
    assert built
    vocab = read_vocab(out)
    # document frequency: beach 3, dog 3, cat 1, girl 1, walking 1 -> ties by name
    assert vocab == [(0, "beach", 3), (1, "dog", 3), (2, "cat", 1), (3, "girl", 1), (4, "walking", 1)]
    assert labels_by_image(out, vocab) == {
        "a.jpg": ["dog", "beach"],
        "b.jpg": ["beach", "dog", "girl", "walking"],
        "c.jpg": ["cat", "beach", "dog"],
    }
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images"] == 3 and stats["tag_assignments"] == 9
    assert stats["duplicate_images"] == 1 and stats["posts_read"] == 5
    assert stats["rejected_non_alphabetic"] == 4 and stats["repeats_dropped"] == 2
    assert stats["dropped_posts"] == {"too_few_tags": 1, "too_many_tags": 0}
    assert stats["tags_per_image"] == {"mean": 3.0, "min": 2, "max": 4, "histogram": {"2": 1, "3": 1, "4": 1}}
    info = dataset_info(out)
    assert info["num_classes"] == 5 and info["image_root"] == str(tmp_path.resolve())
    assert info["counts"] == {"images": 3, "train": 2, "test": 1, "classes": 5, "tag_assignments": 9}
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["tag_frequency.png", "tags_per_image.png"]
    assert (out / "figures" / "tags_per_image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verb_pass_is_an_option(tmp_path):
    crawl = write_crawl(tmp_path / "c.jsonl", [{"image": "a.jpg", "tags": ["walked", "walking"]}, {"image": "b.jpg", "tags": ["x"]}])
    plain, _ = build_dataset(tmp_path / "plain", image_root=tmp_path, crawl=crawl, options=small_options())
    verbs, _ = build_dataset(tmp_path / "verbs", image_root=tmp_path, crawl=crawl, options=small_options(verb_pass=True))
    assert [t for _, t, _ in read_vocab(plain)] == ["walked", "walking", "x"]
    assert read_vocab(verbs) == [(0, "walk", 1), (1, "x", 1)]


def test_top_n_then_bounds_then_ranks_of_the_kept_posts(tmp_path):
    # counts: a 4, b 4, c 2, d 1; top 3 keeps a, b, c (a before b by name).
    # max_tags 1 drops the three posts with two tags; in the kept posts c occurs twice, a and b once.
    pairs = [["a", "b"]] * 3
    singles = [["c"], ["c"], ["b"], ["a"], ["d"]]
    posts = [{"image": f"{i}.jpg", "tags": tags} for i, tags in enumerate(pairs + singles, start=1)]
    crawl = write_crawl(tmp_path / "c.jsonl", posts)
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=small_options(top_n=3, max_tags=1))
    vocab = read_vocab(out)
    assert vocab == [(0, "c", 2), (1, "a", 1), (2, "b", 1)]
    assert labels_by_image(out, vocab) == {"4.jpg": ["c"], "5.jpg": ["c"], "6.jpg": ["b"], "7.jpg": ["a"]}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped_posts"] == {"too_few_tags": 1, "too_many_tags": 3}
    assert stats["distinct_tags"] == 4
    assert stats["coverage"]["top_1000"] == 1.0


def test_split_is_seeded_and_sized(tmp_path):
    posts = [{"image": f"{i:03d}.jpg", "tags": ["t" + "abcdefgh"[i % 8]]} for i in range(50)]
    crawl = write_crawl(tmp_path / "c.jsonl", posts)
    splits = {}
    for name, seed in (("s0", 0), ("s0b", 0), ("s1", 1)):
        out, _ = build_dataset(tmp_path / name, image_root=tmp_path, crawl=crawl, options=small_options(test_size=10, seed=seed))
        splits[name] = read_split(out, "test")[0]
        train = read_split(out, "train")[0]
        assert len(splits[name]) == 10 and len(train) == 40 and not set(train) & set(splits[name])
        assert train == sorted(train)  # each list keeps input order
    expected = sorted(f"{i:03d}.jpg" for i in np.random.default_rng(0).permutation(50)[:10])
    assert splits["s0"] == splits["s0b"] == expected
    assert splits["s1"] != splits["s0"]


def test_rebuild_skipped_while_current_and_redone_on_change(tmp_path):
    posts = [{"image": f"{i}.jpg", "tags": ["x", "y"]} for i in range(5)]
    crawl = write_crawl(tmp_path / "c.jsonl", posts)
    out, built = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=small_options())
    created = read_manifest(out)["created"]
    assert built
    assert build_dataset(out, image_root=tmp_path, crawl=crawl, options=small_options()) == (out, False)
    assert build_dataset(out, image_root=tmp_path, crawl=crawl, options=small_options(seed=3))[1]
    write_crawl(crawl, posts + [{"image": "new.jpg", "tags": ["x"]}])
    assert build_dataset(out, image_root=tmp_path, crawl=crawl, options=small_options(seed=3))[1]
    assert dataset_info(out)["counts"]["images"] == 6 and read_manifest(out)["created"] >= created
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_with_explicit_inputs(tmp_path, capsys):
    crawl = write_crawl(tmp_path / "c.jsonl", [{"image": f"{i}.jpg", "tags": ["x", "Ys"]} for i in range(5)])
    assert main(["build-dataset", "--crawl", str(crawl), "--out", str(tmp_path / "ds"), "--test-size", "2"]) == 0
    assert "5 images (3 train, 2 test), 2 classes" in capsys.readouterr().out
    assert dataset_info(tmp_path / "ds")["image_root"] == str(tmp_path.resolve())
    assert main(["build-dataset", "--crawl", str(crawl)]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_coverage_of_the_top_tags():
    from harrison.dataset.stats import coverage

    counts = [50, 30] + [1] * 20  # 100 occurrences
    assert coverage(counts, tops=(1, 2, 1000)) == {"top_1": 0.5, "top_2": 0.8, "top_1000": 1.0}


def test_coverage_is_not_applicable_for_release_input(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    (release / "data_list.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    (release / "tag_list.txt").write_text("sea \nsky sea \nsky \n")
    (release / "vocab_index.txt").write_text("sea 0\nsky 1\n")
    out, _ = build_dataset(tmp_path / "ds", image_root=release, release=release, options=small_options())
    coverage = json.loads((out / "stats.json").read_text())["coverage"]
    assert coverage["top_1000"] is None and coverage["top_5000"] is None
    assert "only the tags of its classes" in coverage["reason"]
    crawl = write_crawl(tmp_path / "c.jsonl", [{"image": "a.jpg", "tags": ["x", "y"]}, {"image": "b.jpg", "tags": ["x"]}])
    out, _ = build_dataset(tmp_path / "ds2", image_root=tmp_path, crawl=crawl, options=small_options(top_n=1))
    assert json.loads((out / "stats.json").read_text())["coverage"] == {"top_1000": 1.0, "top_5000": 1.0}
