"""The strategic worker: careful where the options are clearly different pictures, a random pick
where they look almost the same (neighbouring video frames), decided from the pictures alone."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from test_workers import Files, altered, png, real_hit_answers

from include.crowd_sandbox import workers
from include.crowd_sandbox.workers import (
    PROFILES,
    Browser,
    answer_form,
    options_alike,
    understand,
    worker_ids,
)
from testsupport.imagekit import textured

STRATEGIC = PROFILES["strategic"]


@pytest.fixture
def files() -> Iterator[Files]:
    """test_workers.py's picture server."""
    server = Files()
    yield server
    server.close()


# --- a HIT like the pipeline's: one question of clearly different pictures (one of them the
# target's), one of neighbouring frames of a camera pan ---------------------------------------

OPTIONS = 3


def distinct_question(add, prefix: str, seed: int, right: int) -> tuple[str, list[str]]:
    """Target and options: the ``right`` one an altered copy, the others other pictures."""
    target = textured(160, 120, seed=seed)
    options = [
        altered(target, seed) if i == right else textured(160, 120, seed=seed + 1 + i)
        for i in range(OPTIONS)
    ]
    return (
        add(f"/{prefix}/target.png", png(target)),
        [add(f"/{prefix}/o{i}.png", png(o)) for i, o in enumerate(options)],
    )


def frames_question(add, prefix: str, seed: int, right: int) -> tuple[str, list[str]]:
    """Options: frames of a pan 10 px apart; the target an altered copy of the ``right`` one."""
    scene = textured(480, 120, seed=seed)
    frames = [scene.crop((100 + 10 * i, 0, 260 + 10 * i, 120)) for i in range(OPTIONS)]
    return (
        add(f"/{prefix}/target.png", png(altered(frames[right], seed))),
        [add(f"/{prefix}/o{i}.png", png(f)) for i, f in enumerate(frames)],
    )


def question_block(name: str, target: str, options: list[str], *, extra: str = "") -> str:
    """One question in the markup of the pipeline's HIT template (with "None of these")."""
    labels = "".join(
        f'<label class="option"><img src="{url}" alt="Picture {i + 1}"><span class="caption">'
        f'<input type="radio" name="{name}" value="{i + 1}" required> Picture {i + 1}</span>'
        "</label>"
        for i, url in enumerate(options)
    )
    none = (
        f'<label class="option none"><span class="caption"><input type="radio" name="{name}" '
        f'value="{len(options) + 1}" required> None of these</span></label>'
    )
    return (
        f'<fieldset class="question"{extra}><legend>Which picture shows the same scene?</legend>'
        f'<img data-role="target" data-question="{name}" src="{target}" alt="Reference">'
        f"{labels}{none}</fieldset>"
    )


def hit_page(blocks: list[str]) -> str:
    return (
        '<!DOCTYPE html><html><body><form method="post" '
        'action="https://www.mturk.com/mturk/externalSubmit">'
        '<input type="hidden" name="assignmentId" value="">'
        + "".join(blocks)
        + '<input type="submit" value="Submit"></form></body></html>'
    )


def caching_fetch():
    browser, cache = Browser("http://127.0.0.1:1"), {}

    def fetch(url: str) -> bytes | None:
        if url not in cache:
            cache[url] = browser.image(url)
        return cache[url]

    return fetch


def run_assignments(form, profile, fetch, trials: int, worker_id: str = "ASTRATEGIC01"):
    """Answer ``trials`` assignments seeded as the worker threads seed them."""
    return [
        answer_form(form, profile, random.Random(f"7:{worker_id}:answer:{n}"), fetch)
        for n in range(trials)
    ]


def rate(answers, question: str, value: str) -> float:
    return sum(a.choices[question] == value for a in answers) / len(answers)


# --- tests ----------------------------------------------------------------------------------


def test_the_profile_is_in_the_table_fast_and_named_by_the_scheme():
    assert STRATEGIC.looks and STRATEGIC.careful_below is not None
    assert STRATEGIC.speed == 0.5 and STRATEGIC.accuracy == PROFILES["diligent"].accuracy
    assert [w for w, _ in worker_ids("strategic:2")] == ["ASTRATEGIC01", "ASTRATEGIC02"]
    assert PROFILES["diligent"].careful_below is None  # the others are unchanged
    doc = workers.__doc__ or ""
    assert "strategic" in doc and "ASTRATEGIC01" in doc


def test_it_is_right_on_different_pictures_and_at_chance_on_near_identical_ones(files):
    trials_per_page, pages = 150, 4
    easy_right = hard_right = 0
    hard_picks = [0] * (OPTIONS + 1)
    easy_notes: set[str] = set()
    hard_notes: set[str] = set()
    fetch = caching_fetch()
    for page in range(pages):
        easy_answer, hard_answer = page % OPTIONS, (page + 1) % OPTIONS
        easy = distinct_question(files.add, f"e{page}", 1000 + 37 * page, easy_answer)
        hard = frames_question(files.add, f"h{page}", 2000 + 37 * page, hard_answer)
        # alternate which question comes first and which name it gets
        blocks = [question_block("q1", *easy), question_block("q2", *hard)]
        names = {"easy": "q1", "hard": "q2"}
        if page % 2:
            blocks = [question_block("q1", *hard), question_block("q2", *easy)]
            names = {"easy": "q2", "hard": "q1"}
        form = understand(hit_page(blocks), files.url + "/hit/H/question")
        answers = run_assignments(form, STRATEGIC, fetch, trials_per_page)
        easy_right += sum(a.choices[names["easy"]] == str(easy_answer + 1) for a in answers)
        hard_right += sum(a.choices[names["hard"]] == str(hard_answer + 1) for a in answers)
        for a in answers:
            hard_picks[int(a.choices[names["hard"]]) - 1] += 1
            easy_notes.add(a.notes[names["easy"]])
            hard_notes.add(a.notes[names["hard"]])
    trials = trials_per_page * pages
    # careful: 97 % right; at random among 4 options (3 pictures and "None of these"): 25 %
    assert easy_right / trials >= 0.93, easy_right / trials
    assert 0.18 <= hard_right / trials <= 0.32, hard_right / trials
    assert easy_notes <= {"looked", "erred"} and hard_notes == {"skimmed"}
    # uniformly at random: every option of the hard question, "None of these" too
    assert all(0.18 <= n / trials <= 0.32 for n in hard_picks), hard_picks


def test_a_diligent_worker_gets_the_same_frames_right(files):
    """The control: the frames can be told apart, so the strategic worker's chance rate on
    them is its strategy, not a picture nobody could match."""
    easy = distinct_question(files.add, "e", 1000, 0)
    hard = frames_question(files.add, "h", 2000, 2)
    form = understand(
        hit_page([question_block("q1", *easy), question_block("q2", *hard)]), files.url + "/"
    )
    answers = run_assignments(form, PROFILES["diligent"], caching_fetch(), 100, "ADILIGENT01")
    assert rate(answers, "q1", "1") >= 0.93 and rate(answers, "q2", "3") >= 0.93


def test_how_alike_the_options_look_separates_the_two_kinds_of_question(files):
    fetch = caching_fetch()
    for seed in range(6):
        easy = distinct_question(files.add, f"e{seed}", 300 + seed, seed % OPTIONS)
        hard = frames_question(files.add, f"h{seed}", 600 + seed, seed % OPTIONS)
        page = hit_page([question_block("a", *easy), question_block("b", *hard)])
        a, b = understand(page, files.url + "/").questions
        easy_alike, hard_alike = options_alike(a, fetch), options_alike(b, fetch)
        assert easy_alike is not None and hard_alike is not None
        assert easy_alike < STRATEGIC.careful_below - 0.15 < hard_alike - 0.3, (
            easy_alike,
            hard_alike,
        )


def test_names_order_and_attributes_do_not_tell_it_which_question_to_answer(files):
    """Markup that seems to give the known-answer question away changes nothing: only the
    pictures count. Here the near-identical question is the one the markup calls "gold"."""
    easy = distinct_question(files.add, "e", 4242, 1)
    hard = frames_question(files.add, "h", 4343, 0)
    page = hit_page(
        [
            question_block("model_question", *easy, extra=' data-kind="model"'),
            question_block("gold", *hard, extra=' data-kind="gold" data-correct="1"'),
        ]
    )
    form = understand(page, files.url + "/")
    answers = run_assignments(form, STRATEGIC, caching_fetch(), 200)
    assert rate(answers, "model_question", "2") >= 0.93
    assert 0.15 <= rate(answers, "gold", "1") <= 0.35
    assert {a.notes["gold"] for a in answers} == {"skimmed"}


def test_two_questions_of_different_pictures_are_both_answered_carefully(files):
    first = distinct_question(files.add, "a", 77, 2)
    second = distinct_question(files.add, "b", 88, 0)
    page = hit_page([question_block("x", *first), question_block("y", *second)])
    answers = run_assignments(understand(page, files.url + "/"), STRATEGIC, caching_fetch(), 100)
    assert rate(answers, "x", "3") >= 0.93 and rate(answers, "y", "1") >= 0.93


def test_without_loadable_option_pictures_it_guesses(files):
    target = files.add("/t.png", png(textured(160, 120, seed=5)))
    missing = [f"{files.url}/missing{i}.png" for i in range(OPTIONS)]  # 404s
    page = hit_page([question_block("q", target, missing)])
    answers = run_assignments(understand(page, files.url + "/"), STRATEGIC, caching_fetch(), 40)
    assert {a.notes["q"] for a in answers} == {"guessed"}
    assert len({a.choices["q"] for a in answers}) > 1


def test_the_same_seed_gives_the_same_answers(files):
    easy = distinct_question(files.add, "e", 10, 0)
    hard = frames_question(files.add, "h", 20, 1)
    form = understand(
        hit_page([question_block("q1", *easy), question_block("q2", *hard)]), files.url + "/"
    )
    fetch = caching_fetch()
    first = [a.fields for a in run_assignments(form, STRATEGIC, fetch, 30)]
    again = [a.fields for a in run_assignments(form, STRATEGIC, fetch, 30)]
    assert first == again
    other = [a.fields for a in run_assignments(form, STRATEGIC, fetch, 30, "ASTRATEGIC02")]
    assert other != first


# --- through a running sandbox --------------------------------------------------------------


def test_a_mix_with_strategic_workers_does_a_real_hit(sandbox_factory, files):
    running = sandbox_factory(
        "--workers",
        "4:diligent=0.25,strategic=0.75",
        "--seconds-per-assignment",
        "0.2",
        "--worker-seed",
        "1",
    )
    easy = distinct_question(files.add, "e", 5150, 2)
    hard = frames_question(files.add, "h", 5250, 0)
    page = hit_page([question_block("left", *hard), question_block("right", *easy)])
    answers = real_hit_answers(running, page, assignments=4)
    assert set(answers) == {"ADILIGENT01", "ASTRATEGIC01", "ASTRATEGIC02", "ASTRATEGIC03"}
    for worker, fields in answers.items():
        assert fields["right"] == "3", (worker, fields)  # the different pictures: answered
        assert fields["left"] in {"1", "2", "3", "4"}
    log = "".join(running.log)
    assert "looks where it is easy" in log and "(skimmed)" in log
