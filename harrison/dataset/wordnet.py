"""WordNet for NLTK without a download.

Order: NLTK's own data when ``nltk.data.find('corpora/wordnet')`` succeeds; else a project-managed
nltk_data folder (``.nltk_data/`` in the project root, or ``$HARRISON_NLTK_DATA``) built by copying
Debian's WordNet 3.0 files (packages wordnet-base and wordnet-sense-index, in /usr/share/wordnet) and
adding the ``lexnames`` file NLTK needs and Debian lacks; else an error that says how to install it.
Files are copied, not linked: NLTK 3.10 refuses symlinks that leave its data path.

``python -m harrison.dataset.wordnet`` does the set-up (scripts/setup.sh calls it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nltk

from harrison.config import PROJECT_ROOT
from harrison.errors import HarrisonError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
INSTALL_HINT = (
    "install WordNet: `sudo apt-get install wordnet-base wordnet-sense-index` (then rerun scripts/setup.sh) "
    "or `python -m nltk.downloader wordnet`"
)
# The files NLTK's WordNet reader opens; index.sense comes from wordnet-sense-index.
REQUIRED = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")) + ("index.sense",)
OPTIONAL = ("cntlist.rev", "cntlist", "frames.vrb", "sentidx.vrb", "sents.vrb")

# WordNet 3.0's 45 lexicographer files, numbered 0-44, with their syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb): the content of the lexnames file (lexnames(5WN)).
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)


def project_data_dir() -> Path:
    """The project-managed nltk_data folder: $HARRISON_NLTK_DATA, else .nltk_data/ in the project root."""
    return Path(os.environ.get("HARRISON_NLTK_DATA") or PROJECT_ROOT / ".nltk_data").resolve()


def lexnames_text() -> str:
    """The lexnames file: two-digit number, file name, syntactic category, tab-separated."""
    return "".join(f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))


def find_wordnet() -> Path | None:
    """Where NLTK finds WordNet (its own data paths, then the project folder), or None."""
    data_dir = str(project_data_dir())
    if data_dir not in nltk.data.path:
        nltk.data.path.append(data_dir)
    try:
        return Path(str(nltk.data.find("corpora/wordnet")))
    except LookupError:
        return None


def build_from_debian(source: Path = DEBIAN_WORDNET, data_dir: Path | None = None) -> Path:
    """Copy Debian's WordNet files into ``data_dir/corpora/wordnet`` with a lexnames file (atomically)."""
    data_dir = data_dir or project_data_dir()
    missing = [name for name in REQUIRED if not (source / name).is_file()]
    if missing:
        raise HarrisonError(f"{source}: WordNet files missing ({', '.join(missing)}); {INSTALL_HINT}")
    target = data_dir / "corpora" / "wordnet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        for name in REQUIRED + OPTIONAL:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="ascii")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def ensure_wordnet() -> Path:
    """WordNet usable by NLTK: found, or built from Debian's files; its folder. Raises HarrisonError otherwise."""
    found = find_wordnet()
    if found is not None and not _incomplete_project_copy(found):
        return found
    if not DEBIAN_WORDNET.is_dir():
        raise HarrisonError(f"NLTK has no WordNet and {DEBIAN_WORDNET} does not exist; {INSTALL_HINT}")
    build_from_debian()
    found = find_wordnet()
    if found is None:
        raise HarrisonError(f"built {project_data_dir()} but NLTK still finds no WordNet; {INSTALL_HINT}")
    return found


def _incomplete_project_copy(found: Path) -> bool:
    """True when ``found`` is the project's own copy and a file of it is missing (an older or broken set-up)."""
    if found.resolve() != (project_data_dir() / "corpora" / "wordnet").resolve():
        return False
    return any(not (found / name).is_file() for name in REQUIRED + ("lexnames",))


if __name__ == "__main__":
    try:
        print(f"[setup] WordNet for NLTK: {ensure_wordnet()}")
    except HarrisonError as exc:
        raise SystemExit(f"error: {exc}") from None
