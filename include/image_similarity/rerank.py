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
Every offset is tried at once with an FFT, for a short ladder of scales, and all candidates of
the same thumbnail shape are handled in one batched transform.

Use::

    thumbs = [thumbnail(path) for path in dataset_paths]          # once, stored with the vectors
    result = rerank(thumbnail(query_path), [thumbs[i] for i in shortlist], cosines)
    new_shortlist = [shortlist[i] for i in result.order]

The cosine stays the score reported to people; the re-ranker only changes the order, and only
among candidates whose cosine is close to the best one, so an unrelated image is never promoted
over a genuinely similar one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from include.image_similarity.settings import DEFAULTS

log = logging.getLogger(__name__)

DEFAULT_THUMB_SIDE = 128
MIN_TEMPLATE_SIDE = 8
# A window whose pixels vary less than this (in grey levels, standard deviation) is flat: its
# correlation with anything is undefined, and is scored 0 instead of NaN.
FLAT_STD = 0.5


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

    def scales(self) -> np.ndarray:
        """Return the scales tried, largest (1.0) first."""
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], not {self.min_scale}")
        if self.n_scales < 1:
            raise ValueError(f"n_scales must be at least 1, not {self.n_scales}")
        if self.n_scales == 1:
            return np.array([1.0])
        return np.geomspace(1.0, self.min_scale, self.n_scales)


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
    max_pixels: int | None = None,
) -> Image.Image:
    """Open an image file for a thumbnail; JPEGs decode in draft mode at 1/2 to 1/8 scale.

    Raises ``DecodeError`` (with the reason in words) for anything Pillow cannot read.
    """
    from include.common.images import DEFAULT_MAX_PIXELS, InputSize, open_image

    # An InputSize of long_side² pixels is at least long_side wide and high for aspects up to
    # 3:1, so the draft decode never comes out smaller than the thumbnail.
    return open_image(
        path,
        name,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        fit=InputSize(area=long_side * long_side),
    )


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float greyscale array with area averaging (bilinear when enlarging)."""
    if array.shape == (height, width):
        return array.astype(np.float64)
    image = Image.fromarray(array.astype(np.float32), mode="F")
    shrinking = width <= array.shape[1] and height <= array.shape[0]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(image.resize((width, height), method), dtype=np.float64)


def _window_sums(images: np.ndarray, th: int, tw: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the sums of pixels and of squared pixels over every ``th x tw`` window (valid)."""

    def box(values: np.ndarray) -> np.ndarray:
        integral = np.zeros((values.shape[0], values.shape[1] + 1, values.shape[2] + 1))
        integral[:, 1:, 1:] = values.cumsum(1).cumsum(2)
        return (
            integral[:, th:, tw:]
            - integral[:, :-th, tw:]
            - integral[:, th:, :-tw]
            + integral[:, :-th, :-tw]
        )

    return box(images), box(images * images)


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
    sums, squares = _window_sums(images, th, tw)
    count = th * tw
    variance = np.maximum(squares - sums * sums / count, 0.0)
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
    "open_thumbnail_source",
    "rerank",
    "thumbnail",
]
