"""The crowd settings' texts workers read: the HIT's instructions and description (with the
``{bonus}`` placeholder, filled in safely), the e-mail subject, and settings.json format 4 with
format-2 and format-3 files still read."""

from __future__ import annotations

import pytest
from test_layout import GOLD_SETS, QUERIES, html_of, presigned, question_xml

from include.common.strict import SettingsError
from include.crowd import settings as crowd
from include.crowd.layout import plan_hits
from include.crowd.review import ReviewSettings
from include.crowd.settings import (
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_HIT_INSTRUCTIONS,
    CrowdSettings,
    fill,
)
from include.crowd.stage import review_settings
from testsupport.crowd_plans import crowd_settings


def test_the_default_instructions_tell_workers_about_the_check_and_its_bonus():
    settings = crowd_settings(hit_instructions=DEFAULT_HIT_INSTRUCTIONS, bonus_usd="0.25")
    assert "One of the two questions checks your attention" in settings.instructions
    assert "a bonus of $0.25 on top of the reward" in settings.instructions
    assert "{" not in settings.instructions


def test_the_dag_takes_its_defaults_from_the_settings_module():
    from dags.image_similarity_mturk import PARAMS

    assert PARAMS["hit_instructions"].value == DEFAULT_HIT_INSTRUCTIONS
    assert PARAMS["email_subject"].value == DEFAULT_EMAIL_SUBJECT
    assert PARAMS["hit_description"].value == crowd.DEFAULT_HIT_DESCRIPTION
    settings = crowd_settings(hit_description=crowd.DEFAULT_HIT_DESCRIPTION, bonus_usd="0.1")
    assert settings.task_spec(None).description.endswith("for a bonus of $0.10.")


def test_the_instructions_are_shown_escaped_on_the_hit_page():
    settings = crowd_settings(
        hit_instructions="Check question: <b>{bonus}</b> bonus.\n\nSecond {{paragraph}}.",
        bonus_usd="0.10",
    )
    plan = plan_hits("batch-1", QUERIES[:1], GOLD_SETS)[0]
    html = html_of(question_xml(plan, presigned, title="t", instructions=settings.instructions))
    assert "<p>Check question: &lt;b&gt;$0.10&lt;/b&gt; bonus.</p>" in html
    assert "<p>Second {paragraph}.</p>" in html


@pytest.mark.parametrize(
    ("text", "filled"),
    [
        ("a {bonus} b", "a $0.10 b"),
        ("{{bonus}}", "{bonus}"),
        ("{{{bonus}}}", "{$0.10}"),
        ("a lone { brace", "a lone { brace"),
        ("a lone } brace", "a lone } brace"),
        ("}{", "}{"),
        ("", ""),
    ],
)
def test_fill_replaces_only_bare_names(text, filled):
    assert fill(text, {"bonus": "$0.10"}, "hit_instructions") == filled


@pytest.mark.parametrize(
    "text",
    [
        "{bonus!r}",
        "{bonus:>99999999}",
        "{bonus.__class__}",
        "{0}",
        "{}",
        "{reward}",
        "{bonus[0]}",
        "{ bonus }",
    ],
)
def test_anything_but_a_known_placeholder_is_refused_naming_the_param(text):
    with pytest.raises(SettingsError, match="'hit_instructions'.*placeholder"):
        crowd_settings(hit_instructions=text)


def test_a_value_is_not_read_again():
    assert fill("{a}", {"a": "{b}", "b": "x"}, "p") == "{b}"


def test_a_description_too_long_once_filled_is_refused():
    text = "{bonus}" * 285  # 1995 characters written, over 2000 with a bonus of $1000.00
    with pytest.raises(SettingsError, match=r"'hit_description' is \d{4} characters long once"):
        crowd_settings(hit_description=text, bonus_usd="1000.00")
    assert len(crowd_settings(hit_description=text, bonus_usd="0.10").description) == 1425


@pytest.mark.parametrize("subject", ["", "   ", "a" * 201, "line\nbreak", "tab\tx", "x\u2028y"])
def test_an_email_subject_that_mturk_would_refuse_or_split_is_refused(subject):
    with pytest.raises(SettingsError, match="'email_subject'"):
        crowd_settings(email_subject=subject)


def test_the_review_mails_with_the_subject_and_names_the_hit_title():
    settings = crowd_settings(email_subject="About HIT bonuses", hit_title="Pick one")
    review = review_settings(settings)
    assert isinstance(review, ReviewSettings)
    assert (review.email_subject, review.hit_title) == ("About HIT bonuses", "Pick one")


def test_settings_round_trip_in_format_4():
    settings = crowd_settings(
        exclude_after_gold_answers=5, exclude_below_gold_accuracy=0.7, max_hits_per_worker=4
    )
    stored = settings.to_stored()
    assert stored["format"] == 4
    assert stored["posting"]["instructions"] == settings.posting.instructions
    assert stored["review"]["email_subject"] == "No bonus this time"
    assert stored["review"]["exclude_after_gold_answers"] == 5
    assert stored["review"]["exclude_below_gold_accuracy"] == 0.7
    assert stored["workers"]["max_hits_per_worker"] == 4
    assert CrowdSettings.from_stored(stored) == settings


def format_3(settings: CrowdSettings) -> dict:
    stored = settings.to_stored()
    del stored["review"]["exclude_after_gold_answers"]
    del stored["review"]["exclude_below_gold_accuracy"]
    del stored["workers"]["max_hits_per_worker"]
    return {**stored, "format": 3}


def format_2(settings: CrowdSettings) -> dict:
    stored = format_3(settings)
    del stored["posting"]["instructions"], stored["review"]["email_subject"]
    del stored["review"]["min_work_seconds"]
    del stored["posting"]["max_assignments"], stored["posting"]["confidence"]
    return {**stored, "format": 2}


def test_a_format_3_file_is_read_with_the_default_exclusion_rule_and_no_cap():
    old = format_3(crowd_settings(exclude_after_gold_answers=9, max_hits_per_worker=2))
    read = CrowdSettings.from_stored(old)
    assert read.review.exclude_after_gold_answers == crowd.DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS
    assert read.review.exclude_below_gold_accuracy == crowd.DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY
    assert read.workers.max_hits_per_worker == 0
    assert read.money() == crowd_settings().money()
    two = CrowdSettings.from_stored(format_2(crowd_settings()))  # 2 -> 3 -> 4
    assert two.review.exclude_after_gold_answers == crowd.DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS


def test_a_format_3_file_with_a_field_of_format_4_is_refused():
    old = format_3(crowd_settings())
    old["workers"]["max_hits_per_worker"] = 1
    with pytest.raises(SettingsError, match="format 3 has no field workers.max_hits_per_worker"):
        CrowdSettings.from_stored(old)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("exclude_after_gold_answers", 0),
        ("exclude_after_gold_answers", 1001),
        ("exclude_below_gold_accuracy", -0.1),
        ("exclude_below_gold_accuracy", 1.5),
        ("exclude_below_gold_accuracy", float("nan")),
        ("max_hits_per_worker", -1),
        ("max_hits_per_worker", 10001),
    ],
)
def test_worker_quality_params_out_of_range_are_refused_naming_them(param, value):
    with pytest.raises(SettingsError, match=f"'{param}'"):
        crowd_settings(**{param: value})


def test_a_stored_exclusion_rule_out_of_range_is_refused():
    stored = crowd_settings().to_stored()
    stored["review"]["exclude_below_gold_accuracy"] = 7
    with pytest.raises(SettingsError, match="'exclude_below_gold_accuracy'"):
        CrowdSettings.from_stored(stored)


def test_the_dag_takes_the_worker_quality_defaults_from_the_settings_module():
    from dags.image_similarity_mturk import PARAMS

    assert PARAMS["exclude_after_gold_answers"].value == crowd.DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS
    assert PARAMS["exclude_below_gold_accuracy"].value == crowd.DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY
    assert PARAMS["max_hits_per_worker"].value == crowd.DEFAULT_MAX_HITS_PER_WORKER == 0


def test_a_format_2_file_is_read_with_the_defaults_and_its_braces_literal():
    old = format_2(crowd_settings())
    old["posting"]["description"] = "Pick {one} of {bonus}"  # format 2 filled nothing in
    read = CrowdSettings.from_stored(old)
    assert read.posting.instructions == DEFAULT_HIT_INSTRUCTIONS
    assert read.review.email_subject == DEFAULT_EMAIL_SUBJECT
    assert read.description == "Pick {one} of {bonus}"  # format 2 filled nothing in
    assert read.money() == crowd_settings().money()


def test_a_format_2_file_with_a_field_of_format_3_is_refused():
    old = format_2(crowd_settings())
    old["review"]["email_subject"] = "crafted"
    with pytest.raises(SettingsError, match="format 2 has no field review.email_subject"):
        CrowdSettings.from_stored(old)


@pytest.mark.parametrize("version", [1, 5, None, "3", "4"])
def test_other_formats_are_refused(version):
    with pytest.raises(SettingsError, match="format"):
        CrowdSettings.from_stored({**crowd_settings().to_stored(), "format": version})


def test_a_stored_subject_with_a_line_break_is_refused():
    stored = crowd_settings().to_stored()
    stored["review"]["email_subject"] = "a\r\nBcc: x"
    with pytest.raises(SettingsError, match="'email_subject'"):
        CrowdSettings.from_stored(stored)


@pytest.mark.parametrize("seconds", [-1, 3601, float("nan"), float("inf")])
def test_a_minimum_work_time_out_of_range_is_refused(seconds):
    with pytest.raises(SettingsError, match="'min_work_seconds'"):
        crowd_settings(min_work_seconds=seconds)


def test_a_format_2_batch_has_no_minimum_work_time():
    assert CrowdSettings.from_stored(format_2(crowd_settings())).review.min_work_seconds == 0


def test_a_format_2_batch_keeps_fixed_overlap():
    read = CrowdSettings.from_stored(format_2(crowd_settings(assignments_per_hit=4)))
    assert (read.posting.assignments, read.posting.max_assignments) == (4, 4)
    assert not read.posting.overlap().adaptive


def test_adaptive_overlap_settings():
    settings = crowd_settings(assignments_per_hit=3, max_assignments_per_hit=7)
    assert settings.posting.overlap().adaptive and settings.money()["max_assignments"] == 7
    assert crowd_settings(max_assignments_per_hit=0).posting.max_assignments == 3  # fixed


@pytest.mark.parametrize(
    ("start", "most", "confidence", "message"),
    [(3, 10, 0.95, "fewer than 10"), (5, 4, 0.95, "at least"), (3, 5, 0.3, "confidence")],
)
def test_overlap_params_that_cannot_work_are_refused_naming_them(start, most, confidence, message):
    with pytest.raises(SettingsError, match=f"{message}.*max_assignments_per_hit"):
        crowd_settings(
            assignments_per_hit=start, max_assignments_per_hit=most, confidence_target=confidence
        )
