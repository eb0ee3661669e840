"""The demo runner: what it prints of the crowd's results (every aggregation method, the primary
on top), and which folders it runs on (the sample, or your own, checked before anything starts)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from include.crowd.aggregation.registry import aggregate
from include.demo import runner
from include.demo.runner import Folders, OwnDataError, check_own_folders, crowd_lines, own_folders
from testsupport.crowd_answers import make_plan, make_review
from testsupport.imagekit import save, textured


def sample() -> tuple[list, list]:
    agreed = make_plan("agreed.jpg", ["a.jpg", "b.jpg", "c.jpg"], hit_id="H1")
    split = make_plan("split.jpg", ["d.jpg", "e.jpg", "f.jpg"], hit_id="H2")
    reviews = [make_review(agreed, w, "a.jpg") for w in ("W1", "W2", "W3")]
    reviews.append(make_review(agreed, "W4", "b.jpg"))
    reviews += [make_review(split, "W1", "e.jpg"), make_review(split, "W4", "d.jpg")]
    return [agreed, split], reviews


def test_each_method_gets_a_line_and_differing_picks_are_shown():
    plans, reviews = sample()
    results = json.loads(json.dumps(aggregate(plans, reviews, spent={"rewards": 25})))

    lines = crowd_lines(results)

    assert lines[0] == "\ncrowd (2 HITs, 6 assignments):"
    assert lines[1].startswith("  agreed.jpg   winner a.jpg") and "agrees with model" in lines[1]
    assert "dawid_skene" not in lines[1] and "wawa" not in lines[1]  # all three agree
    # Majority vote ties 1-1; Wawa weighs W1 (agreed with the majority) over W4 (did not).
    assert lines[2].startswith("  split.jpg    winner tie d.jpg/e.jpg")
    assert "wawa: e.jpg" in lines[2]
    assert (
        lines[3]
        == "majority (primary): 1 decided, 1 tied, agrees with the model's first match on 1/1"
    )
    assert lines[4].startswith("dawid_skene: ") and lines[5].startswith("wawa: 2 decided, 0 tied")
    # Both voters on the split query passed both gold questions: equal weight, a tie.
    assert lines[6].startswith("gold_skill: 1 decided, 1 tied")
    assert lines[7].startswith(
        "gold pass rate 100%; crowd agrees with the model's first match on 1/1"
    )
    assert "spent $0.25" in lines[7]
    assert lines[8] == "assignments per HIT: 3.0 on average (2 to 4)"


def test_the_primary_method_leads_the_lines():
    plans, reviews = sample()
    results = aggregate(plans, reviews, primary="wawa")

    lines = crowd_lines(results)

    assert lines[2].startswith("  split.jpg    winner e.jpg") and "majority: tie" in lines[2]
    assert lines[5].startswith("wawa (primary): 2 decided")


# Your own folders: laid out like the original notebook's data, with its mixed extensions.
NOTEBOOK_KNOWN_ANSWERS = (
    "known1.jpg", "known1_1st_match.jpeg", "known1_2nd_match.jpeg", "known1_3rd_match.jpg",
    "known2.jpeg", "known2_1st_match.JPG", "known2_2nd_match.jpg", "known2_3rd_match.png",
    "known3.PNG", "known3_1st_match.JPEG", "known3_2nd_match.jpg", "known3_3rd_match.jpeg",
)  # fmt: skip


def notebook_layout(root: Path) -> Path:
    """``root/data`` with vframes/, testimages/ and knownanswers/ (tiny images)."""
    data = root / "data"
    for n in range(3):
        save(textured(64, 36, seed=n), data / "vframes" / f"frame{n:03d}.jpg")
    save(textured(64, 36, seed=10), data / "testimages" / "test1.jpg")
    for n, name in enumerate(NOTEBOOK_KNOWN_ANSWERS):
        image_format = "PNG" if name.lower().endswith(".png") else "JPEG"
        save(textured(64, 36, seed=20 + n), data / "knownanswers" / name, format=image_format)
    return data


def test_no_folder_given_means_the_generated_sample(tmp_path):
    assert own_folders(base_dir=tmp_path) is None
    assert own_folders(data="", dataset="", queries="", known_answers="", base_dir=tmp_path) is None


def test_data_names_the_three_sub_folders_and_an_explicit_folder_wins(tmp_path):
    folders = own_folders(data="mine", queries="/elsewhere/q", base_dir=tmp_path)

    assert folders == Folders(
        dataset=tmp_path / "mine" / "dataset",
        queries=Path("/elsewhere/q"),
        known_answers=tmp_path / "mine" / "known_answers",
    )


def test_relative_folders_are_relative_to_the_callers_directory(tmp_path):
    folders = own_folders(
        dataset="data/vframes",
        queries="../up/testimages",
        known_answers="data/knownanswers",
        base_dir=tmp_path / "here",
    )

    assert folders.dataset == tmp_path / "here" / "data" / "vframes"
    assert folders.queries == tmp_path / "up" / "testimages"


def test_the_explicit_folders_go_together_without_data(tmp_path):
    with pytest.raises(OwnDataError, match=r"missing --queries and --known-answers\. Give --data"):
        own_folders(dataset="data/vframes", base_dir=tmp_path)


def test_the_notebook_layout_with_mixed_extensions_passes_the_checks(tmp_path):
    data = notebook_layout(tmp_path)
    folders = own_folders(
        dataset="data/vframes",
        queries="data/testimages",
        known_answers="data/knownanswers",
        base_dir=tmp_path,
    )

    lines = check_own_folders(folders)

    assert lines == [
        f"  dataset        {data / 'vframes'} (3 images)",
        f"  queries        {data / 'testimages'} (1 images)",
        f"  known-answers  {data / 'knownanswers'} (3 known-answer sets)",
    ]


def test_a_missing_folder_is_named_with_what_it_should_hold(tmp_path):
    notebook_layout(tmp_path)
    # The notebook's folder given as --data: it has vframes/, not dataset/.
    folders = own_folders(data="data", base_dir=tmp_path)

    with pytest.raises(OwnDataError) as raised:
        check_own_folders(folders)

    message = str(raised.value)
    assert message.startswith(
        f"the dataset folder {tmp_path / 'data' / 'dataset'} does not exist: "
        "it should hold the images to search."
    )
    assert "--dataset, --queries and --known-answers" in message
    assert "DATASET=... QUERIES=... KNOWN_ANSWERS=..." in message


def test_a_folder_without_images_is_named(tmp_path):
    data = notebook_layout(tmp_path)
    for image in (data / "testimages").iterdir():
        image.rename(image.with_suffix(".txt"))

    with pytest.raises(OwnDataError) as raised:
        check_own_folders(Folders(data / "vframes", data / "testimages", data / "knownanswers"))

    assert str(raised.value).startswith(
        f"the queries folder {data / 'testimages'} holds no image (.bmp, .gif, .jpeg, .jpg"
    )
    assert str(raised.value).endswith("it should hold the query images")


def test_the_parent_of_the_image_folders_is_told_apart(tmp_path):
    data = notebook_layout(tmp_path)

    with pytest.raises(OwnDataError, match=r"\(it has the sub-folders knownanswers, testimages, "):
        check_own_folders(Folders(data, data / "testimages", data / "knownanswers"))


def test_known_answers_without_a_complete_set_are_refused_with_the_stages_reasons(tmp_path):
    data = notebook_layout(tmp_path)
    known = data / "knownanswers"
    for path in known.iterdir():
        if not path.name.startswith("known1"):
            path.unlink()
    (known / "known1_2nd_match.jpeg").rename(known / "known1_second_match.jpeg")

    with pytest.raises(OwnDataError) as raised:
        check_own_folders(Folders(data / "vframes", data / "testimages", known))

    message = str(raised.value)
    assert message.startswith(f"the known answers folder {known}: known-answer sets are not usable")
    assert "extra file known1_second_match.jpeg" in message
    assert "set 'known1' has no known1_2nd_match.<ext> image" in message


def test_bad_folders_stop_the_run_before_any_service_starts(tmp_path, monkeypatch, capsys):
    def fail(*args):
        raise AssertionError("the run started")

    monkeypatch.setattr(runner, "_run", fail)
    monkeypatch.chdir(tmp_path)

    code = runner.main(["run", "--demo-dir", str(tmp_path / ".demo"), "--data", "nowhere"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"demo: the dataset folder {tmp_path / 'nowhere' / 'dataset'} does")
    assert not (tmp_path / ".demo").exists()


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_passes_the_folders_to_the_runner():
    def runner_arguments(*variables: str) -> list[str]:
        dry = subprocess.run(
            ["make", "-n", "--no-print-directory", "demo", *variables],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        command = dry.stdout.splitlines()[-1]
        assert " -m include.demo.runner run " in command
        return command.split(" -m include.demo.runner run ")[1].split()

    sample = ["--demo-dir", f"{PROJECT_ROOT}/.demo"]
    assert runner_arguments() == sample
    assert runner_arguments("DATA=../mine") == [*sample, "--data", '"../mine"']
    assert runner_arguments(
        "DATASET=data/vframes", "QUERIES=my queries", "KNOWN_ANSWERS=data/knownanswers"
    ) == [
        *sample, "--dataset", '"data/vframes"', "--queries", '"my', 'queries"',
        "--known-answers", '"data/knownanswers"',
    ]  # fmt: skip
