"""Hashtag cleaning as the HARRISON release defines it.

A raw hashtag loses its leading '#', is folded to lower case, is rejected when it holds anything but
the letters a-z (``#love2016``, ``#l4l``), and is lemmatized with NLTK's WordNet lemmatizer with the
default noun part of speech (``girls`` -> ``girl``, ``walking`` stays). The optional verb pass
lemmatizes the noun lemma again as a verb (``walked`` -> ``walk``); the release did not use it.
"""
from __future__ import annotations

import re

from harrison.dataset.wordnet import ensure_wordnet

HASHTAG = re.compile(r"#(\w+)")


def caption_tags(caption: str) -> list[str]:
    """The #hashtags of a caption text, in order, without the '#'."""
    return HASHTAG.findall(caption)


def normalize(raw: str) -> str | None:
    """Strip '#', fold case; None when the tag holds anything but the letters a-z."""
    tag = raw.strip().lstrip("#").lower()
    return tag if tag.isascii() and tag.isalpha() else None


class TagCleaner:
    """Raw hashtag -> clean lemma (or None), each distinct raw tag computed once."""

    def __init__(self, verb_pass: bool = False):
        ensure_wordnet()
        from nltk.stem import WordNetLemmatizer

        self.verb_pass = verb_pass
        self._lemmatizer = WordNetLemmatizer()
        self._cache: dict[str, str | None] = {}

    def lemma(self, word: str) -> str:
        """The WordNet lemma of a normalized word (noun, then verb when the verb pass is on)."""
        lemma = self._lemmatizer.lemmatize(word)
        return self._lemmatizer.lemmatize(lemma, "v") if self.verb_pass else lemma

    def __call__(self, raw: str) -> str | None:
        """The clean lemma of a raw hashtag, or None when it is rejected."""
        try:
            return self._cache[raw]
        except KeyError:
            tag = normalize(raw)
            clean = None if tag is None else self.lemma(tag)
            self._cache[raw] = clean
            return clean

    @property
    def distinct_raw(self) -> int:
        """How many distinct raw tags were seen."""
        return len(self._cache)
