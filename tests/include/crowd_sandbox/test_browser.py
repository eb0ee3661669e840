"""The worker site in a real headless Chromium: pick a worker, open a HIT, accept, answer, submit.

Chromium is Debian's ``chromium`` package: the ``chromium`` fixture installs it with apt-get when
``/usr/bin/chromium`` is missing (root only, as on CI). Playwright (pinned in
requirements-test.txt) drives that binary; it downloads no browser of its own. Screenshots of
every step go to ``.artifacts/browser/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from testsupport.sandbox_process import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / ".artifacts" / "browser"
WORKER = "A3BROWSERWORKER"
ANSWERS_NS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)

# A HIT as requesters write them: MTurk's form, the assignmentId copied from the URL, the submit
# button disabled in preview, two radio groups and a free-text field.
PHOTO_PAIR_HIT = """<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd">
<HTMLContent><![CDATA[<!DOCTYPE html>
<html><head><meta charset="utf-8">
<style>
  body { font-family: "DejaVu Sans", sans-serif; margin: 24px; color: #222; }
  .pair { display: flex; gap: 16px; margin-bottom: 18px; }
  .photo { width: 220px; height: 140px; border-radius: 6px; display: flex; align-items: center;
           justify-content: center; color: #fff; font-weight: bold; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin: 0 0 14px; padding: 10px 14px; }
  legend { font-weight: bold; }
  label { margin-right: 18px; }
  #notes { width: 420px; padding: 6px; }
  #submitButton { margin-top: 8px; padding: 8px 20px; font-size: 15px; }
</style></head>
<body>
<div class="pair">
  <div class="photo" style="background:#4a7bb7">query: tower_01.jpg</div>
  <div class="photo" style="background:#6b9b5e">match: frame_0420.jpg</div>
</div>
<form name="mturk_form" method="post" id="mturk_form"
      action="https://www.mturk.com/mturk/externalSubmit">
  <input type="hidden" value="" name="assignmentId" id="assignmentId">
  <fieldset><legend>Do both photos show the same place?</legend>
    <label><input type="radio" name="same_place" value="yes" required> Yes</label>
    <label><input type="radio" name="same_place" value="no"> No</label>
    <label><input type="radio" name="same_place" value="unsure"> Can't tell</label>
  </fieldset>
  <fieldset><legend>How sure are you?</legend>
    <label><input type="radio" name="confidence" value="low" required> Not very</label>
    <label><input type="radio" name="confidence" value="medium"> Fairly</label>
    <label><input type="radio" name="confidence" value="high"> Very</label>
  </fieldset>
  <p><label for="notes">Anything we should know?</label><br>
     <input type="text" name="notes" id="notes"></p>
  <input type="submit" id="submitButton" value="Submit">
  <p id="preview-note" hidden>Accept the HIT to submit your answers.</p>
</form>
<script>
  var params = new URLSearchParams(location.search);
  var assignmentId = params.get("assignmentId");
  document.getElementById("assignmentId").value = assignmentId;
  if (assignmentId === "ASSIGNMENT_ID_NOT_AVAILABLE") {
    document.getElementById("submitButton").disabled = true;
    document.getElementById("preview-note").hidden = false;
  }
</script>
</body></html>]]></HTMLContent>
<FrameHeight>460</FrameHeight>
</HTMLQuestion>"""


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def answers(xml: str) -> dict[str, str | None]:
    root = ET.fromstring(xml)
    return {
        a.find(ANSWERS_NS + "QuestionIdentifier").text: a.find(ANSWERS_NS + "FreeText").text
        for a in root.findall(ANSWERS_NS + "Answer")
    }


def test_a_person_accepts_answers_and_submits_a_hit_in_chromium(
    sandbox, mturk, page, artifacts, foreign_requests
):
    hit_id = mturk.create_hit(
        Title="Do these two photos show the same place?",
        Description="Look at the query photo and the candidate match, then answer two questions.",
        Keywords="images, similarity, landmarks",
        Reward="0.08",
        MaxAssignments=3,
        LifetimeInSeconds=3 * 24 * 3600,
        AssignmentDurationInSeconds=900,
        Question=PHOTO_PAIR_HIT,
    )["HIT"]["HITId"]

    # Pick a worker id on the start page.
    page.goto(sandbox.url + "/")
    expect(page.locator("#choose-worker h1")).to_have_text("Who is working?")
    shot(page, artifacts, "01-choose-worker")
    page.fill("#workerId", WORKER.lower())
    page.click("#pick-worker button[type=submit]")
    expect(page.locator("#current-worker")).to_have_text(WORKER)
    expect(page.locator(f'tr[data-hit-id="{hit_id}"]')).to_contain_text("$0.08")
    shot(page, artifacts, "02-hit-list")

    # Preview: the question is framed with ASSIGNMENT_ID_NOT_AVAILABLE, its submit disabled.
    page.click("text=Do these two photos show the same place?")
    expect(page.locator("#mode")).to_have_text("Preview")
    question = page.frame_locator("#question")
    expect(question.locator("#submitButton")).to_be_disabled()
    expect(question.locator("#assignmentId")).to_have_value("ASSIGNMENT_ID_NOT_AVAILABLE")
    shot(page, artifacts, "03-preview")

    # Accept: the work page frames the question with the real assignment id.
    page.click("#accept-button")
    expect(page.locator("#mode")).to_have_text("Accepted")
    assignment_id = page.locator("#assignment-id").inner_text()
    assert f"assignmentId={assignment_id}" in page.url
    expect(question.locator("#assignmentId")).to_have_value(assignment_id)
    expect(question.locator("#submitButton")).to_be_enabled()

    question.locator("input[name=same_place][value=yes]").check()
    question.locator("input[name=confidence][value=medium]").check()
    question.locator("#notes").fill("Same clock tower, seen from the river — ünïcode too")
    shot(page, artifacts, "04-answering")
    question.locator("#submitButton").click()

    # Submitting leaves the HIT, as on MTurk: the window goes back to the list, which confirms.
    page.wait_for_url(f"{sandbox.url}/?workerId={WORKER}&submitted={assignment_id}")
    expect(page.locator("#just-submitted")).to_contain_text(assignment_id)
    expect(page.locator("#done")).to_contain_text("Do these two photos show the same place?")
    expect(page.locator(f'#hits tr[data-hit-id="{hit_id}"]')).to_have_count(0)
    shot(page, artifacts, "05-submitted")

    # The requester sees the assignment with MTurk's answer XML.
    listed = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert len(listed) == 1
    assert listed[0]["AssignmentId"] == assignment_id
    assert listed[0]["WorkerId"] == WORKER
    assert listed[0]["AssignmentStatus"] == "Submitted"
    assert answers(listed[0]["Answer"]) == {
        "same_place": "yes",
        "confidence": "medium",
        "notes": "Same clock tower, seen from the river — ünïcode too",
    }

    # The requester approves, pays a bonus and writes; the outbox shows it.
    mturk.approve_assignment(AssignmentId=assignment_id, RequesterFeedback="Thanks!")
    mturk.send_bonus(
        WorkerId=WORKER,
        BonusAmount="0.50",
        AssignmentId=assignment_id,
        Reason="Your answer matched the expert's: thank you for the careful look.",
        UniqueRequestToken=f"bonus-{assignment_id}",
    )
    mturk.notify_workers(
        Subject="More landmark pairs next week",
        MessageText="Hi!\n\nWe are posting 500 more photo pairs on Monday.\n\nThe team",
        WorkerIds=[WORKER],
    )
    page.click("nav >> text=Outbox")
    box = page.locator(f"#worker-{WORKER}")
    expect(box).to_contain_text("More landmark pairs next week")
    expect(box).to_contain_text("$0.50")
    expect(box).to_contain_text("matched the expert's")
    shot(page, artifacts, "06-outbox")

    assert foreign_requests == []


def test_submitting_a_preview_in_chromium_is_refused(
    sandbox, mturk, page, artifacts, foreign_requests
):
    # A HIT whose button works in preview too: the sandbox refuses it, as MTurk does.
    question = PHOTO_PAIR_HIT.replace(
        'document.getElementById("submitButton").disabled = true;', ""
    )
    assert question != PHOTO_PAIR_HIT
    hit_id = mturk.create_hit(
        Title="Preview submit",
        Description="d",
        Reward="0.01",
        LifetimeInSeconds=600,
        AssignmentDurationInSeconds=60,
        Question=question,
    )["HIT"]["HITId"]
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={WORKER}")
    frame = page.frame_locator("#question")
    frame.locator("input[name=same_place][value=no]").check()
    frame.locator("input[name=confidence][value=low]").check()
    frame.locator("#submitButton").click()
    expect(frame.locator("#reason")).to_contain_text("accept the HIT before submitting")
    shot(page, artifacts, "07-preview-submit-refused")
    assert mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"] == []
    assert foreign_requests == []
