"""Re-rank a query's shortlist by spatial verification on small greyscale thumbnails.

Global CNN vectors find the right scene but barely separate neighbouring frames of a video (a
pan moves the picture by a few per cent per frame, and the vectors move even less). This second
stage checks, for a query and each shortlisted candidate, how well one image lines up with a
scaled and shifted window of the other:

- *query inside candidate*: the query is a crop of the candidate (zoom 1.0 to 1/``min_scale``)
  at any offset;
- *candidate inside query*: the reverse, so a wider query still finds a tighter dataset image.

The measure is zero-mean normalised cross-correlation (ZNCC), which ignores brightness and
contrast changes; thumbnails are small enough that blur, noise and JPEG artefacts mostly vanish.

Two searches give the alignment (``RerankConfig.method``):

- ``pyramid`` (the default): coarse to fine with OpenCV's ``matchTemplate``
  (``TM_CCOEFF_NORMED`` is ZNCC). Every offset, scale and direction is tried on 32-pixel copies
  (the query against all candidates of one shape in one call, the candidates tiled; all
  candidates inside the query in one matrix product), then the best ``refine_top`` candidates
  are lined up again on the 128-pixel thumbnails within ``refine_radius`` pixels of the coarse
  best offset, climbing from the coarse best scale to the peak (at most ``refine_scales`` steps
  each way). About 7 ms a query for a 20-candidate shortlist on one core, with the same
  recall as the exhaustive search on ``make benchmark``'s near-duplicate sets. Candidates not
  refined score 0 (not verified): they keep their cosine order after the verified ones.
- ``exhaustive``: every offset of every scale and both directions on the 128-pixel thumbnails,
  with an FFT, all candidates of the same shape in one batched transform (about 150 ms a query).
  Generated gold uses it: there a candidate's score must never be under-estimated, since a
  near twin of the right answer that scored low would become a wrong answer.

Use::

    thumbs = [thumbnail(path) for path in dataset_paths]          # once, stored with the vectors
    result = rerank(thumbnail(query_path), [thumbs[i] for i in shortlist], cosines)
    new_shortlist = [shortlist[i] for i in result.order]

The cosine stays the score reported to people; the re-ranker only changes the order, and only
among candidates whose cosine is close to the best one, so an unrelated image is never promoted
over a genuinely similar one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from include.image_similarity.settings import DEFAULTS

log = logging.getLogger(__name__)
# OpenCV's own threads cost more than they give on images this small; many queries fan out
# across tasks instead (this module is the project's only OpenCV user).
cv2.setNumThreads(1)

DEFAULT_THUMB_SIDE = 128
MIN_TEMPLATE_SIDE = 8
# A window whose pixels vary less than this (in grey levels, standard deviation) is flat: its
# correlation with anything is undefined, and is scored 0 instead of NaN.
FLAT_STD = 0.5
METHODS = ("pyramid", "exhaustive")


@dataclass(frozen=True)
class RerankConfig:
    """Parameters of the spatial verification and of how it is merged with the cosine order."""

    shortlist: int = DEFAULTS.matching.rerank_shortlist
    """How many nearest images by cosine are verified per query (at least k are)."""
    min_scale: float = 0.70
    """The smallest share of the other image's width one image may cover (a crop of 70 %)."""
    n_scales: int = 13
    """How many scales between ``min_scale`` and 1.0 are tried (geometrically spaced)."""
    both_directions: bool = True
    """Also try the candidate as a crop of the query, not only the query as a crop of it."""
    min_ncc: float = 0.75
    """Below this correlation a candidate is not verified and keeps its cosine rank."""
    cosine_margin: float = 0.10
    """Only candidates whose cosine is within this of the best cosine may be promoted."""
    cosine_weight: float = 0.5
    """How much of the cosine is added to the correlation when ordering verified candidates."""
    subpixel: bool = True
    """Refine each correlation peak between pixels (a parabola along each axis)."""
    method: str = "pyramid"
    """``pyramid`` (coarse to fine, OpenCV) or ``exhaustive`` (every offset at full size, FFT)."""
    coarse_side: int = 32
    """Pyramid: the longer side of the coarse copies every hypothesis is tried on."""
    coarse_scales: int = 7
    """Pyramid: scales tried coarsely for the query inside a candidate."""
    coarse_scales_reverse: int = 3
    """Pyramid: scales tried coarsely for a candidate inside the query."""
    refine_top: int | None = 8
    """Pyramid: how many candidates, best coarse score first, are refined (None: all)."""
    refine_scales: int = 2
    """Pyramid: at most this many scales of the full ladder refined on each side of the coarse
    best (the climb stops on a side once the score falls)."""
    refine_radius: int = 4
    """Pyramid: thumbnail pixels searched around the coarse best offset, each way."""

    def scales(self) -> np.ndarray:
        """Return the scales tried, largest (1.0) first."""
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], not {self.min_scale}")
        if self.n_scales < 1:
            raise ValueError(f"n_scales must be at least 1, not {self.n_scales}")
        return _ladder(self.min_scale, self.n_scales)

    def check(self) -> None:
        """Raise ValueError for settings no search can run with."""
        self.scales()
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.coarse_side < MIN_TEMPLATE_SIDE:
            raise ValueError(f"coarse_side must be at least {MIN_TEMPLATE_SIDE}")
        if min(self.coarse_scales, self.coarse_scales_reverse) < 1:
            raise ValueError("coarse_scales and coarse_scales_reverse must be at least 1")
        if self.refine_top is not None and self.refine_top < 1:
            raise ValueError(f"refine_top must be at least 1 or None, not {self.refine_top}")
        if self.refine_scales < 0 or self.refine_radius < 0:
            raise ValueError("refine_scales and refine_radius must not be negative")


@functools.lru_cache(maxsize=64)
def _ladder(smallest: float, count: int) -> np.ndarray:
    """``count`` scales from 1.0 down to ``smallest``, geometrically spaced (read-only: one
    array serves every query; ``np.geomspace`` costs more than a query's bookkeeping)."""
    scales = np.array([1.0]) if count == 1 else np.geomspace(1.0, smallest, count)
    scales.setflags(write=False)
    return scales


@dataclass(frozen=True)
class Alignment:
    """The best alignment found for each candidate (arrays of length ``n_candidates``).

    ``ncc`` is the best ZNCC in [-1, 1] (0 when undefined); ``scale`` the width share the
    smaller image covers in the larger; ``inside_candidate`` is True when the query was found
    inside the candidate (False: the candidate inside the query); ``offset`` holds ``(y, x)`` of
    the window's top-left corner in thumbnail pixels of the larger image.
    """

    ncc: np.ndarray
    scale: np.ndarray
    inside_candidate: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class RerankResult:
    """``order[r]`` is the shortlist position ranked ``r``-th; ``scores`` are the sort keys."""

    order: np.ndarray
    scores: np.ndarray
    alignment: Alignment = field(repr=False)


def thumbnail(
    image: Image.Image | np.ndarray | str | Path, long_side: int = DEFAULT_THUMB_SIDE
) -> np.ndarray:
    """Return a ``uint8`` greyscale thumbnail whose longer side is ``long_side`` pixels.

    ``image`` is a Pillow image, an RGB or greyscale ``uint8`` array (for example the array
    already decoded for the model), or a path. The aspect ratio is kept. At the default size a
    16:9 frame gives 128x72 = 9 KB.
    """
    if long_side < MIN_TEMPLATE_SIDE:
        raise ValueError(f"long_side must be at least {MIN_TEMPLATE_SIDE}, not {long_side}")
    if isinstance(image, (str, Path)):
        image = open_thumbnail_source(image, long_side=long_side)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"expected an (h, w) or (h, w, 3) array, not shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    width, height = image.size
    factor = long_side / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    grey = image.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BOX if factor < 1 else Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def open_thumbnail_source(
    path: str | Path,
    name: str | None = None,
    *,
    long_side: int = DEFAULT_THUMB_SIDE,
    area: int = DEFAULTS.embedding.image_area,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open an image file for a thumbnail, decoded as the embedding step decodes it for a model
    fed ``area`` pixels (JPEGs in draft mode at 1/2 to 1/8 scale), so a thumbnail made from this
    and one the embedding step kept are the same pixels: a run ranks the same whichever it used.

    Raises ``DecodeError`` (with the reason in words) for anything Pillow cannot read.
    """
    from include.common.images import DEFAULT_MAX_PIXELS, InputSize, open_image

    return open_image(
        path,
        name,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        fit=InputSize(area=thumbnail_decode_area(area, long_side)),
    )


def thumbnail_decode_area(area: int, long_side: int = DEFAULT_THUMB_SIDE) -> int:
    """The decode a thumbnail is made from: the model's (``area`` pixels), unless that is too
    small for the thumbnail (an ``InputSize`` of long_side² pixels is at least long_side wide
    and high for aspects up to 3:1, so the decode never comes out smaller than the thumbnail)."""
    return max(area, long_side * long_side)


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float greyscale array with area averaging (bilinear when enlarging)."""
    if array.shape == (height, width):
        return array.astype(np.float64)
    image = Image.fromarray(array.astype(np.float32), mode="F")
    shrinking = width <= array.shape[1] and height <= array.shape[0]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(image.resize((width, height), method), dtype=np.float64)


def _integrals(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded integral tables of the pixels and of the squared pixels of a ``(n, H, W)``
    stack: any window's sums then cost four lookups (``_window_spread``)."""

    def table(values: np.ndarray) -> np.ndarray:
        integral = np.zeros((values.shape[0], values.shape[1] + 1, values.shape[2] + 1))
        integral[:, 1:, 1:] = values.cumsum(1).cumsum(2)
        return integral

    return table(images), table(images * images)


def _window_spread(integrals: tuple[np.ndarray, np.ndarray], th: int, tw: int) -> np.ndarray:
    """Return each ``th x tw`` window's sum of squared deviations from its mean (valid offsets),
    from ``_integrals``: its variance times the window's pixel count; below
    ``count * FLAT_STD**2`` it is flat."""

    def box(integral: np.ndarray) -> np.ndarray:
        return (
            integral[:, th:, tw:]
            - integral[:, :-th, tw:]
            - integral[:, th:, :-tw]
            + integral[:, :-th, :-tw]
        )

    sums, squares = (box(table) for table in integrals)
    return np.maximum(squares - sums * sums / (th * tw), 0.0)


def _zncc_maps(images: np.ndarray, spectra: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Return ZNCC of each template at every valid offset of the matching image.

    ``images`` is ``(n or 1, H, W)`` with ``spectra`` its ``rfft2``; ``templates`` is
    ``(n or 1, th, tw)``. Broadcasting pairs one image with many templates or the reverse.
    """
    height, width = images.shape[1:]
    th, tw = templates.shape[1:]
    zero_mean = templates - templates.mean(axis=(1, 2), keepdims=True)
    t_norm = np.sqrt((zero_mean**2).sum(axis=(1, 2)))  # (n,)
    # Correlation = convolution with the flipped template; FFT is circular, but the valid
    # offsets (0..H-th, 0..W-tw) never wrap around.
    t_spectra = np.fft.rfft2(zero_mean, s=(height, width))
    corr = np.fft.irfft2(spectra * np.conj(t_spectra), s=(height, width))
    corr = corr[:, : height - th + 1, : width - tw + 1]
    count = th * tw
    variance = _window_spread(_integrals(images), th, tw)
    denominator = np.sqrt(variance) * t_norm[:, None, None]
    flat = (variance < count * FLAT_STD**2) | (t_norm[:, None, None] < np.sqrt(count) * FLAT_STD)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncc = np.where(flat, 0.0, corr / np.where(flat, 1.0, denominator))
    return np.clip(ncc, -1.0, 1.0)


def _peak_gain(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Return how much a parabola through three samples rises above the middle one."""
    curvature = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = -((right - left) ** 2) / (8.0 * curvature)
    return np.where(curvature < 0, np.clip(gain, 0.0, None), 0.0)


def _best(ncc_maps: np.ndarray, subpixel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return each map's maximum and its ``(y, x)`` (the first one on ties).

    With ``subpixel``, the maximum is refined by a parabola through the peak and its neighbours
    along each axis, so a true match that falls between pixels is not scored lower than a
    neighbour that happens to fall on the grid.
    """
    n, height, width = ncc_maps.shape
    flat = ncc_maps.reshape(n, -1)
    where = flat.argmax(axis=1)
    ys, xs = np.unravel_index(where, (height, width))
    rows = np.arange(n)
    peak = flat[rows, where]
    if subpixel:
        inner_y = (ys > 0) & (ys < height - 1)
        inner_x = (xs > 0) & (xs < width - 1)
        y0, y1 = np.clip(ys - 1, 0, height - 1), np.clip(ys + 1, 0, height - 1)
        x0, x1 = np.clip(xs - 1, 0, width - 1), np.clip(xs + 1, 0, width - 1)
        gain_y = _peak_gain(ncc_maps[rows, y0, xs], peak, ncc_maps[rows, y1, xs])
        gain_x = _peak_gain(ncc_maps[rows, ys, x0], peak, ncc_maps[rows, ys, x1])
        peak = np.minimum(peak + np.where(inner_y, gain_y, 0) + np.where(inner_x, gain_x, 0), 1.0)
    return peak, np.stack([ys, xs], axis=1)


def align(
    query_thumb: np.ndarray,
    candidate_thumbs: Sequence[np.ndarray],
    config: RerankConfig | None = None,
) -> Alignment:
    """Find, for each candidate, the scale and offset at which it best lines up with the query."""
    config = config or RerankConfig()
    config.check()
    query = np.asarray(query_thumb)
    if query.ndim != 2:
        raise ValueError(f"a thumbnail is a 2-D greyscale array, not shape {query.shape}")
    for i, thumb in enumerate(candidate_thumbs):
        if np.ndim(thumb) != 2:
            raise ValueError(
                f"candidate {i}: a thumbnail is 2-D greyscale, not shape {np.shape(thumb)}"
            )
    if config.method == "exhaustive":
        return align_exhaustive(query, candidate_thumbs, config)
    return _Pyramid(query, candidate_thumbs, config).run()


def align_exhaustive(
    query_thumb: np.ndarray,
    candidate_thumbs: Sequence[np.ndarray],
    config: RerankConfig | None = None,
) -> Alignment:
    """Try every offset of every scale in both directions on the thumbnails (FFT, batched)."""
    config = config or RerankConfig()
    scales = config.scales()
    query = np.asarray(query_thumb, dtype=np.float64)
    if query.ndim != 2:
        raise ValueError(f"a thumbnail is a 2-D greyscale array, not shape {query.shape}")
    n = len(candidate_thumbs)
    best_ncc = np.zeros(n)
    best_scale = np.ones(n)
    inside = np.ones(n, dtype=bool)
    offset = np.zeros((n, 2), dtype=np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, thumb in enumerate(candidate_thumbs):
        shape = np.shape(thumb)
        if len(shape) != 2:
            raise ValueError(f"candidate {i}: a thumbnail is 2-D greyscale, not shape {shape}")
        groups.setdefault(shape, []).append(i)
    qh, qw = query.shape
    q_spectrum = np.fft.rfft2(query)[None] if config.both_directions else None

    def keep(rows: list[int], ncc: np.ndarray, where: np.ndarray, scale: float, into: bool):
        better = ncc > best_ncc[rows] + 1e-12  # strictly better: the earlier scale wins ties
        idx = np.asarray(rows)[better]
        best_ncc[idx], best_scale[idx], inside[idx] = ncc[better], scale, into
        offset[idx] = where[better]

    for (ch, cw), rows in groups.items():
        stack = np.stack([np.asarray(candidate_thumbs[i], dtype=np.float64) for i in rows])
        spectra = np.fft.rfft2(stack)
        for scale in scales:
            # The query as a crop of the candidate: the query shrunk to `scale` of its width.
            tw = round(scale * cw)
            th = round(tw * qh / qw)
            if MIN_TEMPLATE_SIDE <= min(th, tw) and th <= ch and tw <= cw:
                template = _resize(query, tw, th)[None]
                ncc, where = _best(_zncc_maps(stack, spectra, template), config.subpixel)
                keep(rows, ncc, where, scale, True)
            if q_spectrum is None:
                continue
            # The candidate as a crop of the query.
            tw = round(scale * qw)
            th = round(tw * ch / cw)
            if MIN_TEMPLATE_SIDE <= min(th, tw) and th <= qh and tw <= qw:
                templates = np.stack([_resize(c, tw, th) for c in stack])
                ncc, where = _best(_zncc_maps(query[None], q_spectrum, templates), config.subpixel)
                keep(rows, ncc, where, scale, False)
    return Alignment(ncc=best_ncc, scale=best_scale, inside_candidate=inside, offset=offset)


def _float_side(thumb: np.ndarray, long_side: int) -> np.ndarray:
    """Return a float32 copy whose longer side is at most ``long_side`` (area-averaged)."""
    image = np.asarray(thumb, dtype=np.float32)
    height, width = image.shape
    if max(height, width) <= long_side:
        return image
    factor = long_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _zncc(image: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """ZNCC of each of ``templates`` (``(n, th, tw)``) at every offset of ``image``
    (``(H, W)``), by one matrix product; returns ``(n, H - th + 1, W - tw + 1)``. A flat window
    or template (``FLAT_STD``) scores -inf: it is no offset.

    The scores are ``matchTemplate``'s ``TM_CCOEFF_NORMED``; on the 32-pixel coarse copies one
    product for all candidates costs less than one OpenCV call per candidate."""
    n, th, tw = templates.shape
    rows, cols, count = image.shape[0] - th + 1, image.shape[1] - tw + 1, th * tw
    windows = np.lib.stride_tricks.sliding_window_view(image, (th, tw))
    windows = windows.reshape(rows * cols, count).astype(np.float64)
    windows -= windows.mean(axis=1, keepdims=True)
    kernels = templates.reshape(n, count).astype(np.float64)
    kernels -= kernels.mean(axis=1, keepdims=True)
    w_norm = np.sqrt(np.einsum("ij,ij->i", windows, windows))
    t_norm = np.sqrt(np.einsum("ij,ij->i", kernels, kernels))
    floor = np.sqrt(count) * FLAT_STD
    with np.errstate(divide="ignore", invalid="ignore"):
        ncc = np.clip((kernels @ windows.T) / (t_norm[:, None] * w_norm[None, :]), -1.0, 1.0)
    flat = (t_norm[:, None] < floor) | (w_norm[None, :] < floor)
    return np.where(flat, -np.inf, ncc).reshape(n, rows, cols)


def _is_flat(image: np.ndarray) -> bool:
    return image.size == 0 or float(cv2.meanStdDev(image)[1][0, 0]) < FLAT_STD


def _template_size(scale: float, outer: tuple[int, int], inner: tuple[int, int]):
    """Return ``(th, tw)`` of ``inner`` shrunk to ``scale`` of ``outer``'s width, or None."""
    tw = round(scale * outer[1])
    th = round(tw * inner[0] / inner[1])
    if MIN_TEMPLATE_SIDE <= min(th, tw) and th <= outer[0] and tw <= outer[1]:
        return th, tw
    return None


def _subpixel_peak(scores: np.ndarray, value: float, y: int, x: int) -> float:
    """Refine one map's peak by a parabola along each axis (as ``_best`` does for the FFT)."""
    height, width = scores.shape
    gain = 0.0
    for inside, left, right in (
        (0 < y < height - 1, (y - 1, x), (y + 1, x)),
        (0 < x < width - 1, (y, x - 1), (y, x + 1)),
    ):
        if inside:
            before, after = float(scores[left]), float(scores[right])
            curvature = before - 2.0 * value + after
            if curvature < 0:
                gain += max(0.0, -((after - before) ** 2) / (8.0 * curvature))
    return min(value + gain, 1.0)


@dataclass
class _Hypothesis:
    """A candidate's best coarse alignment; the offset as a share of the outer image's size."""

    score: float = -np.inf
    scale: float = 1.0
    inside_candidate: bool = True
    at: tuple[float, float] = (0.0, 0.0)


class _Pyramid:
    """Coarse-to-fine alignment of one query with its candidates (``RerankConfig.method``)."""

    def __init__(self, query: np.ndarray, candidates: Sequence[np.ndarray], config: RerankConfig):
        self.config = config
        self.scales = config.scales()
        self.log_scales = np.log(self.scales)
        self.query = _float_side(query, DEFAULT_THUMB_SIDE)
        self.query_coarse = _float_side(self.query, config.coarse_side)
        self.fine = [_float_side(c, DEFAULT_THUMB_SIDE) for c in candidates]
        n = len(candidates)
        self.ncc, self.scale = np.zeros(n), np.ones(n)
        self.inside, self.offset = np.ones(n, dtype=bool), np.zeros((n, 2), dtype=np.int64)
        self.live = [i for i, image in enumerate(self.fine) if not _is_flat(image)]
        self.coarse = {i: _float_side(self.fine[i], config.coarse_side) for i in self.live}
        self.hypotheses = {i: _Hypothesis() for i in self.live}
        self._query_templates: dict[tuple[int, int], np.ndarray | None] = {}

    def run(self) -> Alignment:
        if not _is_flat(self.query):
            self._coarse_query_inside()
            if self.config.both_directions:
                self._coarse_candidate_inside()
            ranked = sorted(self.live, key=lambda i: -self.hypotheses[i].score)
            for i in ranked[: self.config.refine_top]:
                self._refine(i)
        return Alignment(self.ncc, self.scale, self.inside, self.offset)

    def _query_template(self, th: int, tw: int) -> np.ndarray | None:
        """The query shrunk to ``th x tw`` (None: flat there), made once per size."""
        if (th, tw) not in self._query_templates:
            template = cv2.resize(self.query, (tw, th), interpolation=cv2.INTER_AREA)
            self._query_templates[th, tw] = None if _is_flat(template) else template
        return self._query_templates[th, tw]

    def _coarse_query_inside(self) -> None:
        """The query at each coarse scale against all candidates of one shape, tiled, at once."""
        ladder = _ladder(self.config.min_scale, self.config.coarse_scales)
        for (ch, cw), rows in self._coarse_groups().items():
            tiled = np.vstack([self.coarse[i] for i in rows])
            integrals = _integrals(tiled.astype(np.float64)[None])  # once for every scale
            for scale in ladder:
                size = _template_size(scale, (ch, cw), self.query_coarse.shape)
                if size is None:
                    continue
                th, tw = size
                template = cv2.resize(self.query_coarse, (tw, th), interpolation=cv2.INTER_AREA)
                if _is_flat(template):
                    continue
                scores = cv2.matchTemplate(tiled, template, cv2.TM_CCOEFF_NORMED)
                scores[_window_spread(integrals, th, tw)[0] < th * tw * FLAT_STD**2] = -np.inf
                # Rows whose window crosses from one tile into the next are not offsets.
                padded = np.full((len(rows) * ch, scores.shape[1]), -np.inf, np.float32)
                padded[: scores.shape[0]] = scores
                per_tile = padded.reshape(len(rows), ch, -1)[:, : ch - th + 1]
                self._keep_coarse(rows, per_tile, scale, True, (ch, cw))

    def _coarse_candidate_inside(self) -> None:
        """Each candidate of one shape at each coarse scale inside the query, all at once."""
        ladder = _ladder(self.config.min_scale, self.config.coarse_scales_reverse)
        qh, qw = self.query_coarse.shape
        for shape, rows in self._coarse_groups().items():
            for scale in ladder:
                size = _template_size(scale, (qh, qw), shape)
                if size is None:
                    continue
                th, tw = size
                templates = np.stack(
                    [cv2.resize(self.coarse[i], (tw, th), interpolation=cv2.INTER_AREA)
                     for i in rows]
                )  # fmt: skip
                scores = _zncc(self.query_coarse, templates)
                self._keep_coarse(rows, scores, scale, False, (qh, qw))

    def _coarse_groups(self) -> dict[tuple[int, int], list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i in self.live:
            groups.setdefault(self.coarse[i].shape, []).append(i)
        return groups

    def _keep_coarse(self, rows: list[int], scores: np.ndarray, scale: float, into: bool,
                     outer: tuple[int, int]) -> None:  # fmt: skip
        """Keep each candidate's best coarse offset (``scores``: one map per row) when it beats
        its best so far; the offset is kept as a share of the ``outer`` image's size."""
        width = scores.shape[2]
        flat = scores.reshape(len(rows), -1)
        where = flat.argmax(axis=1)
        for row, i in enumerate(rows):
            value = float(flat[row, where[row]])
            if value > self.hypotheses[i].score:
                y, x = divmod(int(where[row]), width)
                self.hypotheses[i] = _Hypothesis(value, scale, into, (y / outer[0], x / outer[1]))

    def _refine(self, i: int) -> None:
        """Line candidate ``i`` up on the thumbnails near its coarse best (or everywhere)."""
        hypothesis = self.hypotheses[i]
        scales = self.scales
        if np.isfinite(hypothesis.score):
            nearest = int(np.argmin(np.abs(self.log_scales - np.log(hypothesis.scale))))
            self._climb(i, hypothesis, nearest)
            return
        # Nothing fitted the coarse copies (a thin or tiny image): search the thumbnails whole.
        for into in (True, False) if self.config.both_directions else (True,):
            for scale in scales:
                self._search(i, into, scale, (0.0, 0.0), DEFAULT_THUMB_SIDE)

    def _climb(self, i: int, hypothesis: _Hypothesis, nearest: int) -> None:
        """Search the ladder's scales next to the coarse best (``nearest``), and go on a step
        further on a side only while its outermost scale is the best so far, up to
        ``refine_scales`` steps each way: the correlation rises and falls once around the true
        scale, so this finds the peak of the whole window in about 3 scales instead of 5."""
        steps = self.config.refine_scales
        last = len(self.scales) - 1
        score: dict[int, float] = {}

        def search(index: int) -> None:
            score[index] = self._search(
                i,
                hypothesis.inside_candidate,
                self.scales[index],
                hypothesis.at,
                self.config.refine_radius,
            )

        for index in range(max(0, nearest - min(1, steps)), min(last, nearest + min(1, steps)) + 1):
            search(index)
        for direction in (-1, 1):
            edge = nearest + direction * min(1, steps)
            while (
                0 <= edge + direction <= last
                and abs(edge + direction - nearest) <= steps
                and edge in score
                and score[edge] >= max(score.values())
            ):
                edge += direction
                search(edge)

    def _search(
        self, i: int, into: bool, scale: float, at: tuple[float, float], radius: int
    ) -> float:
        """Candidate ``i``'s best ZNCC at ``scale`` within ``radius`` of ``at`` (-inf: none
        there), kept as its alignment when it beats the best so far."""
        outer, inner = (self.fine[i], self.query) if into else (self.query, self.fine[i])
        height, width = outer.shape
        size = _template_size(scale, (height, width), inner.shape)
        if size is None:
            return -np.inf
        th, tw = size
        if into:
            template = self._query_template(th, tw)
        else:
            template = cv2.resize(inner, (tw, th), interpolation=cv2.INTER_AREA)
            template = None if _is_flat(template) else template
        if template is None:
            return -np.inf
        cy, cx = round(at[0] * height), round(at[1] * width)
        y0, x0 = min(max(0, cy - radius), height - th), min(max(0, cx - radius), width - tw)
        y1, x1 = min(height, y0 + th + 2 * radius), min(width, x0 + tw + 2 * radius)
        window = outer[y0:y1, x0:x1]
        scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, value, _, (x, y) = cv2.minMaxLoc(scores)
        if _is_flat(window[y : y + th, x : x + tw]):
            return -np.inf
        if self.config.subpixel:
            value = _subpixel_peak(scores, value, y, x)
        value = min(max(float(value), -1.0), 1.0)
        if value > self.ncc[i] + 1e-12:  # strictly better: the first scale searched wins ties
            self.ncc[i], self.scale[i], self.inside[i] = value, scale, into
            self.offset[i] = (y + y0, x + x0)
        return value


def rerank(
    query_thumb: np.ndarray,
    candidate_thumbs: Sequence[np.ndarray],
    cosines: Sequence[float] | np.ndarray,
    config: RerankConfig | None = None,
) -> RerankResult:
    """Return a new order of a query's shortlist: verified candidates first, by alignment.

    ``candidate_thumbs`` and ``cosines`` are in shortlist order (best cosine first, as
    ``top_k`` returns them). A candidate is *verified* when its ZNCC reaches ``min_ncc`` and its
    cosine is within ``cosine_margin`` of the best cosine; verified candidates come first by
    ZNCC, the others follow in cosine order. Ties keep the shortlist order, so the result is
    deterministic.
    """
    config = config or RerankConfig()
    cosines = np.asarray(cosines, dtype=np.float64)
    if cosines.shape != (len(candidate_thumbs),):
        raise ValueError(
            f"{len(candidate_thumbs)} candidate thumbnails but cosines of shape {cosines.shape}"
        )
    n = len(candidate_thumbs)
    if n == 0:
        empty = Alignment(np.zeros(0), np.ones(0), np.ones(0, bool), np.zeros((0, 2), np.int64))
        return RerankResult(np.zeros(0, np.int64), np.zeros(0), empty)
    alignment = align(query_thumb, candidate_thumbs, config)
    finite = np.isfinite(cosines)
    best_cosine = cosines[finite].max() if finite.any() else -np.inf
    verified = (
        finite & (alignment.ncc >= config.min_ncc) & (cosines >= best_cosine - config.cosine_margin)
    )
    # Verified: 1 + ncc (+ weighted cosine), at least 1 + min_ncc - cosine_weight; the rest: their
    # cosine squashed into (-1, 1), below every verified one while min_ncc >= cosine_weight.
    safe_cos = np.where(finite, cosines, -np.inf)
    verified_score = 1.0 + alignment.ncc + config.cosine_weight * np.where(finite, cosines, 0.0)
    scores = np.where(verified, verified_score, np.tanh(safe_cos))
    order = np.lexsort((np.arange(n), -scores))
    log.debug("re-ranked %d candidates: %d verified", n, int(verified.sum()))
    return RerankResult(order=order.astype(np.int64), scores=scores, alignment=alignment)


__all__ = [
    "DEFAULT_THUMB_SIDE",
    "Alignment",
    "RerankConfig",
    "RerankResult",
    "align",
    "align_exhaustive",
    "open_thumbnail_source",
    "rerank",
    "thumbnail",
]
