"""Bad input: an error naming file and line and what to do, or skipped and counted with --skip-bad."""
import json
import os

import pytest

from harrison.cli import main
from harrison.dataset.build import BuildOptions, build_dataset
from harrison.dataset.lists import dataset_info, read_split, read_vocab
from harrison.errors import HarrisonError

GOOD = [{"image": f"{i}.jpg", "tags": ["sea", "sky"]} for i in range(4)]


def crawl_with(tmp_path, bad_line: str, at: int = 2):
    lines = [json.dumps(p) for p in GOOD]
    lines.insert(at, bad_line)
    path = tmp_path / "crawl.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


BAD_LINES = [
    ('{"image": "x.jpg", "tags": ["a"', "malformed JSON"),
    ('{"tags": ["a", "b"]}', "no image path"),
    ('{"image": "", "tags": ["a"]}', "no image path"),
    ('{"image": "x.jpg", "tags": "a b"}', "bad tags"),
    ('{"image": "x.jpg"}', "no tags"),
    ('["x.jpg", "a"]', "not a post"),
    ('{"image": "x.jpg", "caption": 3}', "bad caption"),
]


@pytest.mark.parametrize("line, reason", BAD_LINES)
def test_bad_crawl_line_is_an_error_naming_file_and_line(tmp_path, line, reason):
    crawl = crawl_with(tmp_path, line)
    out = tmp_path / "ds"
    with pytest.raises(HarrisonError) as caught:
        build_dataset(out, image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1))
    message = str(caught.value)
    assert message.startswith(f"{crawl.resolve()}:3: {reason}")
    assert "--skip-bad" in message
    assert not out.exists() and os.listdir(tmp_path) == ["crawl.jsonl"]


@pytest.mark.parametrize("line, reason", BAD_LINES)
def test_skip_bad_counts_the_records_in_the_manifest(tmp_path, line, reason):
    crawl = crawl_with(tmp_path, line)
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1, skip_bad=True))
    skipped = dataset_info(out)["skipped"]
    assert skipped["count"] == 1 and skipped["reasons"] == {reason: 1}
    assert skipped["examples"][0].startswith(f"{crawl.resolve()}:3: {reason}")
    assert dataset_info(out)["counts"]["images"] == 4


def test_crawl_line_not_in_utf8_is_an_encoding_error(tmp_path):
    crawl = crawl_with(tmp_path, "")
    lines = crawl.read_bytes().split(b"\n")
    lines[2] = '{"image": "x.jpg", "tags": ["caf\u00e9"]}'.encode("latin-1")
    crawl.write_bytes(b"\n".join(lines))
    with pytest.raises(HarrisonError) as caught:
        build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1))
    message = str(caught.value)
    assert message.startswith(f"{crawl.resolve()}:3: not UTF-8: byte 33 of the line (0xe9) is not valid UTF-8")
    assert "save the crawl as UTF-8" in message and "JSON" not in message
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1, skip_bad=True))
    assert dataset_info(out)["skipped"]["reasons"] == {"not UTF-8": 1}


def test_crawl_with_a_byte_order_mark(tmp_path):
    crawl = crawl_with(tmp_path, json.dumps({"image": "x.jpg", "tags": ["caf\u00e9", "sea"]}), at=0)
    crawl.write_bytes(b"\xef\xbb\xbf" + crawl.read_bytes())
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1))
    assert dataset_info(out)["counts"]["images"] == 5


def test_empty_missing_and_unreadable_crawls(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(HarrisonError, match="empty.jsonl: the crawl is empty"):
        build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=empty, options=BuildOptions(test_size=1, skip_bad=True))
    with pytest.raises(HarrisonError, match="missing.jsonl: cannot read the crawl"):
        build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=tmp_path / "missing.jsonl")
    with pytest.raises(HarrisonError, match="cannot read the crawl"):
        build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=tmp_path)  # a folder
    assert not (tmp_path / "ds").exists()


def test_test_size_too_large_leaves_the_old_dataset_intact(tmp_path):
    crawl = crawl_with(tmp_path, json.dumps({"image": "x.jpg", "tags": ["a"]}))
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(HarrisonError, match="5 images remain, not enough for a test split of 5"):
        build_dataset(out, image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=5))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawl.jsonl", "ds"]


def write_release(folder, data, tags, vocab="sea 0\nsky 1\n"):
    folder.mkdir(exist_ok=True)
    (folder / "data_list.txt").write_text(data)
    (folder / "tag_list.txt").write_text(tags)
    (folder / "vocab_index.txt").write_text(vocab)
    return folder


def test_release_lists_of_different_lengths(tmp_path):
    release = write_release(tmp_path / "r", "a.jpg\nb.jpg\nc.jpg\n", "sea \nsky \n")
    with pytest.raises(HarrisonError) as caught:
        build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1, skip_bad=True))
    assert f"{release.resolve() / 'data_list.txt'}:3: data_list.txt has 3 lines but tag_list.txt has 2" in str(caught.value)


def test_release_unknown_tag_and_bad_vocabulary(tmp_path):
    release = write_release(tmp_path / "r", "a.jpg\nb.jpg\nc.jpg\n", "sea \nsky moon \nsea sky \n")
    with pytest.raises(HarrisonError, match=r"tag_list.txt:2: unknown tag: 'moon' is not in vocab_index.txt"):
        build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1))
    out, _ = build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1, skip_bad=True))
    assert dataset_info(out)["skipped"]["count"] == 1
    assert sorted(read_split(out, "train")[0] + read_split(out, "test")[0]) == ["a.jpg", "c.jpg"]
    write_release(release, "a.jpg\n", "sea \n", vocab="sea 0\nsky 2\n")
    with pytest.raises(HarrisonError, match="vocab_index.txt: class ids must run 0..1, but 1 is missing"):
        build_dataset(tmp_path / "ds2", image_root=release, release=release)
    write_release(release, "a.jpg\n", "sea \n", vocab="sea 0\nsky\n")
    with pytest.raises(HarrisonError, match="vocab_index.txt:2: expected a tag and its class id"):
        build_dataset(tmp_path / "ds2", image_root=release, release=release)
    (release / "tag_list.txt").unlink()
    with pytest.raises(HarrisonError, match="tag_list.txt not found"):
        build_dataset(tmp_path / "ds2", image_root=release, release=release)


def test_release_repeated_tag_and_repeated_image(tmp_path):
    release = write_release(tmp_path / "r", "a.jpg\n", "sea \n", vocab="sea 0\nsky 1\nsea 2\n")
    with pytest.raises(HarrisonError, match=r"vocab_index.txt:3: tag 'sea' already listed on line 1"):
        build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1, skip_bad=True))
    write_release(release, "a.jpg\nb.jpg\na.jpg\nc.jpg\n", "sea \nsky \nsky \nsea sky \n")
    with pytest.raises(HarrisonError, match=r"data_list.txt:3: repeated image: 'a.jpg' is already listed on line 1.*--skip-bad"):
        build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1))
    out, _ = build_dataset(tmp_path / "ds", image_root=release, release=release, options=BuildOptions(test_size=1, skip_bad=True))
    assert dataset_info(out)["skipped"]["reasons"] == {"repeated image": 1}
    assert sorted(read_split(out, "train")[0] + read_split(out, "test")[0]) == ["a.jpg", "b.jpg", "c.jpg"]


def test_malformed_dataset_files_name_file_and_line(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "vocab.tsv").write_text("id\ttag\tcount\n0\tsea\t3\n2\tsky\t1\n")
    with pytest.raises(HarrisonError, match=r"vocab.tsv:3: expected class id 1, found 2"):
        read_vocab(ds)
    (ds / "test.tsv").write_text("image\tlabels\na.jpg\t0 1\nb.jpg\t0 x\n")
    with pytest.raises(HarrisonError, match=r"test.tsv:3: labels must be space-separated class ids"):
        read_split(ds, "test")
    (ds / "train.tsv").write_text("image labels\n")
    with pytest.raises(HarrisonError, match=r"train.tsv:1: expected the header"):
        read_split(ds, "train")
    with pytest.raises(HarrisonError, match="manifest.json: not found; run harrison build-dataset"):
        dataset_info(ds)


def test_cli_reports_the_error_with_status_2(tmp_path, capsys):
    crawl = crawl_with(tmp_path, "{oops")
    assert main(["build-dataset", "--crawl", str(crawl), "--out", str(tmp_path / "ds")]) == 2
    assert ":3: malformed JSON" in capsys.readouterr().err
    assert main(["build-dataset", "--crawl", str(crawl), "--out", str(tmp_path / "ds"), "--skip-bad", "--test-size", "1"]) == 0
    assert "skipped records: 1" in capsys.readouterr().out


def test_interrupted_build_leaves_the_old_dataset_and_no_temporary_folder(tmp_path, monkeypatch):
    from harrison.dataset import figures

    crawl = crawl_with(tmp_path, json.dumps({"image": "x.jpg", "tags": ["a"]}))
    out, _ = build_dataset(tmp_path / "ds", image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "tag_frequency_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(out, image_root=tmp_path, crawl=crawl, options=BuildOptions(test_size=2))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawl.jsonl", "ds"]
    assert dataset_info(out)["counts"]["test"] == 1
