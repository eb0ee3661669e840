"""Gold questions made from the dataset itself, so they look like the model's questions.

Provided known-answer sets pair a target with one obviously right picture and unrelated wrong
ones, while the model question shows near-identical frames: a worker can tell which question is
the check. A generated set instead takes a dataset image (the *source*), makes an altered copy of
it the way queries are altered (an off-centre crop, a light and colour change, blur or noise, a
JPEG recompression) as the *reference*, offers the source as the right answer and, as wrong
answers, some of the source's own nearest neighbours by the model's cosine, chosen so that the
cosine gaps between the right answer and the wrong ones are like those of the model questions.

Wrong answers are only pictures the re-ranker (``rerank.py``) tells from the right answer by
``margin``: a neighbouring frame of a pan may show all of the reference, a second right answer for
a person too. The re-ranker looks at up to ``POOL_FACTOR x neighbours`` of the source's nearest
pictures and keeps the nearest ``neighbours`` it can separate; a source with fewer than the wrong
answers it needs (or whose altered copy the re-ranker cannot line up with it) makes no set.
No picture is used by two generated sets, so a HIT with its own set shows pictures no other gold
question shows.

Files written into ``out_dir`` (each through the atomic writer), per set ``genN``:

- ``genN.jpg``: the reference, a baseline JPEG without EXIF or other metadata;
- ``genN_1st_match<ext>``: a byte copy of the source (the right answer; same content hash);
- ``genN_2nd_match<ext>``, ``genN_3rd_match<ext>``...: byte copies of the wrong answers.

Files of an earlier generation (``<prefix>N...``) that this one does not write again are removed.

The folder is complete on its own: listed as the known-answers collection (``GoldResult.listing``
is that listing), the crowd stage finds every name of the records, which have the shape of
``known_answers.json`` (``pipeline.check_known_answers``) plus ``generated: true`` and what
they were made from.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import re
import tempfile
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from include.common.files import read_json, write_bytes
from include.common.image_files import MAX_FILE_BYTES, open_regular_file
from include.common.images import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    FitInside,
    load_for_model,
    open_image,
)
from include.image_similarity.embedding import Embedder
from include.image_similarity.rerank import RerankConfig, open_thumbnail_source, rerank, thumbnail
from include.image_similarity.sources import ImageFile, Listing, Problem
from include.image_similarity.vectors import load_vectors

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "gen"
DEFAULT_WRONG_OPTIONS = 2  # the model question offers 3 matches (layout.MAX_MATCHES)
DEFAULT_NEIGHBOURS = 8
POOL_FACTOR = 3
THUMB_CACHE = 4096
"""Thumbnails kept between candidates (about 37 KB each): neighbours recur from one candidate to
the next, and a large dataset's thumbnails would not fit in memory."""
"""The re-ranker looks at up to ``POOL_FACTOR x neighbours`` of a source's nearest pictures and
keeps the nearest ``neighbours`` it can tell from the source as the candidates for wrong answers
(a pan's next frames often show all of the reference: they would be second right answers)."""
DEFAULT_MARGIN = 0.15
"""How far the re-ranker's score of the right answer must be above every wrong one's (its
scores are 1 + ZNCC + cosine / 2 for a verified candidate). Measured on the crowd-quality
benchmark's pans (200 sets, 1,280 frames): at 0.05 a careful simulated eye picked a wrong answer
in 22 sets (a neighbour lacking 1 % of the reference is a second right answer at a glance), at
0.10 in 9, at 0.15 in 4, while the median cosine gaps stayed like the model questions' (0.010 /
0.020 vs 0.006 / 0.015)."""
REFERENCE_MAX_SIDE = 1280
# As the demo's queries (include/demo/data.py): what a reference looks like.
CROP = (0.80, 0.90)
LIGHT_CHANGE = (0.08, 0.22)
COLOUR_CHANGE = (0.85, 1.15)
BLUR_RADIUS = (0.6, 1.4)
NOISE_SIGMA = (3.0, 7.0)
JPEG_QUALITY = (55, 75)
STAGE = "gold"
SAME_PICTURE_COSINE = 0.999
"""Pictures this close by the model are one picture with other bytes (a re-encoded copy): used
by one set at most, and never two of them as the wrong answers of one set."""


class GoldError(ValueError):
    """No gold set can be generated from the dataset given; ``problems`` says why per image."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        details = "".join(f"\n  - {p.name}: {p.reason}" for p in self.problems[:20])
        more = len(self.problems) - 20
        super().__init__(message + details + (f"\n  ... and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class GapSummary:
    """Cosine gaps between a question's right (model: first) option and each wrong one.

    ``model[i]`` and ``gold[i]`` hold one question's gaps, the wrong options taken from the
    highest cosine down: ``[cos(right) - cos(closest wrong), cos(right) - cos(next), ...]``.
    """

    model: list[list[float]]
    gold: list[list[float]]

    def as_dict(self) -> dict:
        """The medians and means per wrong-option slot, and the question counts."""
        return {kind: _summary(gaps) for kind, gaps in (("model", self.model), ("gold", self.gold))}


def _summary(gaps: list[list[float]]) -> dict:
    slots = max((len(g) for g in gaps), default=0)
    columns = [[g[j] for g in gaps if len(g) > j] for j in range(slots)]
    return {
        "questions": len(gaps),
        "median": [round(median(c), 4) for c in columns],
        "mean": [round(sum(c) / len(c), 4) for c in columns],
    }


@dataclass
class GoldResult:
    """The generated sets (records for ``known_answers.json``), what was left out and why,
    the files written, and the cosine gaps of model and gold questions."""

    records: list[dict]
    requested: int
    problems: list[Problem] = field(default_factory=list)
    listing: Listing = field(default_factory=lambda: Listing(source=""))
    gaps: GapSummary = field(default_factory=lambda: GapSummary([], []))

    @property
    def complete(self) -> bool:
        return len(self.records) == self.requested


@dataclass(frozen=True)
class _Picture:
    image: ImageFile
    vector: np.ndarray


# --- the alteration ---------------------------------------------------------------------------


def _away_from_one(rng: np.random.Generator, low: float, high: float) -> float:
    delta = rng.uniform(low, high)
    return 1.0 + delta if rng.random() < 0.5 else 1.0 - delta


def altered_view(image: Image.Image, rng: np.random.Generator) -> bytes:
    """Return an altered copy of ``image`` as baseline JPEG bytes without metadata.

    An off-centre crop of 80-90 % resized back to the image's size, brightness, contrast and
    colour changed, then blurred or noised, then saved at JPEG quality 55-75: the alterations
    of the demo's queries, so a reference looks like a query.
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = rng.uniform(*CROP)
    crop_w, crop_h = width * scale, height * scale
    fx, fy = (float(rng.choice([rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)])) for _ in "xy")
    x, y = (width - crop_w) * fx, (height - crop_h) * fy
    view = image.resize(image.size, Image.Resampling.LANCZOS, box=(x, y, x + crop_w, y + crop_h))
    view = ImageEnhance.Brightness(view).enhance(_away_from_one(rng, *LIGHT_CHANGE))
    view = ImageEnhance.Contrast(view).enhance(_away_from_one(rng, *LIGHT_CHANGE))
    view = ImageEnhance.Color(view).enhance(rng.uniform(*COLOUR_CHANGE))
    if rng.random() < 0.5:
        view = view.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*BLUR_RADIUS)))
    else:
        pixels = np.asarray(view, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, rng.uniform(*NOISE_SIGMA), size=pixels.shape)
        view = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    buffer = io.BytesIO()
    # A new image carries no info, and no exif= is passed: the file holds pixels only.
    view.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


# --- inputs -----------------------------------------------------------------------------------


def model_question_scores(similarity: Mapping, options: int = DEFAULT_WRONG_OPTIONS + 1):
    """Each query's offered cosines, in rank order, from ``similarity.json``'s content."""
    return [
        [float(m["score"]) for m in sorted(q["matches"], key=lambda m: m["rank"])[:options]]
        for q in similarity["queries"]
        if q["matches"]
    ]


def shown_pictures(similarity: Mapping) -> set[str]:
    """The content hashes of every picture a model question shows (its query and its matches),
    from ``similarity.json``'s content: generated gold never uses them (``exclude``)."""
    shown = {m["sha256"] for q in similarity["queries"] for m in q["matches"]}
    return shown | {q["query"]["sha256"] for q in similarity["queries"]}


def batch_inputs(batch_dir: Path) -> tuple[list[ImageFile], dict[str, np.ndarray], list[list]]:
    """The dataset images, their vectors by content hash and the model questions' cosines of a
    batch folder the similarity stage has matched (``sources.json``, the merged vectors,
    ``similarity.json``): ``generate_gold``'s first inputs (every vector, read into memory)."""
    listing = read_json(batch_dir / "sources.json")["dataset"]
    images = [
        ImageFile(i["name"], Path(i["path"]), i["sha256"], i["size"]) for i in listing["images"]
    ]
    stored = load_vectors(batch_dir)
    vectors = dict(zip(stored.hashes, stored.read_all(), strict=True))
    similarity_path = batch_dir / "similarity.json"
    scores = model_question_scores(read_json(similarity_path)) if similarity_path.exists() else []
    return images, vectors, scores


def model_gaps(scores: Sequence[Sequence[float]], wrong_options: int) -> list[list[float]]:
    """Each model question's gaps: its first option's cosine minus each other option's,
    highest cosine first (with the re-ranker on, the first may have the lower cosine)."""
    gaps = []
    for question in scores:
        first, others = float(question[0]), sorted((float(s) for s in question[1:]), reverse=True)
        if len(others) >= wrong_options and all(math.isfinite(s) for s in (first, *others)):
            gaps.append([round(first - s, 6) for s in others[:wrong_options]])
    return gaps


def _usable_pictures(
    dataset: Sequence[ImageFile], vectors: Mapping[str, np.ndarray], exclude: Collection[str]
) -> tuple[list[_Picture], list[Problem]]:
    """One picture per content hash (the first name), each with a finite unit vector."""
    problems: list[Problem] = []
    by_hash: dict[str, _Picture] = {}
    dimension = None
    for image in sorted(dataset, key=lambda i: (i.name, i.sha256)):
        if image.sha256 in by_hash:
            problems.append(
                Problem(
                    image.name,
                    f"same content as {by_hash[image.sha256].image.name}; one picture is used once",
                    STAGE,
                )
            )
            continue
        if image.sha256 in exclude:
            continue
        vector = vectors.get(image.sha256)
        if vector is None:
            problems.append(
                Problem(image.name, "has no embedding vector (it could not be embedded)", STAGE)
            )
            continue
        vector = np.asarray(vector, dtype=np.float64).ravel()
        dimension = dimension or vector.size
        norm = float(np.linalg.norm(vector))
        if vector.size != dimension or not np.isfinite(vector).all() or norm == 0:
            problems.append(
                Problem(
                    image.name,
                    "its embedding vector is empty, of another size or not finite",
                    STAGE,
                )  # fmt: skip
            )
            continue
        by_hash[image.sha256] = _Picture(image, vector / norm)
    return list(by_hash.values()), problems


def _file_bytes(image: ImageFile) -> bytes:
    """The file's bytes, checked against the content hash it was listed with."""
    try:
        with open_regular_file(image.path) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DecodeError(image.name, f"cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_FILE_BYTES:
        raise DecodeError(image.name, "is too large to copy as a gold picture")
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise DecodeError(image.name, "changed since it was listed (its content hash differs)")
    return data


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- generation -------------------------------------------------------------------------------


def generate_gold(
    dataset: Sequence[ImageFile],
    vectors: Mapping[str, np.ndarray],
    embedder: Embedder,
    out_dir: Path,
    count: int,
    *,
    seed: int,
    model_scores: Sequence[Sequence[float]] = (),
    wrong_options: int = DEFAULT_WRONG_OPTIONS,
    exclude: Collection[str] = (),
    rerank_config: RerankConfig | None = None,
    margin: float = DEFAULT_MARGIN,
    neighbours: int = DEFAULT_NEIGHBOURS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prefix: str = DEFAULT_PREFIX,
) -> GoldResult:
    """Generate up to ``count`` gold sets from the dataset; write their files into ``out_dir``.

    :param dataset: the dataset's images (``sources.json``; ``batch_inputs`` reads a batch).
    :param vectors: their embedding vectors by content hash (``batch_inputs``, or an
        ``EmbedResult.vectors``); an image without one is left out.
    :param embedder: the model the dataset was embedded with; it embeds each reference.
    :param count: how many sets (one per HIT, for ``layout.plan_hits(own_gold=True)``).
    :param seed: every choice follows from it: the same inputs and seed give the same sets and
        the same bytes.
    :param model_scores: each model question's cosines in rank order
        (``model_question_scores``); each set's wrong answers are chosen so that its gaps are
        those of one model question (taken in a seeded rotation). Empty: the source's nearest
        neighbours closest to the reference.
    :param wrong_options: wrong answers per set (the model question's options minus one).
    :param exclude: content hashes never to use (for example the pictures model questions show).
    :param rerank_config: the re-ranker's settings (the batch's); its default otherwise.
    :param margin: how far the re-ranker's score of the right answer must lead every wrong one.
    :param neighbours: how many of the source's nearest neighbours the wrong answers come from.
    :param prefix: set ids and file names are ``<prefix>1``, ``<prefix>2``, ...
    :raises GoldError: fewer distinct usable pictures than one set needs, or no set could be
        made; fewer sets than ``count`` is not an error (``GoldResult.complete`` is False and
        ``problems`` says what was left out).
    """
    if count < 1 or wrong_options < 1 or neighbours < wrong_options:
        raise ValueError(
            f"count and wrong_options must be at least 1 and neighbours at least wrong_options, "
            f"not {count}, {wrong_options} and {neighbours}"
        )
    if not prefix.isidentifier() or prefix.lower().startswith("known"):
        raise ValueError(f"prefix {prefix!r} must be a plain word not starting with 'known'")
    # The exhaustive search, whatever the batch's re-ranker: a near twin of the right answer whose
    # score a local search under-estimated would become a wrong answer.
    config = replace(rerank_config or RerankConfig(), method="exhaustive")
    pictures, problems = _usable_pictures(dataset, vectors, set(exclude))
    needed = wrong_options + 1
    if len(pictures) < needed:
        raise GoldError(
            f"the dataset has {len(pictures)} distinct usable images; a gold set needs "
            f"{needed} (the right answer and {wrong_options} wrong ones)",
            problems,
        )
    targets = model_gaps(model_scores, wrong_options)
    if model_scores and not targets:
        log.warning("no model question has %d wrong options: gaps are not matched", wrong_options)
    rng = np.random.default_rng(seed)
    matrix = np.stack([p.vector for p in pictures])
    order = [int(i) for i in rng.permutation(len(pictures))]
    target_order = [int(i) for i in rng.permutation(len(targets))] if targets else []
    generator = _Generator(pictures, matrix, embedder, config, margin, neighbours, max_pixels)
    generator.problems = problems
    records: list[dict] = []
    gold_gaps: list[list[float]] = []
    files: list[ImageFile] = []
    used: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="gold-") as scratch:
        for source in order:
            if len(records) == count:
                break
            if source in used or source in generator.bad:
                continue
            target = targets[target_order[len(records) % len(targets)]] if targets else None
            made = generator.candidate(source, used, target, wrong_options, seed, Path(scratch))
            if made is None:
                continue
            reference, options, cosines = made
            set_id = f"{prefix}{len(records) + 1}"
            try:
                record, written = generator.write_set(out_dir, set_id, reference, options, cosines)
            except DecodeError as exc:
                problems.append(Problem(exc.name, f"{exc.reason}; its set was dropped", STAGE))
                generator.bad.update(
                    i for i in options if generator.pictures[i].image.name == exc.name
                )
                continue
            records.append(record)
            files += written
            gold_gaps.append([round(cosines[0] - c, 6) for c in cosines[1:]])
            used.update(options)
            used.update(int(i) for i in np.flatnonzero((matrix @ matrix[options].T).max(axis=1)
                                                       >= SAME_PICTURE_COSINE))  # fmt: skip
    _remove_stale(out_dir, prefix, {image.name for image in files})
    if not records:
        raise GoldError(f"no gold set could be generated from {len(pictures)} images", problems)
    if len(records) < count:
        log.warning(
            "generated %d of %d gold sets: the dataset has too few pictures the re-ranker can "
            "separate from their neighbours (%d left out)",
            len(records),
            count,
            len(problems),
        )
    gaps = GapSummary(model=targets, gold=gold_gaps)
    summary = gaps.as_dict()
    log.info(
        "generated %d/%d gold sets from %d dataset images (%d left out); median cosine gaps "
        "gold %s vs model %s",
        len(records),
        count,
        len(pictures),
        len(problems),
        summary["gold"]["median"],
        summary["model"]["median"],
    )
    return GoldResult(
        records=records,
        requested=count,
        problems=problems,
        listing=Listing(source=str(out_dir), images=files),
        gaps=gaps,
    )


class _Generator:
    """One candidate at a time: reference, embedding, wrong answers, re-ranker check."""

    def __init__(self, pictures, matrix, embedder, config, margin, neighbours, max_pixels):
        self.pictures: list[_Picture] = pictures
        self.matrix: np.ndarray = matrix
        self.embedder: Embedder = embedder
        self.config: RerankConfig = config
        self.margin = margin
        self.neighbours = neighbours
        self.max_pixels = max_pixels
        self.problems: list[Problem] = []
        self.bad: set[int] = set()
        self._thumbs: OrderedDict[int, np.ndarray] = OrderedDict()  # the latest THUMB_CACHE

    def _leave_out(self, index: int, reason: str) -> None:
        self.bad.add(index)
        self.problems.append(Problem(self.pictures[index].image.name, reason, STAGE))

    def _thumb(self, index: int) -> np.ndarray | None:
        if index in self._thumbs:
            self._thumbs.move_to_end(index)
        elif index not in self.bad:
            image = self.pictures[index].image
            try:
                source = open_thumbnail_source(
                    image.path,
                    image.name,
                    area=self.embedder.input_size.area,  # the decode matching re-ranks
                    max_pixels=self.max_pixels,
                )
                self._thumbs[index] = thumbnail(source)
            except DecodeError as exc:
                self._leave_out(index, f"{exc.reason}; not used as a gold picture")
                return None
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return self._thumbs.get(index)

    def _reference(self, index: int, seed: int, scratch: Path) -> tuple[bytes, np.ndarray] | None:
        """The altered copy of a picture and its embedding, or None (the reason recorded)."""
        image = self.pictures[index].image
        bound = FitInside(REFERENCE_MAX_SIDE, REFERENCE_MAX_SIDE)
        try:
            original = open_image(image.path, image.name, max_pixels=self.max_pixels, fit=bound)
        except DecodeError as exc:
            self._leave_out(index, f"{exc.reason}; not used as a gold picture")
            return None
        if original.size != bound.for_image(*original.size):
            original = original.resize(bound.for_image(*original.size), Image.Resampling.LANCZOS)
        # The alteration depends on the seed and the picture only, not on the loop's order.
        rng = np.random.default_rng([seed, int(image.sha256[:15], 16)])
        data = altered_view(original, rng)
        # Embedded from a file as queries are (the same decode and resize), one at a time so
        # that a vector never depends on which other references share its batch.
        path = write_bytes(scratch / f"{image.sha256[:16]}.jpg", data)
        array = load_for_model(path, self.embedder.input_size, max_pixels=self.max_pixels)
        vector = self.embedder.embed_arrays(array[None])[0].astype(np.float64)
        return data, vector / np.linalg.norm(vector)

    def candidate(
        self,
        source: int,
        used: set[int],
        target: list[float] | None,
        wrong_options: int,
        seed: int,
        scratch: Path,
    ) -> tuple[bytes, list[int], list[float]] | None:
        """``(reference bytes, [source, wrong...], their cosines to the reference)`` or None
        (the reason recorded in ``problems``)."""
        name = self.pictures[source].image.name
        cosines = self.matrix @ self.matrix[source]
        nearest = [
            int(i)
            for i in np.lexsort((np.arange(len(self.pictures)), -cosines))
            if i != source and i not in used and i not in self.bad
        ]
        if len(nearest) < wrong_options:
            self.problems.append(
                Problem(
                    name,
                    f"only {len(nearest)} unused pictures remain for {wrong_options} wrong answers",
                    STAGE,
                )  # fmt: skip
            )
            return None
        source_thumb = self._thumb(source)
        if source_thumb is None:
            return None
        made = self._reference(source, seed, scratch)
        if made is None:
            return None
        data, reference = made
        right = float(self.matrix[source] @ reference)
        reference_thumb = thumbnail(Image.open(io.BytesIO(data)))
        # The nearest pictures first, as far as POOL_FACTOR x neighbours of them: the wrong
        # answers are the nearest ones the re-ranker can tell from the right answer.
        thumbs = {i: self._thumb(i) for i in nearest[: self.neighbours * POOL_FACTOR]}
        pool = [i for i, thumb in thumbs.items() if thumb is not None]
        cosine = dict(zip(pool, (float(c) for c in self.matrix[pool] @ reference), strict=True))
        result = rerank(
            reference_thumb,
            [source_thumb, *(thumbs[i] for i in pool)],
            [right, *(cosine[i] for i in pool)],
            self.config,
        )
        if not result.alignment.ncc[0] >= self.config.min_ncc:
            self.problems.append(
                Problem(name, "the re-ranker cannot verify its altered copy against it", STAGE)
            )
            return None
        leads = result.scores[0] - result.scores[1:]
        separable = [j for j in range(len(pool)) if leads[j] >= self.margin]
        if len(separable) < wrong_options:
            closest = self.pictures[pool[int(np.argmin(leads))]].image.name if pool else "-"
            lead = float(leads.min()) if pool else 0.0
            self.problems.append(
                Problem(
                    name,
                    f"the re-ranker cannot separate it from enough of its neighbours: "
                    f"{len(separable)} of its {len(pool)} nearest lead by the margin "
                    f"{self.margin:g} (the closest, {closest}, by {lead:.3f})",
                    STAGE,
                )
            )
            return None
        shortlist = [pool[j] for j in separable[: self.neighbours]]
        to_reference = np.array([cosine[i] for i in shortlist])
        same = (self.matrix[shortlist] @ self.matrix[shortlist].T) >= SAME_PICTURE_COSINE
        wrong = _closest_gaps(shortlist, to_reference, right, target, wrong_options, same)
        options = [source, *wrong]
        option_cosines = [right, *(cosine[i] for i in wrong)]
        return data, options, option_cosines

    def write_set(
        self, out_dir: Path, set_id: str, reference: bytes, options: list[int], cosines
    ) -> tuple[dict, list[ImageFile]]:
        """Write a set's files; return its record and the files as a listing's images.

        :raises DecodeError: an option's file can no longer be read (nothing is written then).
        """
        copies = [(index, _file_bytes(self.pictures[index].image)) for index in options]
        written = [_written(out_dir / f"{set_id}.jpg", reference)]
        for rank, (index, data) in enumerate(copies, 1):
            suffix = Path(self.pictures[index].image.name).suffix.lower() or ".jpg"
            written.append(_written(out_dir / f"{set_id}_{_ordinal(rank)}_match{suffix}", data))
        target, correct, *wrong = written
        record = {
            "set_id": set_id,
            "target": target.name,
            "correct": correct.name,
            "wrong": [image.name for image in wrong],
            "hashes": {image.name: image.sha256 for image in written},
            "generated": True,
            "from_dataset": {
                copy.name: self.pictures[index].image.name
                for copy, index in zip(written[1:], options, strict=True)
            },
            "cosines": {
                copy.name: round(cosine, 6)
                for copy, cosine in zip(written[1:], cosines, strict=True)
            },
        }
        return record, written


def _remove_stale(out_dir: Path, prefix: str, keep: set[str]) -> None:
    """Remove the files of an earlier generation that this one did not write again."""
    pattern = re.compile(rf"{re.escape(prefix)}\d+(_\d+(st|nd|rd|th)_match)?\.\w+")
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if pattern.fullmatch(path.name) and path.name not in keep and path.is_file():
                path.unlink()


def _written(path: Path, data: bytes) -> ImageFile:
    write_bytes(path, data)
    return ImageFile(path.name, path, hashlib.sha256(data).hexdigest(), len(data))


def _closest_gaps(
    shortlist: list[int],
    to_reference: np.ndarray,
    right: float,
    target: list[float] | None,
    wrong_options: int,
    same: np.ndarray,
) -> list[int]:
    """The wrong answers whose gaps to the right answer are closest to ``target`` (None: the
    ones closest to the reference), highest cosine first; ties go to the nearer neighbours.
    No two of them are the same picture (``same[i, j]``), while any other choice remains."""
    ranked = sorted(range(len(shortlist)), key=lambda j: (-to_reference[j], j))
    best, best_cost = ranked[:wrong_options], math.inf
    for combo in itertools.combinations(ranked, wrong_options):  # each highest cosine first
        twins = sum(bool(same[a, b]) for a, b in itertools.combinations(combo, 2))
        if target is None:
            cost = float(sum(ranked.index(j) for j in combo))
        else:
            cost = sum(
                abs((right - to_reference[j]) - t) for j, t in zip(combo, target, strict=True)
            )
        cost += 1000.0 * twins
        if cost < best_cost - 1e-12:
            best, best_cost = list(combo), cost
    return [shortlist[j] for j in best]
