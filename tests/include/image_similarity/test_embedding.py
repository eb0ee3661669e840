from __future__ import annotations

import numpy as np
import pytest

from include.image_similarity.cache import EmbeddingCache, LocalChunkStore
from include.image_similarity.embedding import Embedder, ModelSpec
from include.image_similarity.sources import list_local_images
from testsupport.imagekit import save, textured, write_bad_files

pytestmark = pytest.mark.slow


def make_folder(folder, n, start=0):
    for i in range(start, start + n):
        save(textured(320, 180, seed=i), folder / f"img{i:03d}.jpg", quality=90)
    return folder


def test_vectors_are_unit_float32_and_separate_different_images(embedder, tmp_path):
    listing = list_local_images(make_folder(tmp_path, 4))
    result = embedder.embed(listing.images)
    vectors = np.stack([result.vectors[i.sha256] for i in listing.images])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert (vectors @ vectors.T)[~np.eye(4, dtype=bool)].max() < 0.999


def test_rerun_embeds_nothing_and_new_images_only_are_embedded(embedder, tmp_path):
    folder = make_folder(tmp_path / "images", 12)
    cache = EmbeddingCache(LocalChunkStore(tmp_path / "cache"), embedder.model_id)
    first = embedder.embed(list_local_images(folder).images, cache)
    assert (first.embedded, first.from_cache) == (12, 0)

    fresh_cache = EmbeddingCache(LocalChunkStore(tmp_path / "cache"), embedder.model_id)
    again = embedder.embed(list_local_images(folder).images, fresh_cache)
    assert (again.embedded, again.from_cache) == (0, 12)

    make_folder(folder, 10, start=100)
    more = embedder.embed(list_local_images(folder).images, fresh_cache)
    assert (more.embedded, more.from_cache) == (10, 12)
    for digest, vector in first.vectors.items():
        np.testing.assert_allclose(more.vectors[digest], vector, rtol=1e-6)


def test_bad_files_are_reported_and_the_rest_embedded(embedder, tmp_path):
    make_folder(tmp_path, 3)
    write_bad_files(tmp_path)
    listing = list_local_images(tmp_path)
    assert [p.name for p in listing.problems] == ["notes.txt"]
    result = embedder.embed(listing.images)
    assert sorted(p.name for p in result.problems) == ["corrupt.jpg", "empty.jpg", "truncated.jpg"]
    assert all(p.stage == "decode" for p in result.problems)
    assert result.embedded == 3 and len(result.vectors) == 3


def test_identical_files_are_embedded_once(embedder, tmp_path):
    image = textured(seed=5)
    save(image, tmp_path / "a.png")
    save(image, tmp_path / "copy of a.png")
    result = embedder.embed(list_local_images(tmp_path).images)
    assert result.embedded == 1 and len(result.vectors) == 1


def test_decoding_runs_ahead_in_a_bounded_window(embedder, tmp_path, monkeypatch):
    folder = make_folder(tmp_path, 40)
    decoded_not_consumed = []
    original = Embedder._decode

    def counting(self, image, *args):
        array = original(self, image, *args)
        decoded_not_consumed.append(image.name)
        return array

    peak = 0
    real_embed = Embedder.embed_arrays

    def consuming(self, batch):
        nonlocal peak
        peak = max(peak, len(decoded_not_consumed))
        decoded_not_consumed.clear()
        return real_embed(self, batch)

    monkeypatch.setattr(Embedder, "_decode", counting)
    monkeypatch.setattr(Embedder, "embed_arrays", consuming)
    embedder.embed(list_local_images(folder).images)
    window = max(embedder.batch_size * 2, embedder.decode_threads * 4)
    assert 0 < peak <= window + embedder.batch_size


def test_model_spec_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not a keras.applications model"):
        ModelSpec.parse("keras:NoSuchNet")
    with pytest.raises(ValueError, match="does not exist"):
        ModelSpec.parse(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="unknown model"):
        ModelSpec.parse("resnet-ish")
    assert ModelSpec.parse("keras:ResNet50").name == "ResNet50"


def test_model_id_changes_with_preprocessing(model_dir):
    from include.common.images import InputSize

    default = Embedder(model_dir=model_dir).model_id
    assert default.startswith("efficientnet_lite0-")
    assert Embedder(model_dir=model_dir, input_size=InputSize(area=320 * 320)).model_id != default
    assert Embedder(model_dir=model_dir, gem_p=1).model_id != default


def test_thumbnails_come_from_the_decode_for_the_model(embedder, tmp_path):
    """``embed(thumbnails=True)`` gives each decoded image the thumbnail re-ranking would decode
    from its file, and none to an image whose vector came from the cache."""
    from include.image_similarity.rerank import open_thumbnail_source, thumbnail

    save(textured(1280, 720, seed=1), tmp_path / "frame.jpg", quality=90)
    save(textured(300, 500, seed=2), tmp_path / "portrait.png")
    save(textured(40, 30, seed=3), tmp_path / "tiny.png")
    images = list_local_images(tmp_path).images
    cache = EmbeddingCache(LocalChunkStore(tmp_path / "cache"), embedder.model_id)
    result = embedder.embed(images, cache, thumbnails=True)
    assert set(result.thumbnails) == {i.sha256 for i in images}
    for image in images:
        stored = result.thumbnails[image.sha256]
        decoded = thumbnail(open_thumbnail_source(image.path))
        assert stored.dtype == np.uint8 and stored.shape == decoded.shape
        assert max(stored.shape) == 128
        difference = np.abs(stored.astype(int) - decoded).mean()
        assert difference < 2.0, (image.name, difference)  # the same picture, maybe other draft
    assert embedder.embed(images).thumbnails == {}  # not asked for
    assert embedder.embed(images, cache, thumbnails=True).thumbnails == {}  # all from the cache
