"""A batch folder as the similarity stage leaves it for the crowd stage (``sources.json``,
``similarity.json``, ``known_answers.json``), built from generated pictures, for tests that
run the crowd stage's own ``publish`` and ``create`` steps."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from include.common.files import write_json
from testsupport.imagekit import textured

DATASET = 24
GOLD_SETS = 4
QUERIES = 40


def save(folder: Path, name: str, image: Image.Image) -> dict:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".png"):
        image.save(path, "PNG")
    else:
        image.save(path, "JPEG", quality=90)
    data = path.read_bytes()
    return {
        "name": name,
        "path": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def build_sources(
    root: Path, *, queries: int = QUERIES, dataset: int = DATASET, gold_sets: int = GOLD_SETS
) -> dict[str, list[dict]]:
    """The three collections as files: queries 480x360 .jpg; dataset 800x600 .png and
    960x720 .jpg; known answers 640x480 .jpg, one wrong match per set a .png."""
    frames = [
        save(root / "dataset", f"frame_{i:02d}.png", textured(800, 600, seed=1000 + i))
        if i % 2
        else save(root / "dataset", f"frame_{i:02d}.jpg", textured(960, 720, seed=1000 + i))
        for i in range(dataset)
    ]
    asked = [
        save(root / "queries", f"query_{i:02d}.jpg", textured(480, 360, seed=2000 + i))
        for i in range(queries)
    ]
    known = []
    for n in range(1, gold_sets + 1):
        for r, (role, ext) in enumerate(
            (("", ".jpg"), ("_1st_match", ".jpg"), ("_2nd_match", ".png"), ("_3rd_match", ".jpg"))
        ):
            picture = textured(640, 480, seed=3000 + 10 * n + r)
            known.append(save(root / "known", f"known{n}{role}{ext}", picture))
    return {"dataset": frames, "queries": asked, "known_answers": known}


def write_batch(
    batch_dir: Path, sources: dict[str, list[dict]], queries: int, *, shift: int = 0
) -> None:
    """What the similarity stage leaves for the crowd stage, for the first ``queries``
    queries: one match for queries 0-5, two for 6-11, three for the others. ``shift`` moves
    every query's matches to other dataset images (as a grown dataset would)."""
    dataset = sources["dataset"]
    listed = dict(sources, queries=sources["queries"][:queries])
    write_json(
        batch_dir / "sources.json",
        {
            name: {"source": name, "images": images, "problems": []}
            for name, images in listed.items()
        },
    )
    entries = []
    for i, query in enumerate(listed["queries"]):
        k = 1 if i < 6 else 2 if i < 12 else 3
        picked = [dataset[(5 * i + 7 * r + shift) % len(dataset)] for r in range(k)]
        entries.append(
            {
                "query": {key: query[key] for key in ("name", "sha256", "path")},
                "matches": [
                    {
                        "rank": r + 1,
                        "name": m["name"],
                        "sha256": m["sha256"],
                        "path": m["path"],
                        "score": round(0.9 - r / 10, 3),
                        "alignment": None,
                    }
                    for r, m in enumerate(picked)
                ],
            }
        )
    write_json(batch_dir / "similarity.json", {"model_id": "test", "k": 3, "queries": entries})
    by_name = {image["name"]: image["sha256"] for image in sources["known_answers"]}
    sets = sorted({image["name"].split("_")[0].split(".")[0] for image in sources["known_answers"]})
    write_json(
        batch_dir / "known_answers.json",
        [
            {
                "set_id": set_id,
                "target": f"{set_id}.jpg",
                "correct": f"{set_id}_1st_match.jpg",
                "wrong": [f"{set_id}_2nd_match.png", f"{set_id}_3rd_match.jpg"],
                "hashes": {
                    name: by_name[name]
                    for name in (
                        f"{set_id}.jpg",
                        f"{set_id}_1st_match.jpg",
                        f"{set_id}_2nd_match.png",
                        f"{set_id}_3rd_match.jpg",
                    )
                },
            }
            for set_id in sets
        ],
    )
