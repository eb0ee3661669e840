"""The similarity stage from the command line: `python -m include.image_similarity match`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT
from PIL import ImageEnhance

from testsupport.imagekit import save, textured, write_bad_files

pytestmark = pytest.mark.slow


def test_match_writes_best_first_matches_and_names_bad_files(tmp_path, model_dir):
    dataset, queries = tmp_path / "dataset", tmp_path / "queries"
    for i in range(6):
        save(textured(480, 270, seed=i), dataset / f"frame{i}.jpg", quality=92)
    write_bad_files(dataset)
    # Query: a brightened, off-centre crop of frame 2; and an exact copy of frame 4.
    source = textured(480, 270, seed=2).crop((30, 20, 450, 256))
    save(ImageEnhance.Brightness(source).enhance(1.3), queries / 'q\'uote "one".jpg', quality=70)
    save(textured(480, 270, seed=4), queries / "copy.jpg", quality=92)

    out = tmp_path / "out" / "matches.json"
    command = [
        sys.executable, "-m", "include.image_similarity", "match", "--dataset", str(dataset),
        "--queries", str(queries), "--out", str(out), "--k", "3",
        "--model-dir", str(model_dir), "--cache", str(tmp_path / "cache"),
        "--sheets", str(tmp_path / "sheets"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    matches = json.loads(out.read_text())
    assert set(matches) == {'q\'uote "one".jpg', "copy.jpg"}
    crop = matches['q\'uote "one".jpg']
    assert crop[0]["name"] == "frame2.jpg"
    assert [m["score"] for m in crop] == sorted((m["score"] for m in crop), reverse=True)
    assert all(set(m) == {"name", "score"} for m in crop) and len(crop) == 3
    # An exact copy of a dataset image is the query itself: never its own match.
    assert "frame4.jpg" not in [m["name"] for m in matches["copy.jpg"]]
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"):
        assert f"skipped dataset/{name}:" in done.stdout
    sheets = sorted(path.name for path in (tmp_path / "sheets").iterdir())
    assert sheets == ["copy.sheet.jpg", "q_uote_one.sheet.jpg"]
    # The log says what happened: no folder the user did not give, speeds without the model load.
    assert "known" not in done.stderr.replace(str(tmp_path), "")
    listed = re.findall(r"listed \d+ images in (.*) \(", done.stderr)
    assert listed == [str(dataset), str(queries)]
    (load,) = re.findall(r"loaded model \S+ in ([\d.]+) s", done.stderr)
    (embed,) = re.findall(r"embedded \d+ dataset images in ([\d.]+) s \(\d+ img/s\)", done.stderr)
    assert done.stderr.index("loaded model") < done.stderr.index("embedded 6 dataset images")
    assert float(embed) < float(load), done.stderr  # 6 images take less than loading the model

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    # 7 distinct contents: 6 frames and one query (copy.jpg is frame4.jpg, embedded once).
    assert "(0 images embedded, 7 from cache)" in again.stdout


def test_missing_folder_is_a_clear_error(tmp_path):
    command = [
        sys.executable, "-m", "include.image_similarity", "match", "--dataset",
        str(tmp_path / "nope"), "--queries", str(tmp_path), "--out", str(tmp_path / "m.json"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "nope" in done.stderr
