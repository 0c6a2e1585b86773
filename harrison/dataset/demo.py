"""The bundled demo: a deterministic set of small JPEG photos and a raw hashtag crawl about them.

Every picture has a scene (its background: colours, brightness and layout decide it) and often one or
two objects (shapes of a colour). The hashtags follow what the picture shows, with probabilities, plus
the noise of a real crawl that the builder must clean: upper case, plurals, non-alphabetic tags,
content-free spam tags, repeated tags, posts with far more than 10 tags and reposted images. About a
third of the posts give their tags in a caption text. ``harrison make-demo`` writes the folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from harrison.dataset.folders import building_folder
from harrison.errors import HarrisonError
from harrison.manifest import is_current, read_manifest, write_manifest

STAGE = "make-demo"
SIZE = 96
VERSION = 1  # bump when the pictures or tags change, so that a current folder is regenerated

Draw = ImageDraw.ImageDraw
Rng = np.random.Generator

# Named colours (RGB) shared by scenes, objects and colour tags.
COLOURS = {
    "red": (210, 30, 35), "pink": (240, 120, 180), "purple": (130, 50, 170), "yellow": (245, 215, 40),
    "blue": (30, 70, 200), "orange": (245, 130, 20), "black": (20, 20, 20), "white": (245, 245, 245),
    "brown": (120, 75, 35), "grey": (140, 140, 140),
}
# Scene -> hashtags with their probabilities.
SCENE_TAGS = {
    "sky": [("sky", 0.9), ("blue", 0.4), ("cloud", 0.7)],
    "sea": [("sea", 0.9), ("beach", 0.7), ("summer", 0.4)],
    "grass": [("grass", 0.85), ("park", 0.4), ("green", 0.4)],
    "night": [("night", 0.9), ("star", 0.5), ("moon", 0.6), ("dark", 0.3)],
    "indoor": [("home", 0.8), ("room", 0.5), ("cozy", 0.4)],
    "sunset": [("sunset", 0.9), ("evening", 0.3), ("sun", 0.5)],
    "snow": [("snow", 0.9), ("winter", 0.7), ("cold", 0.3)],
    "forest": [("forest", 0.9), ("tree", 0.7), ("nature", 0.5)],
    "city": [("city", 0.9), ("building", 0.5), ("street", 0.3)],
}
# Object -> (its colours, hashtags with probabilities); a colour tag follows with probability 0.4.
OBJECT_TAGS = {
    "flower": (("pink", "purple", "red", "yellow"), [("flower", 0.9)]),
    "ball": (("red", "blue", "orange"), [("ball", 0.85)]),
    "car": (("red", "blue", "black", "white"), [("car", 0.9)]),
    "house": (("white", "yellow", "brown"), [("house", 0.9)]),
    "heart": (("red", "pink"), [("heart", 0.9), ("love", 0.4)]),
    "cat": (("grey", "black", "orange"), [("cat", 0.9), ("pet", 0.4)]),
    "dog": (("brown", "black", "white"), [("dog", 0.9), ("pet", 0.4)]),
    "cake": (("pink", "white", "brown"), [("cake", 0.9), ("birthday", 0.4)]),
}
SPAM = [("love", 0.25), ("instagood", 0.1), ("photooftheday", 0.08), ("happy", 0.08), ("like", 0.06),
        ("follow", 0.06), ("beautiful", 0.05), ("friend", 0.04), ("tbt", 0.03)]
NON_ALPHABETIC = [("love2016", 0.08), ("l4l", 0.06), ("f4f", 0.05), ("like4like", 0.05), ("2016", 0.03),
                  ("photo_of_the_day", 0.03), ("\u2764", 0.03)]
SPAM_DUMP = ["instadaily", "picoftheday", "followme", "tagsforlikes", "instalike", "igers", "webstagram",
             "bestoftheday", "instamood", "swag", "cute", "amazing", "smile", "style", "lol", "photo"]
NOUNS = frozenset({"sky", "cloud", "sea", "beach", "park", "star", "moon", "home", "room", "sunset", "tree",
                   "city", "building", "street", "flower", "ball", "car", "house", "heart", "cat", "dog",
                   "cake", "friend"})
CAPTIONS = ["what a day", "good times", "weekend vibes", "so happy today", "look at this", "just because", ""]
OBJECT_SHARE, SECOND_OBJECT_SHARE = 0.7, 0.25
DUMP_SHARE, REPOST_SHARE, CAPTION_SHARE = 0.07, 0.015, 0.3
CASE_SHARE, PLURAL_SHARE, REPEAT_SHARE = 0.15, 0.15, 0.1


def make_demo(out: str | os.PathLike, images: int = 800, seed: int = 7, force: bool = False) -> tuple[Path, bool]:
    """Write ``out/crawl.jsonl`` and ``out/images/*.jpg`` (atomically); returns the folder and whether it was written."""
    out = Path(out).resolve()
    if images < 1:
        raise HarrisonError(f"--images {images}: need at least one image")
    settings = {"images": images, "seed": seed, "size": SIZE, "version": VERSION}
    if not force and is_current(out, settings=settings):
        return out, False
    if out.exists() and any(out.iterdir()) and (read_manifest(out) or {}).get("stage") != STAGE:
        raise HarrisonError(f"{out}: exists and is not a demo folder made by harrison make-demo; choose another --out or remove it")
    rng = np.random.default_rng(seed)
    with building_folder(out) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for index in tqdm(range(images), desc="demo images", unit=" images", mininterval=1.0, leave=False):
            name = f"images/{index:05d}.jpg"
            picture, tags = _picture(np.random.default_rng([seed, index]))
            picture.save(tmp / name, format="JPEG", quality=90)
            lines.append(_post(name, tags, rng))
            if rng.random() < REPOST_SHARE:
                lines.append(_post(name, tags, rng))
        (tmp / "crawl.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    outputs = [out / "crawl.jsonl"] + sorted((out / "images").iterdir())
    write_manifest(out, STAGE, outputs=outputs, settings=settings, extra={"posts": len(lines)})
    return out, True


def _picture(rng: Rng) -> tuple[Image.Image, list[str]]:
    """One picture and the clean hashtags its content calls for (before any noise)."""
    scene = list(SCENE_TAGS)[rng.integers(len(SCENE_TAGS))]
    image = Image.fromarray(SCENES[scene](rng))
    draw = ImageDraw.Draw(image)
    tags = _draw_tags(SCENE_TAGS[scene], rng)
    count = (rng.random() < OBJECT_SHARE) + (rng.random() < SECOND_OBJECT_SHARE)
    for slot in range(count):
        name = list(OBJECT_TAGS)[rng.integers(len(OBJECT_TAGS))]
        colours, object_tags = OBJECT_TAGS[name]
        colour = colours[rng.integers(len(colours))]
        left = 6 + slot * 44 + int(rng.integers(0, 8))
        top = 40 + int(rng.integers(0, 14))
        OBJECTS[name](draw, left, top, _jitter(COLOURS[colour], rng))
        tags += _draw_tags(object_tags + [(colour, 0.4)], rng)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 5, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), list(dict.fromkeys(tags))


def _post(image: str, clean: list[str], rng: Rng) -> dict:
    """The raw post of a picture: its tags with spam and noise, as a list or inside a caption."""
    tags = list(clean) + _draw_tags(SPAM, rng) + _draw_tags(NON_ALPHABETIC, rng)
    raw = []
    for tag in tags:
        raw.append(_noisy(tag, rng))
        if rng.random() < REPEAT_SHARE:
            raw.append(_noisy(tag, rng))
    if rng.random() < DUMP_SHARE:
        raw += [SPAM_DUMP[i] for i in rng.permutation(len(SPAM_DUMP))[: rng.integers(11, len(SPAM_DUMP) + 1)]]
    order = rng.permutation(len(raw))
    raw = [raw[i] for i in order]
    if rng.random() < CAPTION_SHARE:
        text = CAPTIONS[rng.integers(len(CAPTIONS))]
        return {"image": image, "caption": " ".join([text] + ["#" + tag for tag in raw]).strip()}
    return {"image": image, "tags": ["#" + tag if rng.random() < 0.5 else tag for tag in raw]}


def _noisy(tag: str, rng: Rng) -> str:
    if tag in NOUNS and rng.random() < PLURAL_SHARE:
        tag = _plural(tag)
    if rng.random() < CASE_SHARE:
        tag = tag.upper() if rng.random() < 0.5 else tag.title()
    return tag


def _plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _draw_tags(choices: list[tuple[str, float]], rng: Rng) -> list[str]:
    return [tag for tag, p in choices if rng.random() < p]


def _jitter(colour: tuple[int, int, int], rng: Rng, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


# Scenes: each returns a SIZE x SIZE x 3 uint8 background.

def _gradient(top: tuple, bottom: tuple, rows: int = SIZE) -> np.ndarray:
    t = np.linspace(0.0, 1.0, rows)[:, None, None]
    band = (1 - t) * np.array(top, dtype=np.float32) + t * np.array(bottom, dtype=np.float32)
    return np.broadcast_to(band, (rows, SIZE, 3)).copy()


def _bands(rng: Rng, *parts: tuple[float, tuple, tuple]) -> np.ndarray:
    """Stacked horizontal bands: (share of the height, top colour, bottom colour), jittered."""
    rows, start = [], 0
    for i, (share, top, bottom) in enumerate(parts):
        height = SIZE - start if i == len(parts) - 1 else int(round(share * SIZE + rng.integers(-6, 7)))
        rows.append(_gradient(_jitter(top, rng), _jitter(bottom, rng), height))
        start += height
    return np.concatenate(rows, axis=0)


def _sky(rng: Rng) -> np.ndarray:
    image = Image.fromarray(_bands(rng, (1.0, (70, 130, 230), (170, 210, 250))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):
        x, y = int(rng.integers(0, 70)), int(rng.integers(5, 60))
        draw.ellipse([x, y, x + int(rng.integers(20, 36)), y + int(rng.integers(10, 18))], fill=_jitter((250, 250, 250), rng, 5))
    return np.asarray(image)


def _sea(rng: Rng) -> np.ndarray:
    pixels = _bands(rng, (0.35, (150, 200, 245), (190, 225, 250)), (0.4, (20, 70, 150), (40, 110, 180)), (0.25, (230, 205, 150), (210, 180, 120)))
    pixels[40:70:6] += 35
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _grass(rng: Rng) -> np.ndarray:
    pixels = _bands(rng, (0.35, (110, 170, 235), (170, 210, 245)), (0.65, (70, 160, 50), (40, 110, 30)))
    pixels += rng.normal(0, 14, (SIZE, SIZE, 1)) * np.array([0.3, 1.0, 0.3])
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _night(rng: Rng) -> np.ndarray:
    pixels = _bands(rng, (1.0, (5, 8, 30), (20, 25, 60)))
    stars = rng.random((SIZE, SIZE)) < 0.015
    pixels[stars] = 235
    image = Image.fromarray(pixels.astype(np.uint8))
    x, y = int(rng.integers(55, 80)), int(rng.integers(5, 20))
    ImageDraw.Draw(image).ellipse([x, y, x + 14, y + 14], fill=(245, 240, 200))
    return np.asarray(image)


def _indoor(rng: Rng) -> np.ndarray:
    image = Image.fromarray(_bands(rng, (0.65, (215, 190, 150), (195, 170, 130)), (0.35, (110, 70, 40), (90, 55, 30))).astype(np.uint8))
    x = int(rng.integers(8, 50))
    ImageDraw.Draw(image).rectangle([x, 8, x + 30, 36], fill=(180, 215, 240), outline=(250, 250, 250), width=2)
    return np.asarray(image)


def _sunset(rng: Rng) -> np.ndarray:
    image = Image.fromarray(_bands(rng, (0.75, (120, 50, 110), (250, 150, 40)), (0.25, (40, 20, 30), (20, 10, 15))).astype(np.uint8))
    x = int(rng.integers(20, 60))
    ImageDraw.Draw(image).pieslice([x, 56, x + 24, 80], 180, 360, fill=(255, 200, 60))
    return np.asarray(image)


def _snow(rng: Rng) -> np.ndarray:
    pixels = _bands(rng, (0.3, (190, 210, 230), (215, 225, 235)), (0.7, (245, 245, 250), (225, 230, 240)))
    pixels[rng.random((SIZE, SIZE)) < 0.03] = 255
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _forest(rng: Rng) -> np.ndarray:
    image = Image.fromarray(_bands(rng, (1.0, (30, 90, 40), (15, 55, 20))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 8)):
        x = int(rng.integers(0, SIZE - 6))
        draw.rectangle([x, 0, x + int(rng.integers(3, 7)), SIZE], fill=_jitter((80, 50, 25), rng, 10))
    return np.asarray(image)


def _city(rng: Rng) -> np.ndarray:
    image = Image.fromarray(_bands(rng, (1.0, (160, 165, 175), (110, 110, 115))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x = 0
    while x < SIZE:
        width, top = int(rng.integers(14, 26)), int(rng.integers(10, 45))
        draw.rectangle([x, top, x + width - 2, SIZE], fill=_jitter((70, 70, 80), rng, 15))
        for wy in range(top + 4, SIZE - 4, 8):
            for wx in range(x + 3, x + width - 5, 6):
                if rng.random() < 0.6:
                    draw.rectangle([wx, wy, wx + 2, wy + 3], fill=(240, 220, 120))
        x += width
    return np.asarray(image)


SCENES: dict[str, Callable[[Rng], np.ndarray]] = {
    "sky": _sky, "sea": _sea, "grass": _grass, "night": _night, "indoor": _indoor,
    "sunset": _sunset, "snow": _snow, "forest": _forest, "city": _city,
}


# Objects: each draws itself in a box of about 40 x 40 pixels with its top-left corner at (x, y).

def _flower(draw: Draw, x: int, y: int, colour: tuple) -> None:
    cx, cy = x + 20, y + 20
    for angle in np.linspace(0, 2 * np.pi, 6)[:-1]:
        px, py = cx + 11 * np.cos(angle), cy + 11 * np.sin(angle)
        draw.ellipse([px - 8, py - 8, px + 8, py + 8], fill=colour)
    draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=(250, 220, 50))


def _ball(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.ellipse([x + 4, y + 4, x + 36, y + 36], fill=colour, outline=(255, 255, 255), width=2)


def _car(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.rectangle([x + 8, y + 10, x + 30, y + 20], fill=colour)
    draw.rectangle([x, y + 18, x + 40, y + 32], fill=colour)
    for wheel in (x + 5, x + 27):
        draw.ellipse([wheel, y + 27, wheel + 10, y + 37], fill=(15, 15, 15))


def _house(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.rectangle([x + 4, y + 16, x + 36, y + 40], fill=colour)
    draw.polygon([(x, y + 17), (x + 20, y), (x + 40, y + 17)], fill=(170, 40, 30))
    draw.rectangle([x + 16, y + 26, x + 24, y + 40], fill=(90, 55, 25))


def _heart(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.ellipse([x + 2, y + 4, x + 22, y + 24], fill=colour)
    draw.ellipse([x + 18, y + 4, x + 38, y + 24], fill=colour)
    draw.polygon([(x + 3, y + 18), (x + 37, y + 18), (x + 20, y + 38)], fill=colour)


def _cat(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.ellipse([x + 4, y + 18, x + 36, y + 40], fill=colour)
    draw.ellipse([x + 10, y + 4, x + 30, y + 22], fill=colour)
    draw.polygon([(x + 10, y + 10), (x + 12, y), (x + 18, y + 6)], fill=colour)
    draw.polygon([(x + 22, y + 6), (x + 28, y), (x + 30, y + 10)], fill=colour)
    for eye in (x + 15, x + 23):
        draw.ellipse([eye, y + 10, eye + 3, y + 13], fill=(120, 200, 60))


def _dog(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.ellipse([x, y + 16, x + 32, y + 36], fill=colour)
    draw.ellipse([x + 20, y + 4, x + 40, y + 24], fill=colour)
    draw.ellipse([x + 18, y + 6, x + 24, y + 22], fill=(60, 35, 15))
    draw.rectangle([x + 4, y + 32, x + 9, y + 40], fill=colour)
    draw.rectangle([x + 22, y + 32, x + 27, y + 40], fill=colour)
    draw.ellipse([x + 35, y + 12, x + 39, y + 16], fill=(10, 10, 10))


def _cake(draw: Draw, x: int, y: int, colour: tuple) -> None:
    draw.rectangle([x + 2, y + 18, x + 38, y + 40], fill=colour)
    draw.rectangle([x + 2, y + 16, x + 38, y + 21], fill=(250, 250, 250))
    for candle in (x + 10, x + 19, x + 28):
        draw.rectangle([candle, y + 6, candle + 2, y + 16], fill=(80, 160, 230))
        draw.ellipse([candle - 1, y + 1, candle + 3, y + 6], fill=(255, 190, 30))


OBJECTS: dict[str, Callable[[Draw, int, int, tuple], None]] = {
    "flower": _flower, "ball": _ball, "car": _car, "house": _house,
    "heart": _heart, "cat": _cat, "dog": _dog, "cake": _cake,
}
