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


@pytest.mark.parametrize("area", [224 * 224, 100_000, 128 * 128])
def test_thumbnails_kept_when_embedding_are_the_pixels_reranking_would_decode(
    model_dir, tmp_path, area
):
    """``embed(thumbnails=True)`` gives each decoded image exactly the thumbnail re-ranking
    would decode from its file at that model area (``open_thumbnail_source``): a run ranks
    the same whether its thumbnails were kept or decoded. None for a cached vector."""
    from include.common.images import InputSize
    from include.image_similarity.rerank import open_thumbnail_source, thumbnail

    save(textured(1280, 720, seed=1), tmp_path / "frame.jpg", quality=90)
    save(textured(1920, 1080, seed=4), tmp_path / "full-hd.jpg", quality=90)
    save(textured(1280, 720, seed=5), tmp_path / "frame.png")
    save(textured(300, 500, seed=2), tmp_path / "portrait.png")
    save(textured(40, 30, seed=3), tmp_path / "tiny.png")
    images = list_local_images(tmp_path).images
    embedder = Embedder(model_dir=model_dir, batch_size=8, input_size=InputSize(area))
    cache = EmbeddingCache(LocalChunkStore(tmp_path / "cache"), embedder.model_id)
    result = embedder.embed(images, cache, thumbnails=True)
    assert set(result.thumbnails) == {i.sha256 for i in images}
    for image in images:
        stored = result.thumbnails[image.sha256]
        decoded = thumbnail(open_thumbnail_source(image.path, area=area))
        assert stored.dtype == np.uint8 and max(stored.shape) == 128
        np.testing.assert_array_equal(stored, decoded, err_msg=image.name)
    assert embedder.embed(images).thumbnails == {}  # not asked for
    assert embedder.embed(images, cache, thumbnails=True).thumbnails == {}  # all from the cache


def test_a_model_area_too_small_for_thumbnails_keeps_none(model_dir, tmp_path):
    """Below 128x128 pixels the model's decode is smaller than a thumbnail: re-ranking decodes
    the file at its own size, so none is kept from the model's."""
    from include.common.images import InputSize

    save(textured(1280, 720, seed=1), tmp_path / "frame.jpg", quality=90)
    embedder = Embedder(model_dir=model_dir, batch_size=8, input_size=InputSize(64 * 64))
    result = embedder.embed(list_local_images(tmp_path).images, thumbnails=True)
    assert len(result.vectors) == 1 and result.thumbnails == {}


def test_the_litert_runtime_gives_the_keras_vectors_and_converts_once(
    embedder, model_dir, tmp_path, caplog
):
    """``runtime="litert"`` runs the model converted to TensorFlow Lite: the same vectors (to
    float32 rounding), the same cache key, converted on first use only."""
    import logging
    import shutil

    folder = make_folder(tmp_path / "images", 6)
    save(textured(300, 500, seed=9), folder / "portrait.png")  # another input shape
    images = list_local_images(folder).images
    own_dir = tmp_path / "models"
    shutil.copytree(model_dir, own_dir)  # the Keras model, without any converted file
    for old in own_dir.glob("*.tflite"):
        old.unlink()
    lite = Embedder(model_dir=own_dir, batch_size=8, runtime="litert")
    assert lite.model_id == embedder.model_id
    with caplog.at_level(logging.INFO):
        vectors = lite.embed(images).vectors
    assert "converted the model to" in caplog.text
    expected = embedder.embed(images).vectors
    assert vectors.keys() == expected.keys()
    for digest, vector in expected.items():
        np.testing.assert_allclose(vectors[digest], vector, atol=1e-5)
    converted = lite.litert_path()
    assert converted.is_file() and not list(own_dir.glob(".litert-*"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = Embedder(model_dir=own_dir, batch_size=8, runtime="litert").embed(images).vectors
    assert "converted" not in caplog.text  # loaded from the file
    for digest, vector in vectors.items():
        np.testing.assert_array_equal(again[digest], vector)
    data = bytearray(converted.read_bytes())
    middle = len(data) // 2  # weights: a file that still loads, but computes something else
    data[middle : middle + 4096] = bytes(b ^ 0x40 for b in data[middle : middle + 4096])
    for damaged in (bytes(data), b"TFL3 damaged"):  # each is converted again, never run
        converted.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            repaired = Embedder(model_dir=own_dir, batch_size=8, runtime="litert").embed(images)
        assert "converting the model again" in caplog.text
        for digest, vector in vectors.items():
            np.testing.assert_array_equal(repaired.vectors[digest], vector)


def test_the_model_area_is_read_from_the_model_id(embedder):
    from include.image_similarity.embedding import model_area
    from include.image_similarity.settings import DEFAULTS

    assert model_area(embedder.model_id) == embedder.input_size.area
    assert model_area("efficientnet_lite0-abc-a100000-gem3-v1") == 100_000
    assert model_area("hand-made") == DEFAULTS.embedding.image_area


def test_an_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="runtime must be one of keras, litert, not 'onnx'"):
        Embedder(runtime="onnx")
