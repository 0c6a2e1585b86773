"""The builder on the real HARRISON release lists (../shared/harrison-release): the published figures."""
import json

import numpy as np
import pytest

from harrison.dataset.build import BuildOptions, build_dataset
from harrison.dataset.lemmatize import TagCleaner
from harrison.dataset.lists import dataset_info, read_split, read_vocab
from harrison.dataset.release import read_vocab_index

HISTOGRAM = {1: 8334, 2: 8496, 3: 7597, 4: 6958, 5: 5910, 6: 5271, 7: 4456, 8: 3881, 9: 3406, 10: 3074}


@pytest.fixture(scope="module")
def release_dataset(release_dir, tmp_path_factory):
    out, built = build_dataset(tmp_path_factory.mktemp("release") / "dataset", image_root=release_dir, release=release_dir, options=BuildOptions())
    assert built
    return out


def test_release_figures(release_dataset):
    stats = json.loads((release_dataset / "stats.json").read_text())
    assert stats["images"] == 57383
    assert stats["classes"] == 997
    assert stats["tag_assignments"] == 260759
    assert stats["tags_per_image"]["mean"] == 4.5442
    assert (stats["tags_per_image"]["min"], stats["tags_per_image"]["max"]) == (1, 10)
    assert {int(k): v for k, v in stats["tags_per_image"]["histogram"].items()} == HISTOGRAM
    assert (stats["train"], stats["test"]) == (52383, 5000)
    assert stats["dropped_posts"] == {"too_few_tags": 0, "too_many_tags": 0} and stats["skipped_records"] == 0
    assert (stats["coverage"]["top_1000"], stats["coverage"]["top_5000"]) == (None, None) and stats["coverage"]["reason"]
    info = dataset_info(release_dataset)
    assert info["num_classes"] == 997 and info["seed"] == 0


def test_release_keeps_its_class_ids(release_dir, release_dataset):
    classes = read_vocab_index(release_dir / "vocab_index.txt")
    vocab = read_vocab(release_dataset)
    assert [tag for _, tag, _ in vocab] == classes
    assert vocab[0] == (0, "love", 5892)
    counts = [count for _, _, count in vocab]
    assert sum(counts) == 260759 and counts == sorted(counts, reverse=True)
    # line 1 of the release: instagram_dataset/sea/image_50.jpg with "sea instapic instagram trip travel"
    index = {tag: i for i, tag in enumerate(classes)}
    first = [index[t] for t in "sea instapic instagram trip travel".split()]
    rows = dict(zip(*read_split(release_dataset, "train"))) | dict(zip(*read_split(release_dataset, "test")))
    assert rows["instagram_dataset/sea/image_50.jpg"] == first


def test_split_is_the_seeded_permutation(release_dir, release_dataset):
    images = (release_dir / "data_list.txt").read_text().splitlines()
    expected_test = [images[i] for i in np.sort(np.random.default_rng(0).permutation(len(images))[:5000])]
    test_images, _ = read_split(release_dataset, "test")
    train_images, _ = read_split(release_dataset, "train")
    assert test_images == expected_test
    assert len(train_images) == 52383 and not set(train_images) & set(test_images)
    # numpy's PCG64 stream for seed 0 is the same on every machine (no Python hash involved)
    assert np.random.default_rng(0).permutation(57383)[:5].tolist() == [19173, 46910, 23909, 11458, 28011]


def test_noun_lemmatizer_leaves_every_release_tag_unchanged(release_dir):
    classes = read_vocab_index(release_dir / "vocab_index.txt")
    nouns = TagCleaner()
    assert [tag for tag in classes if nouns(tag) != tag] == []
    verbs = TagCleaner(verb_pass=True)
    changed = {tag: verbs(tag) for tag in classes if verbs(tag) != tag}
    assert len(changed) == 38 and changed["bored"] == "bore" and changed["wedding"] == "wed"
