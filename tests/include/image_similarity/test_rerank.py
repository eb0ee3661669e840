"""Tests for the spatial-verification re-ranker (synthetic images, no model)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from include.image_similarity import rerank as rerank_module
from include.image_similarity.rerank import (
    DEFAULT_THUMB_SIDE,
    METHODS,
    RerankConfig,
    align,
    rerank,
    thumbnail,
)

FRAME = (320, 180)


def _texture(seed: int = 0, size: tuple[int, int] = (1000, 600)) -> Image.Image:
    """Return a smooth random texture (blurred noise), like a photograph at low resolution."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(size[1] // 20, size[0] // 20)).astype(np.uint8)
    image = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(3)).convert("RGB")


def _frame(photo: Image.Image, x: float, y: float, width: float = 600) -> Image.Image:
    """Return one frame of a camera pan: a 16:9 window of ``photo`` resized to ``FRAME``."""
    box = (x, y, x + width, y + width * FRAME[1] / FRAME[0])
    return photo.resize(FRAME, Image.Resampling.LANCZOS, box=box)


def _altered(frame: Image.Image, scale: float, fx: float, fy: float) -> Image.Image:
    """Return an off-centre crop of ``frame``, darker, higher contrast and blurred."""
    width, height = frame.size
    cw, ch = width * scale, height * scale
    x, y = (width - cw) * fx, (height - ch) * fy
    image = frame.resize(frame.size, Image.Resampling.LANCZOS, box=(x, y, x + cw, y + ch))
    pixels = np.asarray(image, dtype=np.float32) * 1.3 - 40
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(1.0))


@pytest.fixture(scope="module")
def pan() -> list[Image.Image]:
    """Return six frames of a pan, 60 photo pixels apart (about 30 frame pixels)."""
    photo = _texture()
    return [_frame(photo, 20 + 60 * i, 40 + 10 * i) for i in range(6)]


def test_thumbnail_keeps_aspect_and_is_small(pan):
    thumb = thumbnail(pan[0])
    assert thumb.dtype == np.uint8
    assert thumb.shape == (72, DEFAULT_THUMB_SIDE)
    assert thumbnail(np.asarray(pan[0])).shape == (72, 128)
    assert thumbnail(np.asarray(pan[0].convert("L")), long_side=64).shape == (36, 64)
    portrait = Image.new("RGB", (50, 200), "red")
    assert thumbnail(portrait).shape == (128, 32)


def test_thumbnail_from_path(tmp_path, pan):
    path = tmp_path / "frame.png"
    pan[0].save(path)
    np.testing.assert_array_equal(thumbnail(path), thumbnail(pan[0]))


def test_thumbnail_rejects_bad_input():
    with pytest.raises(ValueError):
        thumbnail(np.zeros((0, 5), np.uint8))
    with pytest.raises(ValueError):
        thumbnail(Image.new("RGB", (10, 10)), long_side=2)


@pytest.fixture(params=METHODS)
def config(request) -> RerankConfig:
    """Every test of the search runs with both: the pyramid (default) and the exhaustive one."""
    return RerankConfig(method=request.param)


def test_query_crop_is_found_in_its_source(pan, config):
    query = thumbnail(_altered(pan[2], scale=0.85, fx=0.9, fy=0.1))
    found = align(query, [thumbnail(frame) for frame in pan], config)
    assert found.ncc[2] > 0.95
    assert found.inside_candidate[2]
    assert found.scale[2] == pytest.approx(0.85, abs=0.03)
    assert found.ncc.argmax() == 2


def test_rerank_puts_true_source_first_when_cosine_order_is_wrong(pan, config):
    query = thumbnail(_altered(pan[3], scale=0.82, fx=0.5, fy=0.6))
    thumbs = [thumbnail(frame) for frame in pan]
    shortlist = [0, 5, 1, 4, 3, 2]  # the true frame (3) ranked fifth by the cosine
    cosines = np.array([0.86, 0.855, 0.85, 0.85, 0.849, 0.848])
    result = rerank(query, [thumbs[i] for i in shortlist], cosines, config)
    assert shortlist[result.order[0]] == 3
    assert sorted(result.order.tolist()) == list(range(6))
    assert np.all(np.isfinite(result.scores))


def test_candidate_inside_query_is_found(pan, config):
    # The dataset image is the tighter view: the query is wider than the candidate.
    wide = thumbnail(pan[1])
    tight = thumbnail(_altered(pan[1], scale=0.8, fx=0.2, fy=0.7))
    thumbs = [thumbnail(pan[0]), tight, thumbnail(pan[2])]
    found = align(wide, thumbs, config)
    assert found.ncc.argmax() == 1
    assert not found.inside_candidate[1]
    one_way = align(wide, thumbs, replace(config, both_directions=False))
    assert one_way.ncc[1] < found.ncc[1]


def test_unrelated_candidates_are_not_promoted(pan, config):
    query = thumbnail(_altered(pan[2], scale=0.85, fx=0.0, fy=1.0))
    unrelated = thumbnail(_frame(_texture(seed=7), 100, 100))
    # The unrelated image has a far lower cosine: it stays below the related ones, whatever
    # its correlation, and the related ones are re-ordered among themselves.
    cosines = np.array([0.80, 0.79, 0.40])
    result = rerank(query, [thumbnail(pan[0]), thumbnail(pan[2]), unrelated], cosines, config)
    assert result.order.tolist() == [1, 0, 2]


def test_constant_images_give_no_nan(config):
    flat = np.full((72, 128), 128, np.uint8)
    black = np.zeros((72, 128), np.uint8)
    textured = thumbnail(_frame(_texture(), 0, 0))
    for query in (flat, textured):
        result = rerank(query, [flat, black, textured], [0.5, 0.5, 0.5], config)
        assert np.all(np.isfinite(result.scores))
        assert np.all(np.isfinite(result.alignment.ncc))
    found = align(flat, [flat, black], config)
    np.testing.assert_array_equal(found.ncc, [0.0, 0.0])


def test_ties_keep_the_shortlist_order(config):
    flat = np.full((36, 64), 200, np.uint8)
    result = rerank(flat, [flat] * 4, [0.7, 0.7, 0.7, 0.7], config)
    assert result.order.tolist() == [0, 1, 2, 3]


def test_result_is_deterministic(pan, config):
    query = thumbnail(_altered(pan[4], scale=0.88, fx=0.75, fy=0.25))
    thumbs = [thumbnail(frame) for frame in pan]
    cosines = np.linspace(0.9, 0.85, len(thumbs))
    first = rerank(query, thumbs, cosines, config)
    second = rerank(query.copy(), [t.copy() for t in thumbs], cosines.copy(), config)
    np.testing.assert_array_equal(first.order, second.order)
    np.testing.assert_array_equal(first.scores, second.scores)


def test_mixed_shapes_and_edge_cases(pan, config):
    query = thumbnail(pan[0])
    portrait = thumbnail(Image.new("RGB", (40, 200), "blue"))
    tiny = np.zeros((4, 4), np.uint8)  # too small for any scale: simply unverified
    result = rerank(query, [portrait, thumbnail(pan[0]), tiny], [0.9, 0.8, 0.7], config)
    assert result.order.tolist() == [1, 0, 2]
    assert result.alignment.ncc[2] == 0.0

    empty = rerank(query, [], [], config)
    assert empty.order.shape == (0,)

    missing = rerank(query, [thumbnail(pan[1]), thumbnail(pan[2])], [0.9, -np.inf], config)
    assert np.all(~np.isnan(missing.scores))
    assert missing.order.tolist() == [0, 1]

    with pytest.raises(ValueError):
        rerank(query, [query], [0.5, 0.4], config)
    with pytest.raises(ValueError):
        rerank(np.zeros((3, 3, 3)), [query], [0.5], config)
    with pytest.raises(ValueError):
        align(query, [np.zeros((5, 5, 3))], config)
    with pytest.raises(ValueError):
        RerankConfig(min_scale=0).scales()


def test_pyramid_agrees_with_the_exhaustive_search(pan):
    """The coarse-to-fine search finds what trying every offset finds, on every frame."""
    thumbs = [thumbnail(frame) for frame in pan]
    for source, (scale, fx, fy) in enumerate(
        [(0.85, 0.9, 0.1), (0.75, 0.2, 0.8), (0.95, 0.5, 0.5)] * 2
    ):
        query = thumbnail(_altered(pan[source], scale=scale, fx=fx, fy=fy))
        fast = align(query, thumbs, RerankConfig(method="pyramid", refine_top=None))
        full = align(query, thumbs, RerankConfig(method="exhaustive"))
        assert fast.ncc.argmax() == full.ncc.argmax() == source
        np.testing.assert_allclose(fast.ncc[source], full.ncc[source], atol=0.02)
        assert fast.scale[source] == pytest.approx(full.scale[source], abs=0.03)
        assert abs(fast.offset[source] - full.offset[source]).max() <= 2


def test_coarse_correlation_by_matrix_product_is_opencvs_zncc(pan):
    """``_zncc`` scores every offset as ``matchTemplate``'s TM_CCOEFF_NORMED does, and a flat
    template or window is no offset (-inf), where OpenCV gives an arbitrary number."""
    image = np.asarray(pan[0].convert("L").resize((32, 18)), np.float32)
    rng = np.random.default_rng(3)
    templates = np.stack(
        [np.asarray(pan[i].convert("L").resize((23, 13)), np.float32) for i in range(1, 5)]
        + [rng.uniform(0, 255, (13, 23)).astype(np.float32), np.full((13, 23), 9, np.float32)]
    )
    image[:, :4] = 50  # a flat strip: the windows wholly inside it are flat
    ours = rerank_module._zncc(image, templates)
    assert ours.shape == (6, 18 - 13 + 1, 32 - 23 + 1)
    for template, scores in zip(templates[:5], ours[:5], strict=True):
        theirs = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
        np.testing.assert_allclose(scores, theirs, atol=1e-4)
    assert np.all(ours[5] == -np.inf)  # the flat template
    strip = np.full((18, 4 + 23), 50, np.float32)
    flat_window = rerank_module._zncc(strip, templates[:1])
    assert np.all(flat_window[0, :, 0:5] == -np.inf)  # windows inside the flat strip


@pytest.mark.parametrize("refine_scales", [0, 1, 2, 3])
def test_the_scale_climb_finds_the_best_scale_of_the_whole_window(pan, refine_scales, monkeypatch):
    """Refining climbs from the coarse best scale instead of trying every scale within
    ``refine_scales`` of it; on true matches (one peak over scale) both give the same
    alignment, and the climb searches no scale outside that window."""
    config = RerankConfig(refine_scales=refine_scales, refine_top=None)
    thumbs = [thumbnail(frame) for frame in pan]
    queries = [thumbnail(_altered(pan[i], scale=s, fx=0.3, fy=0.6))
               for i, s in ((1, 0.72), (2, 0.85), (4, 0.97))]  # fmt: skip
    searched: list[tuple[int, float]] = []
    search = rerank_module._Pyramid._search

    def spy(self, i, into, scale, at, radius):
        searched.append((i, scale))
        return search(self, i, into, scale, at, radius)

    def whole_window(self, i, hypothesis, nearest):
        near = self.scales[max(0, nearest - refine_scales) : nearest + refine_scales + 1]
        for scale in near:
            search(self, i, hypothesis.inside_candidate, scale, hypothesis.at,
                   self.config.refine_radius)  # fmt: skip

    for query in queries:
        monkeypatch.setattr(rerank_module._Pyramid, "_search", spy)
        climbed = align(query, thumbs, config)
        monkeypatch.setattr(rerank_module._Pyramid, "_search", search)
        monkeypatch.setattr(rerank_module._Pyramid, "_climb", whole_window)
        full = align(query, thumbs, config)
        monkeypatch.undo()
        best = int(full.ncc.argmax())
        assert full.ncc[best] > 0.8  # a true match (0.86 with no neighbouring scale)
        assert climbed.ncc[best] == full.ncc[best]
        assert climbed.scale[best] == full.scale[best]
        np.testing.assert_array_equal(climbed.offset[best], full.offset[best])
        per_candidate = [sum(1 for i, _ in searched if i == c) for c in range(len(thumbs))]
        assert max(per_candidate) <= 2 * refine_scales + 1
        searched.clear()


def test_pyramid_refines_only_the_best_coarse_candidates(pan):
    query = thumbnail(_altered(pan[2], scale=0.85, fx=0.3, fy=0.3))
    unrelated = [thumbnail(_frame(_texture(seed=s), 50, 50)) for s in (11, 12, 13)]
    found = align(query, [*unrelated, thumbnail(pan[2])], RerankConfig(refine_top=1))
    assert found.ncc[3] > 0.95
    np.testing.assert_array_equal(found.ncc[:3], [0.0, 0.0, 0.0])  # not refined: not verified


def test_pyramid_aligns_images_too_thin_for_the_coarse_copies(pan):
    # 128x12: its 32-pixel copy is 3 pixels high, too small for any template; the search falls
    # back to the thumbnails themselves.
    strip = np.asarray(pan[1].convert("L").resize((128, 72)))[30:42]
    query = strip[:, 10:118]
    found = align(query, [strip, np.asarray(pan[3].convert("L").resize((128, 72)))[30:42]])
    assert found.ncc[0] > 0.95
    assert found.ncc[0] > found.ncc[1]


def test_flat_windows_never_correlate(pan):
    """A letterboxed candidate: windows inside its black bar are flat, not a perfect match."""
    query = thumbnail(_altered(pan[2], scale=0.8, fx=0.5, fy=0.5))
    letterboxed = thumbnail(pan[4]).copy()
    letterboxed[:40] = 0
    for method in METHODS:
        found = align(query, [letterboxed, thumbnail(pan[2])], RerankConfig(method=method))
        assert found.ncc[1] > 0.95
        assert found.ncc[0] < 0.9


def test_config_is_checked():
    for bad in (
        {"method": "fft"},
        {"coarse_side": 4},
        {"coarse_scales": 0},
        {"refine_top": 0},
        {"refine_radius": -1},
    ):
        with pytest.raises(ValueError):
            align(np.zeros((8, 8), np.uint8), [], RerankConfig(**bad))
