"""Metrics against cases computed by hand."""
import numpy as np
import pytest

from harrison.errors import HarrisonError
from harrison.metrics import accuracy_at_k, evaluate, multi_hot, precision_at_k, recall_at_k, top_k

# 3 images, 6 classes. Rankings (best first):
#   image 0: 2, 0, 4, 1, 3, 5      truth {2, 3}
#   image 1: 5, 4, 3, 2, 1, 0      truth {0}
#   image 2: 1, 3, 0, 2, 4, 5      truth {0, 1, 3}   (classes 0 and 2 tie at 0.5: 0 ranks first)
SCORES = np.array(
    [
        [0.8, 0.4, 0.9, 0.1, 0.6, 0.0],
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        [0.5, 0.9, 0.5, 0.7, 0.2, 0.1],
    ],
    dtype=np.float32,
)
TRUTH = [[2, 3], [0], [0, 1, 3]]


def test_top_k_breaks_ties_by_lower_class_id():
    assert top_k(SCORES, 3).tolist() == [[2, 0, 4], [5, 4, 3], [1, 3, 0]]
    assert top_k(np.zeros((1, 4)), 4).tolist() == [[0, 1, 2, 3]]


def test_per_image_values_by_hand():
    # top 1: image 0 -> 2 (hit), image 1 -> 5 (miss), image 2 -> 1 (hit)
    assert precision_at_k(SCORES, TRUTH, 1).tolist() == [1.0, 0.0, 1.0]
    # top 3: image 0 {2,0,4} hits 1 of 2; image 1 {5,4,3} hits 0; image 2 {1,3,0} hits 3 of 3
    assert precision_at_k(SCORES, TRUTH, 3) == pytest.approx([1 / 3, 0.0, 1.0])
    assert recall_at_k(SCORES, TRUTH, 3) == pytest.approx([0.5, 0.0, 1.0])
    assert accuracy_at_k(SCORES, TRUTH, 3).tolist() == [1.0, 0.0, 1.0]
    # top 5: image 0 {2,0,4,1,3} hits 2 of 2; image 1 {5,4,3,2,1} hits 0 of 1
    assert recall_at_k(SCORES, TRUTH, 5) == pytest.approx([1.0, 0.0, 1.0])
    assert accuracy_at_k(SCORES, TRUTH, 6).tolist() == [1.0, 1.0, 1.0]


def test_evaluate_averages_over_images():
    result = evaluate(SCORES, TRUTH, k=3)
    assert set(result) == {"precision@1", "recall@3", "accuracy@3"}
    assert result["precision@1"] == pytest.approx(2 / 3)
    assert result["recall@3"] == pytest.approx(0.5)
    assert result["accuracy@3"] == pytest.approx(2 / 3)
    assert evaluate(SCORES, TRUTH)["recall@5"] == pytest.approx(2 / 3)


def test_truth_as_multi_hot_gives_the_same():
    hot = multi_hot(TRUTH, 3, 6)
    assert hot.sum() == 6 and hot[2, 3] and not hot[1, 1]
    assert evaluate(SCORES, hot, k=5) == evaluate(SCORES, TRUTH, k=5)


def test_empty_truth_has_zero_recall():
    assert recall_at_k(SCORES[:1], [[]], 2).tolist() == [0.0]


def test_vectorized_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float64)  # many ties
    truth = [sorted(rng.choice(30, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(200)]
    for k in (1, 5, 10):
        top = [sorted(range(30), key=lambda c, row=row: (-row[c], c))[:k] for row in scores]
        hits = [len(set(t) & set(g)) for t, g in zip(top, truth)]
        assert precision_at_k(scores, truth, k) == pytest.approx([h / k for h in hits])
        assert recall_at_k(scores, truth, k) == pytest.approx([h / len(g) for h, g in zip(hits, truth)])
        assert accuracy_at_k(scores, truth, k).tolist() == [float(h > 0) for h in hits]


@pytest.mark.parametrize(
    "scores, truth, k, message",
    [
        (SCORES, TRUTH, 7, "outside 1..6"),
        (SCORES, TRUTH[:2], 1, "truth has 2 images"),
        (SCORES, [[0], [6], [1]], 1, "class id 6"),
        (np.full((1, 3), np.nan), [[0]], 1, "NaN"),
        (np.zeros((2, 3)), np.zeros((2, 4), dtype=bool), 1, "truth is 2 x 4"),
    ],
)
def test_bad_input_is_a_clear_error(scores, truth, k, message):
    with pytest.raises(HarrisonError, match=message):
        evaluate(scores, truth, k=k)


def make_dataset(folder):
    from harrison.dataset.lists import write_split, write_vocab

    folder.mkdir()
    write_vocab(folder / "vocab.tsv", [(f"t{c}", 1) for c in range(6)])
    write_split(folder / "test.tsv", ["a.jpg", "b.jpg", "c.jpg"], TRUTH)
    return folder


def test_evaluate_scores_stage_from_npy_and_h5(tmp_path, capsys):
    import json

    import h5py

    from harrison.cli import main

    dataset = make_dataset(tmp_path / "ds")
    np.save(tmp_path / "s.npy", SCORES)
    assert main(["evaluate-scores", "--scores", str(tmp_path / "s.npy"), "--dataset", str(dataset), "--k", "3", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx({"precision@1": 2 / 3, "recall@3": 0.5, "accuracy@3": 2 / 3})
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["images"] == 3 and saved["k"] == 3 and saved["metrics"]["recall@3"] == pytest.approx(0.5)

    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["scores"] = SCORES
        f["image"] = np.array(["a.jpg", "c.jpg", "b.jpg"], dtype=h5py.string_dtype())
    assert main(["evaluate-scores", "--scores", str(tmp_path / "s.h5"), "--dataset", str(dataset)]) == 2
    assert "row 1 is 'c.jpg' but test.tsv has 'b.jpg'" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", np.zeros((3, 7)))
    assert main(["evaluate-scores", "--scores", str(tmp_path / "wide.npy"), "--dataset", str(dataset)]) == 2
    assert "shape (3, 7)" in capsys.readouterr().err


@pytest.mark.parametrize("k", ["0", "-2"])
def test_evaluate_scores_k_below_one(tmp_path, capsys, k):
    from harrison.cli import main

    dataset = make_dataset(tmp_path / "ds")
    np.save(tmp_path / "s.npy", SCORES)
    assert main(["evaluate-scores", "--scores", str(tmp_path / "s.npy"), "--dataset", str(dataset), "--k", k]) == 2
    err = capsys.readouterr().err
    assert f"--k {k}: k must be at least 1" in err and "smaller" not in err
