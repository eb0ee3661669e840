"""Embedding benchmark: the original notebook's method against ours, on video-like 1280x720 JPEGs.

What is measured, in one run (``make benchmark`` runs ``python benchmarks/embedding.py``)::

    python benchmarks/embedding.py [--images N] [--baseline-images M] [--rss-images R]
                                   [--recall-frames F] [--recall-queries Q] [--repeat P]
                                   [--workdir DIR] [--quick]

1. Test images (not timed): N 1280x720 JPEG frames (quality 90) of simulated video, camera pans
   with a slight zoom across the colour photographs bundled with scikit-image (upscaled, with a
   little sensor grain), written once into ``DIR/frames`` and reused while the parameters match.
2. Notebook baseline: ``keras.applications.VGG16(include_top=False, weights=None)`` and, per
   image, ``load_img(target_size=(224, 224))`` -> ``img_to_array`` -> ``expand_dims`` ->
   ``preprocess_input`` -> ``model.predict`` (one image per call), features kept as raw 7x7x512
   maps for a Euclidean distance. ImageNet weights cannot be downloaded offline; random weights
   cost the same time. Timed on M frames, decode included, model build excluded.
3. Ours: ``Embedder`` (EfficientNet-Lite0, threaded decode, batched inference) on the N frames
   with no cache, decode included; model load and first batch are timed separately. Both
   methods run P passes (default 2) and the best is kept, to damp noise from other processes.
   The LiteRT runtime (``Embedder(runtime="litert")``, an option) is timed the same way, as
   its own child.
4. Peak RSS of a fresh process embedding R frames (its ``VmHWM``; see ``peak_rss_bytes``).
5. recall@1 / recall@3 (headline: a match that shows all of the query; the exact source
   frame as a diagnostic): the product's demo generator writes a video-like set of F frames at
   1280x720 and Q (default F/2) altered queries (off-centre 80-90 % crop, brightness/contrast/
   colour, blur or noise, JPEG recompression at quality 55-75); the pipeline steps
   ``list_sources`` -> ``embed_collections`` -> ``match_queries`` rank them exactly as the
   product does (including any re-ranking ``match_queries`` applies). The notebook method's
   recall is shown for reference only: with untrained weights it says nothing about the
   trained VGG16. The LiteRT runtime's recall (pyramid re-ranker) and how far its vectors are
   from the Keras runtime's are measured on the same set.

Every heavy measurement runs in its own child process (``--child``), so timings, memory and
TensorFlow state do not leak from one into another. The exit code is 0 whatever the results:
this is a measurement, not a test. ``--quick`` is a smoke run (N=200, M=20, R=300, F=100).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (benchmarks/_common.py, next to this script)
from _common import peak_rss_bytes  # noqa: E402

DEFAULT_WORKDIR = ROOT / ".cache" / "bench"
MODEL_DIR = ROOT / ".cache" / "models"
RESULT_PREFIX = "BENCH-RESULT "

FRAME_SIZE = (1280, 720)
FRAME_QUALITY = 90
FRAME_GRAIN = 2.0  # sensor-noise sigma in 0-255 units, so files compress like camera frames
SHOT_LENGTH = 60  # frames per camera pan
GENERATOR_SEED = 0
GENERATOR_VERSION = 1

NOTEBOOK_SIZE = (224, 224)
NOTEBOOK_RECALL_BATCH = 16

FRAME_NAME = re.compile(r"(scene\d+)_frame(\d+)")

TARGET_SPEEDUP = 20.0
TARGET_IMAGES_PER_S = 120.0
TARGET_RSS_BYTES = 2 * 1024**3
TARGET_RECALL1 = 0.85
TARGET_RECALL3 = 0.95


# --- test images ----------------------------------------------------------------------------


def frame_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:06d}.jpg"


def _generator_params() -> dict[str, Any]:
    from include.demo.data import SCENES

    return {
        "version": GENERATOR_VERSION,
        "seed": GENERATOR_SEED,
        "size": list(FRAME_SIZE),
        "quality": FRAME_QUALITY,
        "grain": FRAME_GRAIN,
        "shot_length": SHOT_LENGTH,
        "scenes": [scene.name for scene in SCENES],
    }


@cache
def _scene_photo(scene_index: int):
    from include.demo.data import SCENES, load_scene_photo

    return load_scene_photo(SCENES[scene_index])


def _pan_box(shot: int, t: float) -> tuple[int, tuple[float, float, float, float]]:
    """Return the scene of a shot and the crop box of its camera at time ``t`` in [0, 1]."""
    from include.demo.data import SCENES

    scene_index = (shot * 3) % len(SCENES)  # 3 is coprime with 8: every scene in turn
    rng = np.random.default_rng([GENERATOR_SEED, shot])
    photo_w, photo_h = _scene_photo(scene_index).size
    left, top, right, bottom = SCENES[scene_index].region
    region_w, region_h = (right - left) * photo_w, (bottom - top) * photo_h
    aspect = FRAME_SIZE[0] / FRAME_SIZE[1]
    full_w = min(region_w, region_h * aspect)
    zoom0, zoom1 = rng.uniform(0.55, 0.85, size=2)
    x0, x1 = (0.05, 0.95) if rng.random() < 0.5 else (0.95, 0.05)
    y0, y1 = rng.uniform(0.1, 0.9, size=2)
    win_w = full_w * (zoom0 + (zoom1 - zoom0) * t)
    win_h = win_w / aspect
    x = left * photo_w + (region_w - win_w) * (x0 + (x1 - x0) * t)
    y = top * photo_h + (region_h - win_h) * (y0 + (y1 - y0) * t)
    return scene_index, (x, y, x + win_w, y + win_h)


def _write_frame(task: tuple[str, int]) -> None:
    """Render frame ``index`` (a pure function of the index) and write it atomically."""
    from PIL import Image

    folder, index = Path(task[0]), task[1]
    shot, step = divmod(index, SHOT_LENGTH)
    scene_index, box = _pan_box(shot, step / (SHOT_LENGTH - 1))
    frame = _scene_photo(scene_index).resize(FRAME_SIZE, Image.Resampling.BICUBIC, box=box)
    rng = np.random.default_rng([GENERATOR_SEED, index, 1])
    pixels = np.asarray(frame, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * FRAME_GRAIN
    frame = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    target = frame_path(folder, index)
    partial = target.with_name(target.name + ".part")
    frame.save(partial, "JPEG", quality=FRAME_QUALITY, optimize=False, progressive=False)
    partial.replace(target)


def ensure_frames(folder: Path, count: int) -> float:
    """Make sure frames 0..count-1 exist for the current parameters; return seconds spent."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    params = _generator_params()
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    have = int(manifest.get("count", 0)) if manifest.get("params") == params else 0
    if have == 0:
        manifest_path.unlink(missing_ok=True)
        for stale in folder.glob("frame_*"):
            stale.unlink()
    missing = [i for i in range(count) if i >= have or not frame_path(folder, i).is_file()]
    if missing:
        print(f"generating {len(missing)} frames in {folder} ...", flush=True)
        workers = max(1, os.cpu_count() or 1)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_write_frame, [(str(folder), i) for i in missing], chunksize=16))
    count = max(count, have)
    manifest_path.write_text(json.dumps({"params": params, "count": count}) + "\n")
    return time.perf_counter() - started


def frame_files(folder: Path, count: int) -> list:
    """Return ``ImageFile`` entries (content-hashed, as a listing does) for the first frames."""
    from include.image_similarity.sources import ImageFile, sha256_of_file

    paths = [frame_path(folder, i) for i in range(count)]
    return [ImageFile(p.name, p, sha256_of_file(p), p.stat().st_size) for p in paths]


def ensure_recall_set(workdir: Path, frames: int, queries: int):
    """Generate (or reuse) the product's demo data at 1280x720 as the near-duplicate set."""
    from include.demo.data import SCENES, generate_demo_data

    per_scene = max(2, frames // len(SCENES))
    queries = min(queries, per_scene * len(SCENES))
    dest = workdir / f"recall_{per_scene}x{len(SCENES)}_q{queries}"
    return generate_demo_data(
        dest,
        seed=0,
        frames_per_scene=per_scene,
        frame_size=FRAME_SIZE,
        n_queries=queries,
        n_known_sets=0,
    )


# --- child processes ------------------------------------------------------------------------


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    for name in ("include", "tensorflow", "keras", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _notebook_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(*NOTEBOOK_SIZE, 3)
    )


def _notebook_input(path: Path) -> np.ndarray:
    """The notebook's preprocessing: squash to 224x224 (nearest), then VGG16's BGR centring."""
    import keras
    from keras.applications import vgg16

    image = keras.utils.load_img(path, target_size=NOTEBOOK_SIZE)
    x = keras.utils.img_to_array(image)
    x = np.expand_dims(x, axis=0)
    return vgg16.preprocess_input(x)


def _notebook_pass(model, paths: list[Path]) -> tuple[float, float, float, list[np.ndarray]]:
    """One pass of the notebook loop; returns total, load and predict seconds, and features."""
    features: list[np.ndarray] = []  # kept, as the notebook kept them for its distance matrix
    decode_s = predict_s = 0.0
    started = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        x = _notebook_input(path)
        t1 = time.perf_counter()
        features.append(model.predict(x, verbose=0).reshape(-1))
        predict_s += time.perf_counter() - t1
        decode_s += t1 - t0
    return time.perf_counter() - started, decode_s, predict_s, features


def child_notebook_speed(workdir: Path, count: int, repeat: int) -> dict[str, Any]:
    """Time the notebook loop: decode + preprocess + one ``predict`` call per image."""
    started = time.perf_counter()
    model = _notebook_model()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(np.zeros((1, *NOTEBOOK_SIZE, 3), np.float32), verbose=0)
    first_s = time.perf_counter() - started

    paths = [frame_path(workdir / "frames", i) for i in range(count)]
    passes = [_notebook_pass(model, paths) for _ in range(repeat)]
    seconds, decode_s, predict_s, features = min(passes, key=lambda p: p[0])
    return {
        "images": len(features),
        "seconds": seconds,
        "passes": [p[0] for p in passes],
        "load_s": load_s,
        "first_s": first_s,
        "decode_ms": 1000 * decode_s / len(paths),
        "predict_ms": 1000 * predict_s / len(paths),
        "feature_dim": int(features[0].size),
        "peak_rss": peak_rss_bytes(),
    }


def _warm_embedder(runtime: str = "keras"):
    from include.image_similarity.embedding import Embedder

    embedder = Embedder(model_dir=MODEL_DIR, runtime=runtime)
    converted = any(MODEL_DIR.glob("efficientnet_lite0*.keras")) and (
        runtime == "keras" or embedder.litert_path().is_file()
    )
    started = time.perf_counter()
    embedder.warm_up()
    load_s = time.perf_counter() - started
    width, height = embedder.input_size.for_image(*FRAME_SIZE)
    started = time.perf_counter()
    embedder.embed_arrays(np.zeros((embedder.batch_size, height, width, 3), np.uint8))
    first_s = time.perf_counter() - started
    info = {
        "load_s": load_s,
        "first_s": first_s,
        "first_conversion": not converted,
        "batch_size": embedder.batch_size,
        "decode_threads": embedder.decode_threads,
        "input": f"{width}x{height}",
        "gem_p": embedder.gem_p,
    }
    return embedder, info


def _decode_only_rate(embedder, images: Sequence, threads: int) -> float:
    from include.common.images import load_for_model

    def decode(image) -> None:
        load_for_model(image.path, embedder.input_size, image.name)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(decode, images):
            pass
    return len(images) / (time.perf_counter() - started)


def _model_only_rate(embedder, images: Sequence) -> float:
    from include.common.images import load_for_model

    batch = np.stack(
        [load_for_model(i.path, embedder.input_size, i.name) for i in images[: embedder.batch_size]]
    )
    batches = max(1, len(images) // embedder.batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        embedder.embed_arrays(batch)
    return batches * len(batch) / (time.perf_counter() - started)


def child_ours_speed(
    workdir: Path, count: int, repeat: int, runtime: str = "keras"
) -> dict[str, Any]:
    """Time ``Embedder.embed`` end to end on fresh files (no cache), keeping each image's
    re-ranking thumbnail as the product's embedding step does, then split decode/model."""
    embedder, info = _warm_embedder(runtime)
    started = time.perf_counter()
    images = frame_files(workdir / "frames", count)
    hash_s = time.perf_counter() - started
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = embedder.embed(images, None, thumbnails=True)
        passes.append(time.perf_counter() - started)
    return info | {
        "images": len(result.vectors),
        "problems": len(result.problems),
        "seconds": min(passes),
        "passes": passes,
        "hash_s": hash_s,
        "peak_rss": peak_rss_bytes(),
        "decode_only_ips": _decode_only_rate(embedder, images, embedder.decode_threads),
        "decode_only_1t_ips": _decode_only_rate(embedder, images[: max(1, count // 4)], 1),
        "model_only_ips": _model_only_rate(embedder, images),
    }


def child_ours_rss(workdir: Path, count: int) -> dict[str, Any]:
    """Embed ``count`` frames in this fresh process and report its peak resident memory."""
    from include.image_similarity.embedding import Embedder

    images = frame_files(workdir / "frames", count)
    embedder = Embedder(model_dir=MODEL_DIR)
    started = time.perf_counter()
    result = embedder.embed(images, None)
    return {
        "images": len(result.vectors),
        "seconds": time.perf_counter() - started,
        "peak_rss": peak_rss_bytes(),
    }


def neighbour_recall(matches: dict, truth: dict[str, str], radius: int | None = 1) -> float:
    """Share of queries whose first match is in the true frame's pan, at most ``radius`` frames
    away (any distance for None): a diagnostic of what the top-1 misses are."""

    def position(name: str) -> tuple[str, int] | None:
        found = FRAME_NAME.search(name)
        return (found.group(1), int(found.group(2))) if found else None

    hits = 0
    for query, expected in truth.items():
        top = matches.get(query) or []
        got, want = (position(top[0]["name"]) if top else None), position(expected)
        near = radius is None or (got and want and abs(got[1] - want[1]) <= radius)
        if got and want and got[0] == want[0] and near:
            hits += 1
    return hits / len(truth)


def _recall_scores(matches: dict, ground_truth: dict) -> dict[str, float]:
    """Headline recall (a match that shows all of the query) and the exact-frame diagnostics."""
    from include.demo.data import recall_at_k, recall_at_k_any

    truth, acceptable = ground_truth["queries"], ground_truth["acceptable"]
    return {
        "recall1": recall_at_k_any(matches, acceptable, 1),
        "recall3": recall_at_k_any(matches, acceptable, 3),
        "exact1": recall_at_k(matches, truth, 1),
        "exact3": recall_at_k(matches, truth, 3),
        "near1": neighbour_recall(matches, truth),
        "scene1": neighbour_recall(matches, truth, None),
    }


def child_recall_ours(recall_dir: Path, batch_dir: Path, repeat: int = 1) -> dict[str, Any]:
    """Run the product's pipeline steps on the near-duplicate set and score its matches, with
    the re-ranker (the product's default) and, as the baseline, by cosine alone. Each
    re-ranker is timed ``repeat`` times, one pass of each in turn, and its best pass kept."""
    import shutil

    from include.image_similarity import pipeline
    from include.image_similarity.embedding import Embedder
    from include.image_similarity.rerank import RerankConfig
    from include.image_similarity.thumbnails import load_thumbnails

    ground_truth = json.loads((recall_dir / "ground_truth.json").read_text(encoding="utf-8"))
    shutil.rmtree(batch_dir, ignore_errors=True)
    sources = {
        "dataset": recall_dir / "dataset",
        "queries": recall_dir / "queries",
        "known_answers": recall_dir / "known_answers",  # generated empty (n_known_sets=0)
    }
    started = time.perf_counter()
    pipeline.list_sources(batch_dir, sources)
    pipeline.embed_collections(batch_dir, Embedder(model_dir=MODEL_DIR), cache=None)
    embedded = time.perf_counter()
    cosine = pipeline.match_queries(batch_dir, k=3, rerank_config=None)
    cosine_s = time.perf_counter() - embedded
    queries = len(ground_truth["queries"])
    # Thumbnails are read once from the batch (embed_collections stored them) and, as before
    # they were stored, decoded from the files, each timed on its own; both re-rankers then
    # read them from memory, so their times compare the searches alone.
    listings = pipeline.load_listings(batch_dir)
    images = listings["queries"].images + listings["dataset"].images
    decoded_at = time.perf_counter()
    pipeline._thumbnails(images)
    decode_s = time.perf_counter() - decoded_at
    read_at = time.perf_counter()
    thumbs = pipeline._thumbnails(images, stored=load_thumbnails(batch_dir))
    read_s = time.perf_counter() - read_at
    pipeline._thumbnails = lambda images, **_: {i.sha256: thumbs.get(i.sha256) for i in images}
    timed: dict[str, tuple[float, dict[str, float]]] = {}
    for _ in range(repeat):  # in turn, so a noisy moment on the machine hits both
        for method in ("exhaustive", "pyramid"):  # the pyramid last: its matches.json stays
            at = time.perf_counter()
            config = RerankConfig(method=method)
            found = pipeline.match_queries(batch_dir, k=3, rerank_config=config)
            seconds = time.perf_counter() - at
            if method not in timed or seconds < timed[method][0]:
                timed[method] = (seconds, _recall_scores(found, ground_truth))
    return {
        "queries": queries,
        "frames": len(list((recall_dir / "dataset").iterdir())),
        **timed["pyramid"][1],
        "cosine": _recall_scores(cosine, ground_truth),
        "exhaustive": timed["exhaustive"][1],
        "cosine_ms_per_query": 1000 * cosine_s / queries,
        "thumbnail_ms_per_query": 1000 * decode_s / queries,
        "stored_thumbnail_ms_per_query": 1000 * read_s / queries,
        "rerank_ms_per_query": 1000 * timed["pyramid"][0] / queries,
        "exhaustive_ms_per_query": 1000 * timed["exhaustive"][0] / queries,
        "seconds": time.perf_counter() - started,
    }


def _notebook_features(model, paths: list[Path]) -> np.ndarray:
    """The notebook's features (raw 7x7x512 maps, flattened); batched here, same values."""
    rows = []
    for start in range(0, len(paths), NOTEBOOK_RECALL_BATCH):
        batch = paths[start : start + NOTEBOOK_RECALL_BATCH]
        chunk = np.concatenate([_notebook_input(p) for p in batch])
        rows.append(model.predict(chunk, verbose=0).reshape(len(chunk), -1))
    return np.concatenate(rows)


def child_recall_notebook(recall_dir: Path) -> dict[str, Any]:
    """The notebook's ranking (Euclidean on raw feature maps) with untrained VGG16 weights."""
    ground_truth = json.loads((recall_dir / "ground_truth.json").read_text(encoding="utf-8"))
    truth = ground_truth["queries"]
    dataset = sorted((recall_dir / "dataset").iterdir())
    queries = [recall_dir / "queries" / name for name in truth]
    model = _notebook_model()
    data = _notebook_features(model, dataset)
    query = _notebook_features(model, queries)
    squared = (
        np.sum(query**2, axis=1)[:, None] + np.sum(data**2, axis=1)[None, :] - 2 * query @ data.T
    )
    order = np.argsort(squared, axis=1, kind="stable")[:, :3]
    matches = {
        q.name: [{"name": dataset[j].name} for j in row]
        for q, row in zip(queries, order, strict=True)
    }
    return _recall_scores(matches, ground_truth)


def child_recall_litert(recall_dir: Path, batch_dir: Path, keras_batch: Path) -> dict[str, Any]:
    """The recall child's pipeline with the LiteRT runtime (pyramid re-ranker only), and how far
    its vectors are from the Keras runtime's of ``keras_batch`` (the recall-ours child's)."""
    import shutil

    from include.image_similarity import pipeline
    from include.image_similarity.embedding import Embedder
    from include.image_similarity.vectors import load_vectors

    ground_truth = json.loads((recall_dir / "ground_truth.json").read_text(encoding="utf-8"))
    shutil.rmtree(batch_dir, ignore_errors=True)
    pipeline.list_sources(
        batch_dir,
        {name: recall_dir / name for name in ("dataset", "queries", "known_answers")},
    )
    embedder = Embedder(model_dir=MODEL_DIR, runtime="litert")
    pipeline.embed_collections(batch_dir, embedder, cache=None)
    found = pipeline.match_queries(batch_dir, k=3)
    ours, theirs = load_vectors(batch_dir), load_vectors(keras_batch)
    rows = theirs.rows()
    mine = ours.read_all()
    reference = theirs.read([rows[h] for h in ours.hashes])
    return {
        **_recall_scores(found, ground_truth),
        "max_abs_diff": float(np.abs(mine - reference).max()),
        "min_cosine": float((mine * reference).sum(axis=1).min()),
    }


def run_child(args: argparse.Namespace) -> None:
    _quiet()
    workdir = args.workdir
    if args.child == "notebook-speed":
        result = child_notebook_speed(workdir, args.baseline_images, args.repeat)
    elif args.child == "ours-speed":
        result = child_ours_speed(workdir, args.images, args.repeat)
    elif args.child == "litert-speed":
        result = child_ours_speed(workdir, args.images, args.repeat, runtime="litert")
    elif args.child == "recall-litert":
        result = child_recall_litert(
            args.recall_dir, workdir / "recall_batch_litert", workdir / "recall_batch"
        )
    elif args.child == "ours-rss":
        result = child_ours_rss(workdir, args.rss_images)
    elif args.child == "recall-ours":
        result = child_recall_ours(args.recall_dir, workdir / "recall_batch", args.repeat)
    else:
        result = child_recall_notebook(args.recall_dir)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def spawn_child(kind: str, args: argparse.Namespace, recall_dir: Path | None) -> dict | None:
    """Run one measurement in a fresh interpreter; return its result, or None if it failed."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--workdir",
        str(args.workdir),
        "--images",
        str(args.images),
        "--baseline-images",
        str(args.baseline_images),
        "--rss-images",
        str(args.rss_images),
        "--repeat",
        str(args.repeat),
    ]
    if recall_dir is not None:
        command += ["--recall-dir", str(recall_dir)]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    print(f"running {kind} ...", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["wall_s"] = time.perf_counter() - started
            return result
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    print(f"{kind} failed (exit {proc.returncode}):\n{tail}", flush=True)
    return None


# --- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    measurement: str
    notebook: str
    ours: str
    ratio: str
    target: str


def verdict(ok: bool) -> str:
    return "target met" if ok else "target missed"


def rate(result: dict | None) -> float | None:
    return result["images"] / result["seconds"] if result else None


def mb(value: int) -> str:
    return f"{value / 1024**2:,.0f} MB"


def speed_row(notebook: dict | None, ours: dict | None) -> Row:
    nb, us = rate(notebook), rate(ours)
    targets = []
    ratio = "—"
    if nb and us:
        ratio = f"{us / nb:.1f}×"
        targets.append(f"ratio ≥ {TARGET_SPEEDUP:.0f}×: {verdict(us / nb >= TARGET_SPEEDUP)}")
    if us:
        targets.append(
            f"ours ≥ {TARGET_IMAGES_PER_S:.0f} img/s: {verdict(us >= TARGET_IMAGES_PER_S)}"
        )
    return Row(
        "images/s (1280×720 JPEG, decode included)",
        f"{nb:.2f} img/s ({notebook['images']} images)" if nb else "failed",
        f"{us:.1f} img/s ({ours['images']} images)" if us else "failed",
        ratio,
        "; ".join(targets) or "target missed (measurement failed)",
    )


def litert_row(keras: dict | None, litert: dict | None, recall: dict | None) -> Row:
    """The LiteRT runtime (an option) beside today's Keras runtime, both measured in this run:
    images/s end to end, and recall and vectors on the recall set."""
    ks, lt = rate(keras), rate(litert)
    speed = f"{lt:.1f} img/s ({litert['images']} images)" if lt else "failed"
    if litert:
        speed += f", model only {litert['model_only_ips']:.0f} img/s"
    quality = "recall failed"
    if recall:
        quality = (
            f"recall@1/@3 {recall['recall1']:.3f} / {recall['recall3']:.3f}, vectors within "
            f"{recall['max_abs_diff']:.1g} of Keras's"
        )
    default = "—"
    if ks and lt:
        default = f"{lt / ks:.2f}× Keras's {ks:.1f} img/s"
    return Row("LiteRT runtime (option: runtime=litert)", "—", f"{speed}; {quality}", default,
               "measured option, not the default")  # fmt: skip


def load_row(notebook: dict | None, ours: dict | None) -> Row:
    def text(result: dict | None, first: str) -> str:
        if not result:
            return "failed"
        extra = " (incl. one-time weight conversion)" if result.get("first_conversion") else ""
        return f"{result['load_s']:.1f} s load{extra} + {result['first_s']:.1f} s {first}"

    return Row(
        "model load (excluded from images/s)",
        text(notebook, "first predict"),
        text(ours, "first batch"),
        "—",
        "— (no target)",
    )


def rss_row(notebook: dict | None, rss: dict | None) -> Row:
    nb = f"{mb(notebook['peak_rss'])} ({notebook['images']} images)" if notebook else "failed"
    us = f"{mb(rss['peak_rss'])} ({rss['images']} images)" if rss else "failed"
    target = f"< {TARGET_RSS_BYTES / 1024**3:.0f} GB: "
    target += verdict(rss["peak_rss"] < TARGET_RSS_BYTES) if rss else "target missed (failed)"
    return Row("peak RSS (fresh process, VmHWM)", nb, us, "—", target)


def recall_rows(notebook: dict | None, ours: dict | None) -> list[Row]:
    """Headline recall with its targets; ours re-ranked, against cosine alone in the same run."""
    rows = []
    for k, target in ((1, TARGET_RECALL1), (3, TARGET_RECALL3)):
        key = f"recall{k}"
        nb = f"{notebook[key]:.3f} (untrained weights; not comparable)" if notebook else "failed"
        if ours:
            us = f"{ours[key]:.3f} (cosine alone {ours['cosine'][key]:.3f})"
            ratio = f"{ours[key] / ours['cosine'][key]:.2f}×" if ours["cosine"][key] else "—"
            goal = f"≥ {target:.2f}: {verdict(ours[key] >= target)}"
        else:
            us, ratio, goal = "failed", "—", f"≥ {target:.2f}: target missed (failed)"
        rows.append(Row(f"recall@{k} (a match showing all of the query)", nb, us, ratio, goal))
    return rows


def render(rows: list[Row]) -> str:
    header = Row(
        "measurement",
        "notebook (VGG16, per-image predict)",
        "ours (EfficientNet-Lite0, batched)",
        "ratio",
        "target",
    )
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in Row.__dataclass_fields__]

    def line(row: Row) -> str:
        values = [getattr(row, f) for f in Row.__dataclass_fields__]
        cells = [v.ljust(w) for v, w in zip(values, widths, strict=True)]
        return "| " + " | ".join(cells) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def machine_line() -> str:
    from PIL import features

    turbo = "libjpeg-turbo" if features.check_feature("libjpeg_turbo") else "libjpeg"
    return _common.machine_line(
        ("TensorFlow", "tensorflow-cpu"),
        ("Keras", "keras"),
        (f"Pillow {_common.version('pillow')} ({turbo})", ""),
    )


def notes(args: argparse.Namespace, results: dict[str, dict | None], recall_info: str) -> list[str]:
    lines = [
        machine_line(),
        f"parameters: N={args.images} frames for ours, M={args.baseline_images} for the notebook, "
        f"R={args.rss_images} for peak RSS; frames {FRAME_SIZE[0]}×{FRAME_SIZE[1]} JPEG "
        f"q{FRAME_QUALITY} (camera pans over scikit-image photos, upscaled, "
        f"grain σ={FRAME_GRAIN:g}); {recall_info}; workdir {args.workdir}",
    ]
    ours = results.get("ours-speed")
    if ours:
        lines.append(
            f"ours: batch {ours['batch_size']}, {ours['decode_threads']} decode threads, "
            f"input {ours['input']} (aspect kept, JPEG draft decode), GeM p={ours['gem_p']:g}, "
            "cache=None; split: decode only "
            f"{ours['decode_only_ips']:.0f} img/s ({ours['decode_threads']} threads), "
            f"{ours['decode_only_1t_ips']:.0f} img/s (1 thread); model only "
            f"{ours['model_only_ips']:.0f} img/s; listing/hashing {ours['hash_s']:.1f} s "
            "(not timed, as the pipeline lists sources in its own step)"
        )
    notebook = results.get("notebook-speed")
    if notebook:
        lines.append(
            "notebook: VGG16 include_top=False weights=None (ImageNet weights need a download; "
            "random weights cost the same time), load_img 224×224 (squash, nearest), "
            f"predict(verbose=0) one image per call, {notebook['feature_dim']}-d raw features, "
            f"Euclidean; split: load+preprocess {notebook['decode_ms']:.1f} ms/img, "
            f"predict {notebook['predict_ms']:.1f} ms/img"
        )
    recall_ours, recall_nb = results.get("recall-ours"), results.get("recall-notebook")
    if recall_ours or recall_nb:
        results_by_method = (
            ("ours re-ranked", recall_ours),
            ("ours cosine alone", recall_ours["cosine"] if recall_ours else None),
            ("notebook (untrained)", recall_nb),
        )
        exact = [
            f"{who} {r['exact1']:.3f} / {r['exact3']:.3f}" for who, r in results_by_method if r
        ]
        near = [f"{who} {r['near1']:.3f} / {r['scene1']:.3f}" for who, r in results_by_method if r]
        lines.append(
            "diagnostic: exact source frame recall@1 / recall@3 (several frames of a pan can "
            "show all of a query, so this is ambiguous by construction): " + ", ".join(exact)
        )
        lines.append(
            "diagnostic: recall@1 counting as a hit a neighbouring frame (±1) / any frame of the "
            "same pan: " + ", ".join(near)
        )
        if recall_ours:
            ex, py = recall_ours["exhaustive_ms_per_query"], recall_ours["rerank_ms_per_query"]
            lines.append(
                f"matching time per query: cosine alone "
                f"{recall_ours['cosine_ms_per_query']:.1f} ms; re-ranking (shortlist 20, "
                "thumbnails read beforehand from the batch in "
                f"{recall_ours['stored_thumbnail_ms_per_query']:.2f} ms a query, decoding them "
                f"from the files would take {recall_ours['thumbnail_ms_per_query']:.1f} ms): "
                f"pyramid (OpenCV, the default) {py:.1f} ms, exhaustive (FFT, "
                f"before) {ex:.0f} ms, {ex / py:.0f}× faster (best of {args.repeat} passes "
                "each, in turn); re-ranking target ≤ 10 ms: " + verdict(py <= 10)
            )
            exhaustive = recall_ours["exhaustive"]
            lines.append(
                f"recall@1 / @3 with the exhaustive re-ranker: {exhaustive['recall1']:.3f} / "
                f"{exhaustive['recall3']:.3f} (pyramid {recall_ours['recall1']:.3f} / "
                f"{recall_ours['recall3']:.3f})"
            )
    passes = {
        who: ", ".join(f"{r['images'] / s:.1f}" for s in r["passes"])
        for who, r in (("ours", ours), ("notebook", notebook))
        if r
    }
    if passes:
        lines.append(
            f"images/s is the best of {args.repeat} pass(es): "
            + "; ".join(f"{who} {text} img/s" for who, text in passes.items())
        )
    lines.append(
        "files are read from the page cache (written just before or on an earlier run); "
        + _common.load_line(args.load_before)
    )
    return lines


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="N frames for ours")
    parser.add_argument("--baseline-images", type=int, default=100, help="M for the notebook")
    parser.add_argument("--rss-images", type=int, default=5000, help="R frames for peak RSS")
    parser.add_argument("--recall-frames", type=int, default=400, help="near-duplicate set size")
    parser.add_argument("--recall-queries", type=int, help="queries (default: half the frames)")
    parser.add_argument(
        "--repeat", type=int, help="timed passes per method, best kept (default 2; quick 1)"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="N=200 M=20 R=300 F=100 smoke run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--recall-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.baseline_images, args.rss_images, args.recall_frames = 200, 20, 300, 100
    if min(args.images, args.baseline_images, args.rss_images, args.recall_frames) < 1:
        parser.error("image counts must be positive")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.recall_queries is None:
        args.recall_queries = max(1, args.recall_frames // 2)
    args.workdir = args.workdir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0

    started = time.perf_counter()
    args.load_before = os.getloadavg()[0]
    frames = args.workdir / "frames"
    spent = ensure_frames(frames, max(args.images, args.baseline_images, args.rss_images))
    recall = ensure_recall_set(args.workdir, args.recall_frames, args.recall_queries)
    print(f"test images ready in {spent:.0f} s", flush=True)

    results: dict[str, dict | None] = {}
    kinds = ("notebook-speed", "ours-speed", "litert-speed", "ours-rss", "recall-ours",
             "recall-litert", "recall-notebook")  # fmt: skip
    for kind in kinds:  # recall-litert compares its vectors with recall-ours's
        results[kind] = spawn_child(kind, args, recall.root if "recall" in kind else None)

    n_frames = len(list(recall.dataset_dir.iterdir()))
    recall_info = (
        f"recall set: {n_frames} frames {FRAME_SIZE[0]}×{FRAME_SIZE[1]} "
        f"({n_frames // 8} per scene pan) + {len(recall.ground_truth)} altered queries, "
        "ranked by pipeline.match_queries(k=3)"
    )
    rows = [
        speed_row(results["notebook-speed"], results["ours-speed"]),
        load_row(results["notebook-speed"], results["ours-speed"]),
        rss_row(results["notebook-speed"], results["ours-rss"]),
        *recall_rows(results["recall-notebook"], results["recall-ours"]),
        litert_row(results["ours-speed"], results["litert-speed"], results["recall-litert"]),
    ]
    print()
    print(render(rows))
    print()
    for text in notes(args, results, recall_info):
        print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
