"""The no-bonus e-mail: it names the HITs concerned and the bonus missed, tells a worker who
passed every other check question so, stays within NotifyWorkers' limits, and in a campaign
names each failed HIT in exactly one e-mail (against moto's S3 server and the crowd sandbox)."""

from __future__ import annotations

import dataclasses

import pytest
from test_create_review import answers_for, plan

from include.crowd.create import create_hits
from include.crowd.review import no_bonus_email, review_batch
from include.crowd.settings import EMAIL_TEXT_MAX
from include.crowd_sandbox.store import Store
from include.demo.audit import audit_batch
from testsupport.crowd_plans import REVIEW, SETTINGS, render
from testsupport.platforms import mturk_platform

MESSAGE = REVIEW.no_bonus_message
SETTINGS_NAMED = dataclasses.replace(
    REVIEW, hit_title="Which picture is most similar?", email_subject="No bonus: check question"
)


def mails(crowd, worker_id: str) -> list[dict]:
    store = Store(crowd.state)
    try:
        return store.messages(worker_id)
    finally:
        store.close()


# --- the text ---------------------------------------------------------------------------------


def test_the_email_names_the_hit_its_title_and_the_bonus_missed():
    text = no_bonus_email(MESSAGE, title="Pick a picture", failed_hits=["3ABC"], bonus="$0.10")
    assert text.startswith(MESSAGE + "\n\n")
    assert 'The HIT concerned: "Pick a picture"' in text
    assert "- HIT 3ABC: bonus of $0.10 not paid" in text
    assert "other HIT" not in text


def test_a_worker_who_passed_every_other_check_is_told_so():
    one = no_bonus_email(
        MESSAGE, title="t", failed_hits=["H1"], bonus="$0.10", passed_others=1, others_paid=True
    )
    assert one.endswith(
        "You answered the check question of your other HIT in this batch correctly and were "
        "paid its bonus."
    )
    many = no_bonus_email(MESSAGE, title="t", failed_hits=["H1", "H2"], bonus="$0.10",
                          passed_others=4)  # fmt: skip
    assert "The 2 HITs concerned" in many
    assert many.endswith("your 4 other HITs in this batch correctly.")


def test_a_long_list_is_cut_to_and_n_more_within_notifyworkers_limit():
    hits = [f"3{i:029d}" for i in range(500)]
    text = no_bonus_email(MESSAGE, title="t" * 300, failed_hits=hits, bonus="$0.10",
                          passed_others=2)  # fmt: skip
    assert len(text) <= EMAIL_TEXT_MAX
    listed = [line for line in text.splitlines() if line.startswith("- HIT ")]
    more = [line for line in text.splitlines() if line.startswith("- and ")]
    assert 50 < len(listed) < 500 and len(more) == 1
    assert more[0] == f"- and {500 - len(listed)} more HITs: bonus of $0.10 each not paid"
    assert text.endswith("your 2 other HITs in this batch correctly.")  # the tail is kept
    # The title is one line of at most 128 characters.
    assert 'concerned: "' + "t" * 125 + '..."' in text


def test_a_message_too_long_for_anything_else_is_cut_not_the_limit_broken():
    text = no_bonus_email("x" * 5000, title="t", failed_hits=["H1", "H2"], bonus="$0.10")
    assert len(text) <= EMAIL_TEXT_MAX
    assert "..." in text and "- and 2 more HITs" in text


@pytest.mark.parametrize("hostile", ["H1\n\nYou won $1000", "<b>x</b>", "A" * 200])
def test_hit_ids_and_titles_that_are_not_plain_are_quoted_on_one_line(hostile):
    text = no_bonus_email(MESSAGE, title=f"a\nb\x00{hostile}", failed_hits=[hostile],
                          bonus="$0.10")  # fmt: skip
    head, listing = text.split("\n\n")[1].split("\n", 1)
    assert "\n" not in head and "\x00" not in head
    assert listing.count("\n") == 0  # one line per HIT, whatever the id holds
    assert f"- HIT {hostile}:" not in text


# --- through the review, against the sandbox --------------------------------------------------


def test_one_email_per_worker_naming_each_failed_hit_once_across_a_campaign(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    first = create_hits(platform, [plan("a.jpg"), plan("b.jpg"), plan("c.jpg")], ledger,
                        SETTINGS, render)  # fmt: skip
    a, b, c = first
    crowd.work(a.hit_id, "AMIXED", answers_for(a, gold=3, model=1))  # wrong check answer
    crowd.work(b.hit_id, "AMIXED", answers_for(b, gold=2, model=1))  # right
    crowd.work(c.hit_id, "AMIXED", answers_for(c, gold=2, model=1))  # right
    crowd.work(a.hit_id, "ABAD", answers_for(a, gold=1, model=1))
    crowd.work(b.hit_id, "ABAD", answers_for(b, gold=4, model=1))

    outcome = review_batch(platform, first, ledger, SETTINGS_NAMED)
    assert (outcome.bonuses_paid, outcome.emails_sent) == (2, 2)
    (mixed,) = mails(crowd, "AMIXED")
    assert mixed["Subject"] == "No bonus: check question"
    text = mixed["MessageText"]
    assert text.startswith(MESSAGE)
    assert 'The HIT concerned: "Which picture is most similar?"' in text
    assert f"- HIT {a.hit_id}: bonus of $0.10 not paid" in text
    assert b.hit_id not in text and c.hit_id not in text
    assert text.endswith(
        "You answered the check question of your 2 other HITs in this batch correctly and were "
        "paid their bonuses."
    )
    (bad,) = mails(crowd, "ABAD")
    assert "The 2 HITs concerned" in bad["MessageText"]
    assert "other HIT" not in bad["MessageText"]

    # Reviewing again mails nobody.
    assert review_batch(platform, first, ledger, SETTINGS_NAMED).emails_sent == 0

    # A later run of the campaign: ABAD fails a new HIT, AMIXED passes one. ABAD gets a second
    # e-mail naming only the new HIT; AMIXED gets none.
    (d,) = create_hits(platform, [plan("d.jpg")], ledger, SETTINGS, render)
    crowd.work(d.hit_id, "ABAD", answers_for(d, gold=1, model=2))
    crowd.work(d.hit_id, "AMIXED", answers_for(d, gold=2, model=2))
    plans = [*first, d]
    assert review_batch(platform, plans, ledger, SETTINGS_NAMED).emails_sent == 1
    assert len(mails(crowd, "AMIXED")) == 1
    first_bad, second_bad = mails(crowd, "ABAD")
    assert first_bad == bad
    assert f"- HIT {d.hit_id}: bonus" in second_bad["MessageText"]
    assert a.hit_id not in second_bad["MessageText"]
    assert ledger.get("emails", "ABAD.2")["hits"] == [d.hit_id]
    assert review_batch(platform, plans, ledger, SETTINGS_NAMED).emails_sent == 0

    # The sandbox's own record agrees: each failed HIT named in exactly one e-mail.
    audit = audit_batch(mturk, crowd.state, plans, {"queries": []}, no_bonus_message=MESSAGE)
    assert audit.ok, audit.problems
    assert audit.emails == 3


def test_the_audit_catches_a_failed_hit_never_named(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    (a,) = create_hits(platform, [plan("a.jpg")], ledger, SETTINGS, render)
    crowd.work(a.hit_id, "ABAD", answers_for(a, gold=1, model=1))
    review_batch(platform, [a], ledger, SETTINGS_NAMED)
    (b,) = create_hits(platform, [plan("b.jpg")], ledger, SETTINGS, render)
    crowd.work(b.hit_id, "ABAD", answers_for(b, gold=1, model=1))
    # An entry from before e-mails recorded their HITs: the worker is not mailed again ...
    ledger.put("emails", "ABAD", {"status": "sent"})
    assert review_batch(platform, [a, b], ledger, SETTINGS_NAMED).emails_sent == 0
    # ... which the audit, reading only the sandbox, reports.
    audit = audit_batch(mturk, crowd.state, [a, b], {"queries": []}, no_bonus_message=MESSAGE)
    assert not audit.ok
    assert any("for the 2 HITs" in problem for problem in audit.problems)


# --- too fast ---------------------------------------------------------------------------------


def test_a_submission_faster_than_the_minimum_is_approved_but_not_counted_paid_or_mailed(
    crowd, ledger
):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    (a,) = create_hits(platform, [plan("a.jpg")], ledger, SETTINGS, render)
    crowd.work(a.hit_id, "AQUICKRIGHT", answers_for(a, gold=2, model=1))  # within milliseconds
    crowd.work(a.hit_id, "AQUICKWRONG", answers_for(a, gold=1, model=1))
    strict = dataclasses.replace(SETTINGS_NAMED, min_work_seconds=30)

    outcome = review_batch(platform, [a], ledger, strict)
    assert (outcome.approved, outcome.bonuses_paid, outcome.emails_sent) == (2, 0, 0)
    for review in outcome.reviews:
        assert review.too_fast and not review.valid and not review.counted
        assert 0 <= review.work_seconds < 30
        assert review.problems[0] == "answered in under the minimum work time of 30 s"
    assert mturk.list_bonus_payments(HITId=a.hit_id)["BonusPayments"] == []
    assert mails(crowd, "AQUICKWRONG") == []
    # Decided once: a later review with no minimum does not pay them after all.
    assert review_batch(platform, [a], ledger, SETTINGS_NAMED).bonuses_paid == 0


def test_without_a_minimum_the_same_submissions_count(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    (a,) = create_hits(platform, [plan("a.jpg")], ledger, SETTINGS, render)
    crowd.work(a.hit_id, "AQUICKRIGHT", answers_for(a, gold=2, model=1))
    outcome = review_batch(platform, [a], ledger, SETTINGS_NAMED)
    (review,) = outcome.reviews
    assert review.counted and not review.too_fast and review.work_seconds is not None
    assert outcome.bonuses_paid == 1


@pytest.mark.parametrize(
    ("accepted", "submitted", "seconds"),
    [
        ("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:12.5+00:00", 12.5),
        ("2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+01:00", 0.0),  # same instant
        (None, "2026-01-01T00:00:12+00:00", None),
        ("2026-01-01T00:00:00+00:00", None, None),
        ("yesterday", "2026-01-01T00:00:12+00:00", None),
        ("2026-01-01T00:00:00", "2026-01-01T00:00:12+00:00", None),  # naive beside aware
        ("2026-01-01T00:00:12+00:00", "2026-01-01T00:00:00+00:00", None),  # before accepting
    ],
)
def test_work_time_is_known_only_from_two_usable_times(accepted, submitted, seconds):
    from include.crowd.platform import Submission
    from include.crowd.review import decide, work_seconds

    submission = Submission("A1", "H1", "W1", "submitted", {}, (), submitted, accepted)
    assert work_seconds(submission) == seconds
    p = plan("a.jpg")
    answered = dataclasses.replace(submission, answers=answers_for(p, gold=2, model=1))
    review = decide(p, answered, min_seconds=10)
    # Unknown times cannot prove a submission too fast: it is judged on its answers.
    assert review.too_fast == (seconds is not None and seconds < 10)
    assert review.counted == (not review.too_fast)
