"""Crowd HTML Elements offline: the local ``crowd-html-elements.js``, the ``taskAnswers`` JSON a
``<crowd-form>`` submits, simulated workers answering crowd-form HITs, and a person doing one in
headless Chromium.

Sources for what MTurk stores (the JSON shapes are asserted in the tests that cite them):

- MTurk Requester guide, "Crowd HTML Elements"
  (https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMechanicalTurkRequester/mturk-hits-defining-questions-html-crowd-html-elements.html):
  ``<crowd-form>`` replaces the form, directs where the response is submitted, includes the
  assignmentId and adds a Submit button if none is present; its example wraps a plain
  ``<textarea name="weather">``.
- SageMaker Ground Truth / MTurk "Crowd HTML Elements Reference", one page per element
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-<element>.html), each with an
  "Output" section: crowd-radio-group ``[{"btn1": {"yes": true}, "btn2": {"no": false}}]``;
  crowd-checkbox ``[{"myformbit": {"Green": false, "Red": true, "Yellow": false}}]`` (boxes
  sharing a name share one object; ``value`` defaults to ``"on"``); crowd-text-area
  ``[{"textInput1": "This is the text; the text that\\nmakes the crowd go wild."}]``;
  crowd-input: the name is the property, the text its value; crowd-classifier and
  crowd-image-classifier ``[{"<name>": {"label": "<value>"}}]``; crowd-form: one object in a list.
- MTurk's QuestionFormAnswers: the form's fields become Answers; a crowd-form's are one Answer,
  QuestionIdentifier ``taskAnswers``, FreeText the JSON (the shape Ground Truth custom templates
  and the MTurk requester templates' result parsers read; e.g. oTree's MTurk integration,
  ``get_completion_code``, reads ``json.loads(<taskAnswers FreeText>)[0]["completion_code"]``).
- Native inputs inside a crowd-form (the issue's acceptance HIT: plain radio inputs): no AWS page
  states their output. The sandbox gives them the crowd-checkbox / crowd-radio-button shape,
  ``{name: {value: checked}}`` for every input of the name, and text-like inputs a string, as
  the Ground Truth custom-template example with a hidden ``<input name="annotations">`` inside
  ``<crowd-form>`` reads it back (a string).
"""

from __future__ import annotations

import json
import random
import re
import time
import xml.etree.ElementTree as ET

import pytest

from include.crowd_sandbox import crowd_elements
from include.crowd_sandbox.crowd_elements import (
    Entry,
    categories,
    crowd_page,
    rewrite_script_urls,
    task_answers,
)
from include.crowd_sandbox.simulated_worker.answering import answer_form
from include.crowd_sandbox.simulated_worker.profiles import PROFILES
from testsupport.sandbox_process import PROJECT_ROOT, http

ANSWERS_NS = {
    "a": "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd"
}
WORKER = "A3CROWDFORMPERSON"

# The acceptance HIT: <crowd-form> around PLAIN radio inputs, as the AWS requester
# templates and published notebooks write them.
PLAIN_RADIO_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<crowd-form>
  <p>Is this review positive or negative?</p>
  <blockquote>The battery lasts two days and the screen is lovely.</blockquote>
  <label><input type="radio" name="sentiment" value="positive" required> Positive</label>
  <label><input type="radio" name="sentiment" value="negative"> Negative</label>
  <label><input type="radio" name="sentiment" value="neutral"> Neutral</label>
</crowd-form>
</body></html>"""

# Every element the sandbox implements, with native controls mixed in.
ALL_ELEMENTS_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<script src="https://assets.crowd.aws/crowd-html-elements.js?v=2"></script></head><body>
<crowd-alert type="info" dismissible>Read the instructions first.</crowd-alert>
<crowd-form>
  <crowd-instructions link-text="View instructions" link-type="button">
    <short-summary><p>Label the review.</p></short-summary>
    <detailed-instructions><p>Pick what the writer feels.</p></detailed-instructions>
    <positive-example><p>"Great!" is positive.</p></positive-example>
    <negative-example><p>"Meh" is not positive.</p></negative-example>
  </crowd-instructions>
  <input type="hidden" name="itemId" value="review-0042">
  <p>Native radios:</p>
  <label><input type="radio" name="x" value="a"> A</label>
  <label><input type="radio" name="x" value="b"> B</label>
  <label><input type="radio" name="x" value="2"> Two</label>
  <label><input type="radio" name="x" value="1"> One</label>
  <crowd-radio-group>
    <crowd-radio-button name="positive" value="positive">Positive</crowd-radio-button>
    <crowd-radio-button name="negative" value="negative">Negative</crowd-radio-button>
  </crowd-radio-group>
  <crowd-checkbox name="colours" value="Red">Red</crowd-checkbox>
  <crowd-checkbox name="colours" value="Green">Green</crowd-checkbox>
  <crowd-checkbox name="agree">I agree</crowd-checkbox>
  <crowd-input name="comment" label="Comment"></crowd-input>
  <crowd-input name="left_empty" label="Optional"></crowd-input>
  <crowd-text-area name="notes" rows="3"></crowd-text-area>
  <crowd-classifier name="tweetFeeling" categories="['positive', 'negative', 'neutral']"
                    header="Which term best describes this tweet?">
    <classification-target>My favourite team won today!</classification-target>
    <full-instructions header="Instructions">Pick one.</full-instructions>
    <short-instructions>Pick the feeling.</short-instructions>
  </crowd-classifier>
  <crowd-image-classifier name="animal" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="
                          categories='["Cat", "Dog"]' header="What is it?">
  </crowd-image-classifier>
  <label><input type="checkbox" name="native_box" value="yes"> Native box</label>
  <textarea name="native_text"></textarea>
  <select name="native_select"><option value="s1">one</option><option value="s2">two</option>
  </select>
  <crowd-button id="other-button">Does nothing</crowd-button>
</crowd-form>
</body></html>"""

ODD_TEXT = 'He said "hi" \\ <b>bold</b> </script> line\nbreak\ttab ünïcödé ✓ \u2028 \x01 {"k": [1]}'
# What a one-line <input> holds (a browser drops line breaks from its value).
ONE_LINE = ODD_TEXT.replace("\n", " ").replace("\x01", "")


ODD_PAGE = (
    '<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>'
    '<crowd-form><div><crowd-classifier name="c" categories="none"></div>'
    '<crowd-checkbox name="__proto__" value="constructor">x</crowd-checkbox>'
    '<crowd-input name="toString" value="kept"><input name="inside" value="no">'
    "</crowd-input><input type=radio name=r><input type=radio name=r disabled value=d>"
)


def html_question(page: str, frame_height: int = 700) -> str:
    return (
        '<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/'
        '2011-11-11/HTMLQuestion.xsd">'
        f"<HTMLContent><![CDATA[{page}]]></HTMLContent>"
        f"<FrameHeight>{frame_height}</FrameHeight></HTMLQuestion>"
    )


def answers_of(xml: str) -> list[tuple[str, str | None]]:
    root = ET.fromstring(xml)
    return [
        (
            a.findtext("a:QuestionIdentifier", namespaces=ANSWERS_NS),
            a.findtext("a:FreeText", namespaces=ANSWERS_NS),
        )
        for a in root.findall("a:Answer", ANSWERS_NS)
    ]


def create_hit(mturk, page: str, assignments: int = 1, title: str = "Crowd form HIT") -> str:
    return mturk.create_hit(
        Title=title,
        Description="A HIT written with Crowd HTML Elements",
        Reward="0.05",
        MaxAssignments=assignments,
        LifetimeInSeconds=600,
        AssignmentDurationInSeconds=300,
        Question=html_question(page),
    )["HIT"]["HITId"]


def filled_for(page, **choices) -> list[tuple[str, str]]:
    """The ``answer_form``-style fields of a CrowdPage for choices given per field name:
    ``name=value`` (a radio's value, a text, a classifier's label) or ``name=[values]``
    (check boxes), ``positive=True`` (a crowd-radio-button chosen by its name)."""
    filled = []
    for f in page.fields:
        if f.name not in choices:
            continue
        wanted = choices[f.name]
        if f.choice is not None:
            if wanted is True:
                filled.append((f.key, f.choice))
        elif isinstance(wanted, list):
            if f.value in wanted:
                filled.append((f.key, f.value))
        elif f.kind in ("radio",):
            if f.value == wanted and (f.key, wanted) not in filled:
                filled.append((f.key, wanted))
        elif (f.key, wanted) not in filled:
            filled.append((f.key, wanted))
    return filled


# --- the rewrite and the script ---------------------------------------------------------------


@pytest.mark.parametrize(
    "loader",
    [
        "https://assets.crowd.aws/crowd-html-elements.js",
        "http://assets.crowd.aws/crowd-html-elements.js",
        "//assets.crowd.aws/crowd-html-elements.js",
        "https://assets.crowd.aws/crowd-html-elements.js?v=3&x=1",
        "https://ASSETS.CROWD.AWS/crowd-html-elements-without-ace.js",
        "https://assets.crowd.aws/crowd-html-elements.min.js",
    ],
)
def test_the_remote_loader_becomes_the_sandbox_script(loader):
    page = f'<script src="{loader}"></script><crowd-form></crowd-form>'
    rewritten = rewrite_script_urls(page, "http://127.0.0.1:8911/")
    assert rewritten == (
        '<script src="http://127.0.0.1:8911/static/crowd-html-elements.js"></script>'
        "<crowd-form></crowd-form>"
    )


def test_nothing_else_in_the_page_is_rewritten():
    page = '<img src="https://assets.crowd.aws/images/x.png"><p>crowd-html-elements.js</p>'
    assert rewrite_script_urls(page, "http://127.0.0.1:1") == page


def test_the_site_serves_the_script_and_points_crowd_pages_at_it(sandbox, mturk):
    status, headers, body = sandbox.page("/static/crowd-html-elements.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert body.encode() == crowd_elements.script()
    assert 'customElements.define("crowd-form"' in body
    hit_id = create_hit(mturk, PLAIN_RADIO_PAGE)
    status, _, question = sandbox.page(f"/hit/{hit_id}/question?assignmentId=X&hitId={hit_id}")
    assert status == 200
    assert "assets.crowd.aws" not in question
    assert f'<script src="{sandbox.url}/static/crowd-html-elements.js"></script>' in question
    assert http(f"{sandbox.url}/static/crowd-html-elements.js", {"a": "b"})[0] == 405


# --- the encoder -------------------------------------------------------------------------------


def test_radio_group_output_as_documented():
    """crowd-radio-group reference, "Example Sample of Element Output":
    ``[{"btn1": {"yes": true}, "btn2": {"no": false}}]``."""
    entries = [Entry("toggle", "btn1", "yes", True), Entry("toggle", "btn2", "no", False)]
    assert json.loads(task_answers(entries)) == [{"btn1": {"yes": True}, "btn2": {"no": False}}]


def test_checkbox_output_as_documented():
    """crowd-checkbox reference, "Sample Element Outputs": boxes sharing a name are properties
    of one object; different names give one object each; ``value`` defaults to ``"on"``."""
    shared = [
        Entry("toggle", "myformbit", "Red", True),
        Entry("toggle", "myformbit", "Yellow", False),
        Entry("toggle", "myformbit", "Green", False),
    ]
    assert json.loads(task_answers(shared)) == [
        {"myformbit": {"Green": False, "Red": True, "Yellow": False}}
    ]
    separate = [
        Entry("toggle", "Stop", "Red", True),
        Entry("toggle", "Slow", "Yellow", False),
        Entry("toggle", "Go", "Green", False),
    ]
    assert json.loads(task_answers(separate)) == [
        {"Go": {"Green": False}, "Slow": {"Yellow": False}, "Stop": {"Red": True}}
    ]
    page = crowd_page(
        '<crowd-form><crowd-checkbox name="agree"></crowd-checkbox></crowd-form>', "http://h/"
    )
    assert page is not None
    assert page.submission(filled_for(page, agree=["on"])) == [
        ("taskAnswers", '[{"agree":{"on":true}}]')
    ]


def test_text_and_classifier_output_as_documented():
    """crowd-text-area reference: ``[{"textInput1": "This is the text; the text that\\nmakes
    the crowd go wild."}]``; crowd-input: name -> entered text; crowd-classifier /
    crowd-image-classifier: ``[{"<name>": {"label": "<value>"}}]``."""
    entries = [
        Entry("text", "textInput1", "This is the text; the text that\nmakes the crowd go wild."),
        Entry("text", "tag1", "blue"),
        Entry("text", "empty", ""),
        Entry("label", "tweetFeeling", "positive"),
        Entry("label", "unanswered", ""),
    ]
    assert task_answers(entries) == (
        '[{"textInput1":"This is the text; the text that\\nmakes the crowd go wild.",'
        '"tag1":"blue","tweetFeeling":{"label":"positive"}}]'
    )


def test_keys_are_ordered_as_javascript_orders_them():
    """``JSON.stringify`` writes array-index keys first, ascending: so does the encoder, so the
    browser's and the simulated workers' JSON are the same bytes."""
    entries = [
        Entry("toggle", "x", "b", False),
        Entry("toggle", "x", "2", True),
        Entry("toggle", "x", "10", False),
        Entry("toggle", "x", "01", False),
        Entry("text", "7", "seven"),
    ]
    assert task_answers(entries) == (
        '[{"7":"seven","x":{"2":true,"10":false,"b":false,"01":false}}]'
    )


def test_odd_characters_round_trip():
    text = ODD_TEXT + "\U0001f600"
    out = task_answers(
        [Entry("text", 'we"ird\\name', text), Entry("toggle", "__proto__", "v", True)]
    )
    assert json.loads(out) == [{'we"ird\\name': text, "__proto__": {"v": True}}]


def test_categories_attribute_forms():
    assert categories("['positive','negative', 'neutral']") == ["positive", "negative", "neutral"]
    assert categories('["Cat", "Dog"]') == ["Cat", "Dog"]
    assert categories("[\"it's\", 'b']") == ["it's", "b"]
    assert categories(None) == []


# --- reading a crowd-form page as a simulated worker does --------------------------------------


def test_plain_radios_in_a_crowd_form_give_name_value_booleans():
    """Native inputs inside a crowd-form are serialised like crowd-checkbox/-radio-button:
    ``{name: {value: checked}}`` for every input of the name (see the module docstring)."""
    page = crowd_page(PLAIN_RADIO_PAGE, "http://127.0.0.1:1/hit/H/question?assignmentId=A")
    assert page is not None
    assert [q.name for q in page.form.questions] == ["sentiment"]
    assert page.submission([("sentiment", "negative")]) == [
        ("taskAnswers", '[{"sentiment":{"positive":false,"negative":true,"neutral":false}}]')
    ]


def test_odd_crowd_pages_still_give_one_answer():
    """No fields, a classifier without categories, unclosed tags, names JavaScript objects
    treat specially: still one ``taskAnswers`` of valid JSON."""
    empty = crowd_page("<crowd-form><p>Just press Submit</crowd-form>", "http://h/")
    assert empty is not None
    answer = answer_form(empty.form, PROFILES["diligent"], random.Random(1), lambda url: None)
    assert empty.submission(answer.fields) == [("taskAnswers", "[{}]")]
    odd = crowd_page(ODD_PAGE, "http://h/")
    assert odd is not None
    answer = answer_form(odd.form, PROFILES["careless"], random.Random(2), lambda url: None)
    ((_, text),) = odd.submission(answer.fields)
    assert json.loads(text) == [
        {"__proto__": {"constructor": True}, "toString": "kept", "r": {"on": True}}
    ]


def test_a_page_without_crowd_form_is_not_a_crowd_page():
    assert crowd_page("<form><input name=a></form>", "http://h/") is None


def test_every_element_gets_its_shape():
    page = crowd_page(ALL_ELEMENTS_PAGE, "http://127.0.0.1:1/q")
    assert page is not None
    filled = filled_for(
        page,
        x="b",
        negative=True,
        colours=["Red", "Green"],
        comment="fine",
        notes="two\nlines",
        tweetFeeling="neutral",
        animal="Dog",
        native_text="native",
        native_select="s2",
    )
    assert json.loads(page.submission(filled)[0][1]) == [
        {
            "itemId": "review-0042",
            "x": {"1": False, "2": False, "a": False, "b": True},
            "positive": {"positive": False},
            "negative": {"negative": True},
            "colours": {"Red": True, "Green": True},
            "agree": {"on": False},
            "comment": "fine",
            "notes": "two\nlines",
            "tweetFeeling": {"label": "neutral"},
            "animal": {"label": "Dog"},
            "native_box": {"yes": False},
            "native_text": "native",
            "native_select": "s2",
        }
    ]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_simulated_answers_fill_every_crowd_field(profile):
    page = crowd_page(ALL_ELEMENTS_PAGE, "http://127.0.0.1:1/q")
    assert page is not None
    answer = answer_form(page.form, PROFILES[profile], random.Random(3), lambda url: None)
    ((name, value),) = page.submission(answer.fields)
    assert name == "taskAnswers"
    (got,) = json.loads(value)
    assert sum(got["x"].values()) == 1
    assert [got["positive"]["positive"], got["negative"]["negative"]].count(True) == 1
    assert got["tweetFeeling"]["label"] in ("positive", "negative", "neutral")
    assert got["animal"]["label"] in ("Cat", "Dog")
    assert any(got["colours"].values())
    assert got["comment"] and got["notes"] and got["native_text"]
    assert got["native_select"] in ("s1", "s2")


# --- through boto3: created, answered by simulated workers, listed --------------------------------


def wait_for_submitted(mturk, hit_id: str, count: int, running) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = mturk.list_assignments_for_hit(HITId=hit_id, AssignmentStatuses=["Submitted"])[
            "Assignments"
        ]
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError("no submissions; sandbox log:\n" + "".join(running.log))


def test_simulated_workers_answer_a_crowd_form_hit_with_one_task_answers(sandbox_factory):
    """The acceptance HIT through boto3: ``list_assignments_for_hit`` returns exactly one
    ``taskAnswers`` answer per assignment, whose FreeText parses to MTurk's crowd-form shape."""
    running = sandbox_factory(
        "--workers", "diligent:2,spammer:1", "--seconds-per-assignment", "0.1", "--worker-seed", "4"
    )
    mturk = running.client()
    hit_id = create_hit(mturk, PLAIN_RADIO_PAGE, assignments=3)
    found = wait_for_submitted(mturk, hit_id, 3, running)
    assert {a["WorkerId"] for a in found} == {"ADILIGENT01", "ADILIGENT02", "ASPAMMER01"}
    for assignment in found:
        ((identifier, text),) = answers_of(assignment["Answer"])
        assert identifier == "taskAnswers"
        (answer,) = json.loads(text)
        assert list(answer) == ["sentiment"]
        assert list(answer["sentiment"]) == ["positive", "negative", "neutral"]
        assert sorted(answer["sentiment"].values()) == [False, False, True]


# --- hostile input --------------------------------------------------------------------------------


def test_malformed_or_huge_task_answers_break_nothing(sandbox, mturk):
    """MTurk's externalSubmit stores what is posted (the crowd-form's JSON is built in the
    browser): a malformed ``taskAnswers`` is stored as it came; one past the answer limit is a
    413 that stores nothing, and the worker can still submit."""
    hit_id = create_hit(mturk, PLAIN_RADIO_PAGE, assignments=2)
    first = sandbox.accept(hit_id, "A1MALFORMED")
    assert sandbox.submit(first, {"taskAnswers": '[{"sentiment": {"posi'}) == 200
    second = sandbox.accept(hit_id, "A1HUGEANSWER")
    assert sandbox.submit(second, {"taskAnswers": "[" + '"x",' * 200_000 + '"x"]'}) == 413
    assert (
        sandbox.submit(second, {"taskAnswers": task_answers([Entry("text", "k", ODD_TEXT)])}) == 200
    )
    listed = {
        a["AssignmentId"]: answers_of(a["Answer"])
        for a in mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    }
    assert listed[first] == [("taskAnswers", '[{"sentiment": {"posi')]
    ((identifier, text),) = listed[second]
    assert identifier == "taskAnswers"
    # JSON escapes control characters (\u0001), so even those survive the answer XML.
    assert json.loads(text) == [{"k": ODD_TEXT}]


# --- a person in headless Chromium ---------------------------------------------------------------


def test_a_person_submits_a_crowd_form_hit_in_chromium(sandbox, mturk, page, foreign_requests):
    from playwright.sync_api import expect

    hit_id = create_hit(mturk, PLAIN_RADIO_PAGE, title="Review sentiment (crowd-form)")
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={WORKER}")
    frame = page.frame_locator("#question")
    # Preview: crowd-form's own Submit button is there, disabled.
    submit = frame.locator("crowd-form crowd-button[form-action=submit] button")
    expect(submit).to_have_text("Submit")
    expect(submit).to_be_disabled()

    page.click("#accept-button")
    expect(page.locator("#mode")).to_have_text("Accepted")
    assignment_id = page.locator("#assignment-id").inner_text()
    expect(submit).to_be_enabled()
    submit.click()  # nothing chosen: the required radio stops the submit
    expect(frame.locator(".crowd-message")).to_contain_text("required")
    frame.locator("input[name=sentiment][value=negative]").check()
    submit.click()
    page.wait_for_url(f"{sandbox.url}/?workerId={WORKER}&submitted={assignment_id}")

    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert assignment["AssignmentId"] == assignment_id
    assert answers_of(assignment["Answer"]) == [
        ("taskAnswers", '[{"sentiment":{"positive":false,"negative":true,"neutral":false}}]')
    ]
    assert foreign_requests == []


def test_the_script_and_the_simulated_workers_send_the_same_json(
    sandbox, mturk, page, foreign_requests
):
    """Every implemented element, the same choices made in Chromium and given to the Python
    encoder: the same ``taskAnswers`` bytes, and that is what is stored."""
    from playwright.sync_api import expect

    hit_id = create_hit(mturk, ALL_ELEMENTS_PAGE, title="All crowd elements")
    assignment_id = sandbox.accept(hit_id, WORKER)
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={WORKER}&assignmentId={assignment_id}")
    frame = page.frame_locator("#question")
    expect(frame.locator("crowd-form crowd-button[form-action=submit] button")).to_be_enabled()
    expect(frame.locator("crowd-alert .crowd-dismiss")).to_have_count(1)
    frame.locator("crowd-instructions summary").click()
    expect(frame.locator("crowd-instructions")).to_contain_text("Pick what the writer feels.")

    frame.locator("input[name=x][value=b]").check()
    frame.locator("crowd-radio-button[name=negative] input").check()
    frame.locator("crowd-checkbox[value=Red] input").check()
    frame.locator("crowd-checkbox[value=Green] input").check()
    frame.locator("crowd-input[name=comment] input").fill(ONE_LINE)
    frame.locator("crowd-text-area[name=notes] textarea").fill(ODD_TEXT.replace("\x01", ""))
    shots = PROJECT_ROOT / ".artifacts" / "browser"  # for a person to look at, as test_browser
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "crowd-elements.png"), full_page=True)
    frame.locator("crowd-classifier label", has_text="neutral").click()
    frame.locator("crowd-image-classifier label", has_text="Dog").click()
    frame.locator("textarea[name=native_text]").fill("native")
    frame.locator("select[name=native_select]").select_option("s2")
    frame.locator("#other-button button").click()  # a plain crowd-button does not submit
    in_browser = frame.locator("crowd-form").evaluate("form => form.taskAnswers()")

    crowd = crowd_page(ALL_ELEMENTS_PAGE, "http://127.0.0.1:1/q")
    assert crowd is not None
    filled = filled_for(
        crowd,
        x="b",
        negative=True,
        colours=["Red", "Green"],
        comment=ONE_LINE,
        notes=ODD_TEXT.replace("\x01", ""),
        tweetFeeling="neutral",
        animal="Dog",
        native_text="native",
        native_select="s2",
    )
    ((_, in_python),) = crowd.submission(filled)
    assert in_browser == in_python
    assert re.search(r'"x":\{"1":false,"2":false,"a":false,"b":true\}', in_browser)

    frame.locator("crowd-button[form-action=submit] button").click()
    page.wait_for_url(f"{sandbox.url}/?workerId={WORKER}&submitted={assignment_id}")
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert answers_of(assignment["Answer"]) == [("taskAnswers", in_python)]
    assert foreign_requests == []


def test_odd_names_give_the_same_json_in_chromium_and_python(sandbox, mturk, page):
    hit_id = create_hit(mturk, ODD_PAGE, title="Odd names")
    assignment_id = sandbox.accept(hit_id, WORKER)
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={WORKER}&assignmentId={assignment_id}")
    frame = page.frame_locator("#question")
    frame.locator("crowd-checkbox input").check()
    frame.locator("input[name=r]:not([disabled])").check()
    in_browser = frame.locator("crowd-form").evaluate("form => form.taskAnswers()")
    odd = crowd_page(ODD_PAGE, "http://h/")
    assert odd is not None
    ((_, in_python),) = odd.submission(filled_for(odd, __proto__=["constructor"], r="on"))
    assert (
        in_browser
        == in_python
        == '[{"__proto__":{"constructor":true},"toString":"kept","r":{"on":true}}]'
    )


# --- review: hostile turkSubmitTo ----------------------------------------------------------------


@pytest.mark.parametrize(
    "submit_to",
    ["javascript:document.title='HIJACKED'//", "https://collector.example", "data:text/html,x"],
)
def test_a_crafted_turk_submit_to_neither_runs_script_nor_leaves_the_sandbox(
    sandbox, mturk, page, foreign_requests, submit_to
):
    """``turkSubmitTo`` is read from the page's URL, which anyone can put in a link: the script
    posts only to this sandbox (a ``javascript:`` value used to become the form's action and
    run on the sandbox's origin; an off-host one took the answers away)."""
    from urllib.parse import urlencode

    hit_id = create_hit(mturk, PLAIN_RADIO_PAGE)
    assignment_id = sandbox.accept(hit_id, WORKER)
    query = urlencode(
        {
            "assignmentId": assignment_id,
            "hitId": hit_id,
            "workerId": WORKER,
            "turkSubmitTo": submit_to,
        }
    )
    page.goto(f"{sandbox.url}/hit/{hit_id}/question?{query}")
    page.locator("input[name=sentiment][value=positive]").check()
    page.locator("crowd-button[form-action=submit] button").click()
    page.wait_for_url(f"{sandbox.url}/mturk/externalSubmit")
    assert page.title() != "HIJACKED"
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert assignment["AssignmentStatus"] == "Submitted"
    assert answers_of(assignment["Answer"]) == [
        ("taskAnswers", '[{"sentiment":{"positive":true,"negative":false,"neutral":false}}]')
    ]
    assert foreign_requests == []


def test_the_script_rewrite_takes_the_base_url_literally():
    """The sandbox's URL is put in as it is (``re.sub`` would read ``\\1`` or ``\\g<0>`` in a
    replacement string as a group reference)."""
    page = '<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>'
    assert crowd_elements.rewrite_script_urls(page, "http://h/\\g<0>x\\1") == (
        '<script src="http://h/\\g<0>x\\1/static/crowd-html-elements.js"></script>'
    )


def test_a_readonly_textarea_sends_its_value_as_the_browser_has_it():
    """HTML (the "textarea" parsing rule): a newline right after ``<textarea>`` is dropped, so
    Chromium's value of ``<textarea>\\nhello</textarea>`` is ``hello``; a readonly one is
    sent as it is, by the script and by the simulated workers alike."""
    page = (
        '<crowd-form><textarea name="t" readonly>\nhello\n</textarea>'
        '<textarea name="u" readonly>\r\n\nsecond</textarea></crowd-form>'
    )
    crowd = crowd_page(page, "http://127.0.0.1:1/q")
    assert crowd is not None
    filled = answer_form(crowd.form, PROFILES["diligent"], random.Random(1), lambda _: None).fields
    ((_, sent),) = crowd.submission(filled)
    assert sent == '[{"t":"hello\\n","u":"\\nsecond"}]'


EARLY_SUBMIT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<crowd-form><crowd-input name="word" label="A word" required></crowd-input></crowd-form>
<script>window.early = document.querySelector("crowd-form").submit();</script>
</body></html>"""


def test_a_submit_before_the_page_loaded_is_refused_without_a_script_error(
    sandbox, mturk, page, foreign_requests
):
    """A page script that calls ``crowd-form``'s ``submit()`` while the page is still loading,
    with a required field empty, gets ``false`` (the message line is not there yet: it used to
    be a TypeError), and the form still works once the page is loaded."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    hit_id = create_hit(mturk, EARLY_SUBMIT_PAGE)
    assignment_id = sandbox.accept(hit_id, WORKER)
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={WORKER}&assignmentId={assignment_id}")
    frame = page.frame_locator("#question")
    frame.locator("crowd-input[name=word] input").fill("kept")
    assert frame.locator("crowd-form").evaluate("() => window.early") is False
    frame.locator("crowd-button[form-action=submit] button").click()
    page.wait_for_url(f"{sandbox.url}/?workerId={WORKER}&submitted={assignment_id}")
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert answers_of(assignment["Answer"]) == [("taskAnswers", '[{"word":"kept"}]')]
    assert errors == [] and foreign_requests == []


def test_radios_sharing_a_value_give_what_the_script_gives():
    """Two radios of one name with the same value: a person checks one, the script writes
    ``r.a = true`` then ``r.a = false`` for the other (Chromium gives ``{"r":{"a":false}}``, the
    reviewer's run); the simulated worker's JSON used to say ``true``."""
    page = (
        "<crowd-form><input type=radio name=r value=a>"
        "<input type=radio name=r value=a></crowd-form>"
    )
    crowd = crowd_page(page, "http://127.0.0.1:1/q")
    assert crowd is not None
    assert crowd.submission([("r", "a")]) == [("taskAnswers", '[{"r":{"a":false}}]')]
    plain = (
        "<crowd-form><input type=radio name=r value=a>"
        "<input type=radio name=r value=b></crowd-form>"
    )
    crowd = crowd_page(plain, "http://127.0.0.1:1/q")
    assert crowd is not None
    assert crowd.submission([("r", "a")]) == [("taskAnswers", '[{"r":{"a":true,"b":false}}]')]
