"""Tag cleaning and WordNet set-up."""
from pathlib import Path

import pytest

from harrison.dataset import wordnet
from harrison.dataset.lemmatize import TagCleaner, caption_tags, normalize
from harrison.errors import HarrisonError


def test_normalize_folds_case_and_rejects_non_letters():
    assert [normalize(t) for t in ["#Dogs", "SEA", " sky ", "love2016", "#l4l", "photo_of_the_day", "\u2764", "caf\u00e9", ""]] == [
        "dogs", "sea", "sky", None, None, None, None, None, None,
    ]


def test_noun_lemmatizer_and_verb_pass():
    nouns = TagCleaner()
    assert nouns("girls") == "girl" and nouns("#Dogs") == "dog" and nouns("skies") == "sky"
    assert nouns("walking") == "walking" and nouns("walked") == "walked" and nouns("wedding") == "wedding"
    assert nouns("#love2016") is None
    verbs = TagCleaner(verb_pass=True)
    assert verbs("walked") == "walk" and verbs("walking") == "walk" and verbs("girls") == "girl"
    assert verbs("bored") == "bore"


def test_each_raw_tag_is_cleaned_once():
    cleaner = TagCleaner()
    for tag in ["Dogs", "Dogs", "dogs", "Dogs"]:
        cleaner(tag)
    assert cleaner.distinct_raw == 2


def test_caption_tags():
    assert caption_tags("Sunny day at the #Beach, #sea!#love2016 #") == ["Beach", "sea", "love2016"]


def test_lexnames_is_wordnet_30s_list():
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"


@pytest.mark.filterwarnings("ignore:The multilingual functions")
@pytest.mark.skipif(not (wordnet.DEBIAN_WORDNET / "index.sense").exists(), reason="Debian's wordnet-base/wordnet-sense-index are not installed")
def test_build_from_debian_makes_a_folder_nltk_reads(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # NLTK reads only below its data path

    target = wordnet.build_from_debian(data_dir=tmp_path)
    assert target == tmp_path / "corpora" / "wordnet"
    assert not any(p.is_symlink() for p in target.iterdir())
    assert (target / "lexnames").read_text() == wordnet.lexnames_text()
    reader = WordNetCorpusReader(str(target), None)
    assert reader.morphy("girls", "n") == "girl"
    assert reader.synsets("dog")[0].lexname() == "noun.animal"


def test_missing_wordnet_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(wordnet, "find_wordnet", lambda: None)
    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET", tmp_path / "absent")
    with pytest.raises(HarrisonError, match="apt-get install wordnet-base wordnet-sense-index.*nltk.downloader wordnet"):
        wordnet.ensure_wordnet()
    source = tmp_path / "partial"
    source.mkdir()
    (source / "data.noun").write_text("")
    with pytest.raises(HarrisonError, match="WordNet files missing .*index.noun"):
        wordnet.build_from_debian(source, tmp_path / "nltk_data")
    assert not (tmp_path / "nltk_data" / "corpora" / "wordnet").exists()


def test_ensure_wordnet_finds_it():
    assert (Path(wordnet.ensure_wordnet()) / "index.noun").exists() or str(wordnet.ensure_wordnet()).endswith(".zip")


@pytest.mark.skipif(not (wordnet.DEBIAN_WORDNET / "index.sense").exists(), reason="Debian's wordnet-base/wordnet-sense-index are not installed")
def test_a_broken_project_copy_is_rebuilt(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("HARRISON_NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [])  # only the project folder
    broken = tmp_path / "corpora" / "wordnet"
    broken.mkdir(parents=True)
    (broken / "index.noun").write_text("")
    assert wordnet.ensure_wordnet() == broken
    assert (broken / "lexnames").read_text() == wordnet.lexnames_text()
    assert (broken / "index.noun").stat().st_size > 1_000_000
