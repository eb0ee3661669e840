"""QuestionForm HITs: parsed and checked as MTurk checks them, rendered as the worker's web form,
answered as ``QuestionFormAnswers`` with FreeText and SelectionIdentifier.

Sources (MTurk API reference, 2017-01-17, docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/):

- ApiReference_QuestionFormDataStructureArticle.html: the QuestionForm structure, content
  (Title, Text, List, Binary, FormattedContent), FreeTextAnswer (Constraints IsNumeric, Length,
  AnswerFormatRegex; DefaultText; NumberOfLinesSuggestion), SelectionAnswer (Min/Max
  SelectionCount, default 1; StyleSuggestion; Selections, OtherSelection);
- ApiReference_QuestionFormAnswersDataStructureArticle.html: "an Answer element for each
  question in the HIT ... for which the Worker provided an answer", with QuestionIdentifier and
  FreeText, or SelectionIdentifier (one per selection) and OtherSelectionText;
- ApiReference_SchemaLocationArticle.html: "Beginning Tuesday, December 12th 2017 the
  QuestionForm structure will no longer support the FileUploadAnswer element and the
  Application element" (2017-11-06 schema);
- ApiReference_FormattedContentXHTMLArticle.html: FormattedContent is an XHTML subset in CDATA,
  without JavaScript.
"""

from __future__ import annotations

import random
import time
import xml.etree.ElementTree as ET

import pytest
from playwright.sync_api import expect

from include.crowd_sandbox import question_form as qf
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.question_xml import MAX_ANSWER_BYTES, MAX_QUESTION_BYTES, AnswerTooLarge
from include.crowd_sandbox.simulated_worker.answering import answer_form
from include.crowd_sandbox.simulated_worker.page import understand
from include.crowd_sandbox.simulated_worker.profiles import PROFILES
from testsupport.sandbox_process import PROJECT_ROOT, http, raw

NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2017-11-06/QuestionForm.xsd"
ARTIFACTS = PROJECT_ROOT / ".artifacts" / "browser"  # screenshots, git-ignored
ANS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)


def form_xml(*parts: str) -> str:
    return f'<QuestionForm xmlns="{NS}">{"".join(parts)}</QuestionForm>'


def free(identifier: str, constraints: str = "", *, required: bool = False, extra: str = ""):
    return (
        f"<Question><QuestionIdentifier>{identifier}</QuestionIdentifier>"
        f"<IsRequired>{'true' if required else 'false'}</IsRequired>"
        f"<QuestionContent><Text>Say {identifier}</Text></QuestionContent>"
        f"<AnswerSpecification><FreeTextAnswer>"
        f"{f'<Constraints>{constraints}</Constraints>' if constraints else ''}{extra}"
        f"</FreeTextAnswer></AnswerSpecification></Question>"
    )


def select(
    identifier: str,
    choices: tuple[str, ...] = ("yes", "no", "maybe"),
    *,
    low: int | None = None,
    high: int | None = None,
    style: str = "",
    other: str | None = None,
    required: bool = True,
) -> str:
    counts = (f"<MinSelectionCount>{low}</MinSelectionCount>" if low is not None else "") + (
        f"<MaxSelectionCount>{high}</MaxSelectionCount>" if high is not None else ""
    )
    return (
        f"<Question><QuestionIdentifier>{identifier}</QuestionIdentifier>"
        f"<IsRequired>{'true' if required else 'false'}</IsRequired>"
        f"<QuestionContent><Text>Pick for {identifier}</Text></QuestionContent>"
        f"<AnswerSpecification><SelectionAnswer>{counts}"
        f"{f'<StyleSuggestion>{style}</StyleSuggestion>' if style else ''}<Selections>"
        + "".join(
            f"<Selection><SelectionIdentifier>{c}</SelectionIdentifier><Text>{c.title()}</Text>"
            "</Selection>"
            for c in choices
        )
        + (f"<OtherSelection>{other}</OtherSelection>" if other is not None else "")
        + "</Selections></SelectionAnswer></AnswerSpecification></Question>"
    )


# The example of the QuestionForm reference (a Tic-Tac-Toe board), shortened.
TIC_TAC_TOE = form_xml(
    '<Overview><Title>Game 01523, "X" to play</Title><Text>You are helping to decide the '
    "next move.</Text><Binary><MimeType><Type>image</Type><SubType>gif</SubType></MimeType>"
    "<DataURL>http://tictactoe.amazon.com/game/01523/board.gif</DataURL><AltText>The game "
    'board, with "X" to move.</AltText></Binary></Overview>',
    "<Question><QuestionIdentifier>nextmove</QuestionIdentifier><DisplayName>The Next Move"
    "</DisplayName><IsRequired>true</IsRequired><QuestionContent><Text>What are the "
    'coordinates of the best move for player "X" in this game?</Text></QuestionContent>'
    '<AnswerSpecification><FreeTextAnswer><Constraints><Length minLength="2" '
    'maxLength="2"/></Constraints><DefaultText>C1</DefaultText></FreeTextAnswer>'
    "</AnswerSpecification></Question>",
    "<Question><QuestionIdentifier>likelytowin</QuestionIdentifier><DisplayName>The Next "
    "Move</DisplayName><IsRequired>true</IsRequired><QuestionContent><Text>How likely is it "
    'that player "X" will win this game?</Text></QuestionContent><AnswerSpecification>'
    "<SelectionAnswer><StyleSuggestion>radiobutton</StyleSuggestion><Selections>"
    "<Selection><SelectionIdentifier>notlikely</SelectionIdentifier><Text>Not likely</Text>"
    "</Selection><Selection><SelectionIdentifier>unsure</SelectionIdentifier><Text>It could "
    "go either way</Text></Selection><Selection><SelectionIdentifier>likely</SelectionIdentifier>"
    "<Text>Likely</Text></Selection></Selections></SelectionAnswer></AnswerSpecification>"
    "</Question>",
)


def parsed_answers(xml: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for answer in ET.fromstring(xml).findall(f"{ANS}Answer"):
        identifier = answer.find(f"{ANS}QuestionIdentifier").text
        values: dict[str, list[str]] = {}
        for child in answer:
            name = child.tag.removeprefix(ANS)
            if name != "QuestionIdentifier":
                values.setdefault(name, []).append(child.text or "")
        out[identifier] = values
    return out


def refused(xml: str) -> str:
    with pytest.raises(RequestError) as raised:
        qf.parse(xml)
    assert raised.value.turk_error_code == "AWS.MechanicalTurk.XMLParseError"
    return raised.value.message


def answer_error(form: qf.QuestionForm, fields) -> str:
    with pytest.raises(RequestError) as raised:
        qf.answers(form, fields)
    return raised.value.message


# --- parse ----------------------------------------------------------------------------------


def test_the_reference_example_parses_into_overview_and_questions():
    form = qf.parse(TIC_TAC_TOE)
    assert [item.kind for item in form.items] == ["overview", "question", "question"]
    overview = form.items[0]
    assert [c.kind for c in overview.content] == ["title", "text", "binary"]
    assert overview.content[2].media == "image" and overview.content[2].url.endswith("board.gif")
    nextmove, likely = form.questions
    assert nextmove.identifier == "nextmove" and nextmove.required
    assert nextmove.answer.min_length == 2 and nextmove.answer.default_text == "C1"
    assert [c.identifier for c in likely.answer.choices] == ["notlikely", "unsure", "likely"]
    assert (likely.answer.min_count, likely.answer.max_count) == (1, 1)  # the defaults
    assert likely.answer.widget == "radio"


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (form_xml(free("a"), free("a")), "'a' is used by more than one Question"),
        (form_xml(select("s", ("x", "x"))), "'x' appears twice"),
        (form_xml("<Overview><Text>only</Text></Overview>"), "at least one Question"),
        ("<QuestionForm><Question>", "not well-formed"),
        (form_xml("<Bogus/>"), "only Overview and Question"),
        (form_xml(select("s", low=3, high=2)), "MinSelectionCount 3 is above"),
        (form_xml(select("s", low=4, high=5)), "more than its 3 choices"),
        (form_xml(select("s", style="slider")), "StyleSuggestion must be one of"),
        (form_xml(free("n", '<IsNumeric minValue="9" maxValue="1"/>')), "above maxValue"),
        (form_xml(free("r", '<AnswerFormatRegex regex="(["/>')), "not a valid regex"),
        (form_xml(free("l", '<Length minLength="5" maxLength="2"/>')), "above maxLength"),
        (
            form_xml(
                "<Question><QuestionIdentifier>f</QuestionIdentifier><QuestionContent><Text>x"
                "</Text></QuestionContent><AnswerSpecification><FileUploadAnswer>"
                "<MaxFileSizeInBytes>100</MaxFileSizeInBytes><MinFileSizeInBytes>1"
                "</MinFileSizeInBytes></FileUploadAnswer></AnswerSpecification></Question>"
            ),
            "FileUploadAnswer, which MTurk no longer supports",
        ),
        (
            form_xml(
                "<Overview><Application><JavaApplet><AppletPath>http://x/</AppletPath>"
                "</JavaApplet></Application></Overview>",
                free("a"),
            ),
            "Application content",
        ),
        (
            form_xml(
                "<Overview><Binary><MimeType><Type>image</Type></MimeType><DataURL>"
                "javascript:alert(1)</DataURL><AltText>x</AltText></Binary></Overview>",
                free("a"),
            ),
            "must be an http or https URL",
        ),
    ],
)
def test_invalid_forms_are_refused_with_a_clear_xml_parse_error(xml, message):
    assert message in refused(xml)


@pytest.mark.parametrize(
    ("formatted", "message"),
    [
        ("<script>alert(1)</script>", "<script>"),
        ('<p onclick="alert(1)">x</p>', "onclick"),
        ('<a href="javascript:alert(1)">x</a>', "must be http, https, ftp or mailto"),
        ('<img src="https://example.com/x.png" onerror="alert(1)"/>', "onerror"),
        ('<p style="background:url(x)">x</p>', "style"),
        ("<iframe src='https://example.com/'></iframe>", "<iframe>"),
        ("<p>unclosed", "well-formed"),
    ],
)
def test_formatted_content_outside_the_xhtml_allow_list_is_refused(formatted, message):
    xml = form_xml(
        f"<Overview><FormattedContent><![CDATA[{formatted}]]></FormattedContent></Overview>",
        free("a"),
    )
    assert message in refused(xml)


def test_deeply_nested_formatted_content_is_refused_not_a_crash():
    nested = "<b>" * 6_000 + "x" + "</b>" * 6_000  # 42 KB: within the 64 KB a Question may be
    xml = form_xml(
        f"<Overview><FormattedContent><![CDATA[{nested}]]></FormattedContent></Overview>",
        free("a"),
    )
    assert "more than 100 deep" in refused(xml)


def test_allowed_formatted_content_is_kept_and_text_escaped():
    html = qf.sanitise(
        '<table border="1"><tr><td align="center"><b>X</b>&nbsp;&lt;script&gt;</td></tr></table>'
        '<a href="https://example.com/?a=1&amp;b=&quot;2">link</a><!-- a note -->'
    )
    assert '<td align="center"><b>X</b>\xa0&lt;script&gt;</td>' in html
    assert 'href="https://example.com/?a=1&amp;b=&#34;2"' in html
    assert 'rel="noopener noreferrer"' in html and "a note" not in html


def test_entity_expansion_and_document_types_are_refused():
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE QuestionForm [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
        + f']><QuestionForm xmlns="{NS}"><Overview><Text>&i;</Text></Overview>{free("a")}'
        "</QuestionForm>"
    )
    started = time.monotonic()
    assert "<!DOCTYPE>" in refused(laughs)
    assert "<!DOCTYPE>" in refused('<!DOCTYPE x SYSTEM "file:///etc/passwd">' + form_xml(free("a")))
    # Inside FormattedContent a DTD is not well-formed XHTML.
    assert "well-formed" in refused(
        form_xml(
            '<Overview><FormattedContent><![CDATA[<!DOCTYPE p [<!ENTITY x "y">]><p>&x;</p>]]>'
            "</FormattedContent></Overview>",
            free("a"),
        )
    )
    assert time.monotonic() - started < 2


def test_a_form_over_the_question_size_limit_is_refused_quickly():
    huge = form_xml(*(free(f"q{i}") for i in range(2000)))
    assert len(huge) > MAX_QUESTION_BYTES
    started = time.monotonic()
    assert f"larger than {MAX_QUESTION_BYTES} bytes" in refused(huge)
    assert time.monotonic() - started < 1
    # Under the limit: hundreds of questions parse and render in well under a second.
    many = form_xml(*(free(f"q{i}") for i in range(280)))
    started = time.monotonic()
    page = qf.render(qf.parse(many), action="/mturk/externalSubmit", hidden={})
    assert page.count("<fieldset") == 280 and time.monotonic() - started < 3


# --- render ---------------------------------------------------------------------------------


def test_render_posts_to_the_action_with_hidden_fields_and_escapes_requester_text():
    xml = form_xml(
        "<Overview><Title>&lt;script&gt;alert(1)&lt;/script&gt;</Title>"
        "<List><ListItem>one &amp; two</ListItem></List></Overview>",
        free(
            "comment",
            '<Length maxLength="30"/>',
            extra="<NumberOfLinesSuggestion>4</NumberOfLinesSuggestion>",
        ),
        free("age", '<IsNumeric minValue="1" maxValue="120"/>', required=True),
        select("colour", ("red", "green"), other=""),
        select("tags", ("a", "b", "c"), low=1, high=2),
        select("pick", ("x", "y"), style="dropdown", required=False),
    )
    page = qf.render(qf.parse(xml), action="/mturk/externalSubmit", hidden={"assignmentId": 'A"1<'})
    assert '<form method="post" action="/mturk/externalSubmit"' in page
    assert '<input type="hidden" name="assignmentId" value="A&#34;1&lt;">' in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<li>one &amp; two</li>" in page
    assert '<textarea name="qf.0" rows="4" maxlength="30"' in page
    assert 'type="number" name="qf.1" step="any" min="1" max="120" required' in page
    assert 'type="radio" name="qf.2" value="other"' in page and 'name="qf.2.other"' in page
    assert page.count('type="checkbox" name="qf.3"') == 3 and 'data-max-selections="2"' in page
    assert '<select name="qf.4"' in page and '<option value="">Choose…</option>' in page
    # Choice values are positions: a qualification test never shows its SelectionIdentifiers.
    assert 'value="red"' not in page and 'value="0"' in page
    assert 'id="submit-button">Submit' in page and "preview-notice" not in page


def test_a_preview_has_no_working_submit_button():
    page = qf.render(
        qf.parse(TIC_TAC_TOE),
        action="/mturk/externalSubmit",
        hidden={"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE"},
        preview=True,
    )
    assert 'id="submit-button" disabled' in page and "accept the HIT" in page


def test_render_fragment_is_the_form_alone():
    html = qf.render_fragment(qf.parse(TIC_TAC_TOE), action="/q", hidden={"x": "1"})
    assert html.lstrip().startswith("<form") and "<html" not in html


# --- answers --------------------------------------------------------------------------------


def test_answers_are_freetext_and_selection_identifiers_in_mturk_shape():
    form = qf.parse(
        form_xml(
            free("comment"),
            select("colour", ("red", "green", "blue"), other=""),
            select("tags", ("a", "b", "c"), low=1, high=3),
            free("optional"),
            select("skip", ("x", "y"), required=False),
        )
    )
    xml = qf.answers(
        form,
        [
            ("assignmentId", "A1"),
            ("workerId", "AW"),
            ("qf.0", "fine <&> thanks"),
            ("qf.1", "2"),
            ("qf.1.other", "ignored: other is not chosen"),
            ("qf.2", "2"),
            ("qf.2", "0"),
            ("qf.3", "   "),
        ],
    )
    assert xml.startswith('<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers')
    assert parsed_answers(xml) == {
        "comment": {"FreeText": ["fine <&> thanks"]},
        "colour": {"SelectionIdentifier": ["blue"]},
        "tags": {"SelectionIdentifier": ["a", "c"]},  # in the form's order
    }


def test_the_other_choice_is_other_selection_text():
    form = qf.parse(
        form_xml(
            select("colour", ("red",), other='<Constraints><Length maxLength="5"/></Constraints>')
        )
    )
    xml = qf.answers(form, [("qf.0", "other"), ("qf.0.other", "teal")])
    assert parsed_answers(xml) == {"colour": {"OtherSelectionText": ["teal"]}}
    assert "type your answer" in answer_error(form, [("qf.0", "other"), ("qf.0.other", " ")])
    assert "at most 5" in answer_error(form, [("qf.0", "other"), ("qf.0.other", "magenta")])


def test_nothing_answered_is_an_empty_answers_document():
    form = qf.parse(form_xml(free("a")))
    assert qf.answers(form, []).endswith('QuestionFormAnswers.xsd" />')


@pytest.mark.parametrize(
    ("questions", "fields", "message"),
    [
        ((free("a", required=True),), [], "an answer is required"),
        ((free("a", required=True),), [("qf.0", "  ")], "an answer is required"),
        ((free("a"),), [("qf.0", "x"), ("qf.0", "y")], "one answer, not several"),
        ((free("a", '<IsNumeric minValue="1" maxValue="10"/>'),), [("qf.0", "ten")], "a number"),
        ((free("a", '<IsNumeric minValue="1" maxValue="10"/>'),), [("qf.0", "11")], "at most 10"),
        ((free("a", '<IsNumeric minValue="1"/>'),), [("qf.0", "0.5")], "at least 1"),
        ((free("a", '<Length minLength="3"/>'),), [("qf.0", "ab")], "at least 3 characters"),
        ((free("a", '<Length maxLength="3"/>'),), [("qf.0", "abcd")], "at most 3 characters"),
        (
            (free("a", '<AnswerFormatRegex regex="^[A-C][1-3]$" errorText="Like B2."/>'),),
            [("qf.0", "Z9")],
            "Like B2.",
        ),
        ((free("a", '<AnswerFormatRegex regex="^\\d+$"/>'),), [("qf.0", "x")], "must match"),
        ((select("s"),), [], "choose 1 choice"),
        ((select("s"),), [("qf.0", "0"), ("qf.0", "1")], "choose 1 choice, not 2"),
        ((select("s", low=2, high=3),), [("qf.0", "0")], "between 2 and 3 choices, not 1"),
        ((select("s", low=1, high=3),), [("qf.0", "1"), ("qf.0", "1")], "sent twice"),
        ((select("s"),), [("qf.0", "7")], "not one of its choices"),
        ((select("s"),), [("qf.0", "other")], "not one of its choices"),
        ((free("a"),), [("qf.9", "x")], "no field 'qf.9'"),
    ],
)
def test_answers_breaking_the_forms_rules_are_refused(questions, fields, message):
    """MTurk's worker UI does not submit a form that breaks IsRequired, the selection counts or
    the Constraints; the sandbox refuses such a submission with the rule in the message."""
    error = answer_error(qf.parse(form_xml(*questions)), fields)
    assert message in error and "Nothing was submitted" in error


def test_answer_regex_flags_and_display_names():
    form = qf.parse(
        form_xml(
            free("a", '<AnswerFormatRegex regex="^yes$" flags="i"/>'),
        )
    )
    assert parsed_answers(qf.answers(form, [("qf.0", "YES")])) == {"a": {"FreeText": ["YES"]}}
    assert "“The Next Move”" in answer_error(qf.parse(TIC_TAC_TOE), [("qf.0", "B")])


def test_answers_keep_question_xmls_safety_rules():
    form = qf.parse(form_xml(free("a"), free("b")))
    xml = qf.answers(form, [("qf.0", "bell\x07 é ☃"), ("qf.1", "x")])
    assert parsed_answers(xml)["a"] == {"FreeText": ["bell\ufffd é ☃"]}
    assert xml.isascii()
    with pytest.raises(AnswerTooLarge):
        qf.answers(form, [("qf.0", "x" * MAX_ANSWER_BYTES)])
    with pytest.raises(AnswerTooLarge):  # many small fields add up too
        qf.answers(form, [("qf.0", "<" * (MAX_ANSWER_BYTES // 3))])


def test_answer_pairs_summarise_stored_answers():
    form = qf.parse(form_xml(free("a"), select("s", other="")))
    xml = qf.answers(form, [("qf.0", "hi"), ("qf.1", "other"), ("qf.1.other", "teal")])
    assert qf.answer_pairs(xml) == [("a", "hi"), ("s", "other: teal")]


# --- simulated workers read the rendered page -----------------------------------------------


WORKER_FORM = form_xml(
    "<Overview><Title>Survey</Title></Overview>",
    free("name", '<Length minLength="3" maxLength="12"/>', required=True),
    free("age", '<IsNumeric minValue="18" maxValue="99"/>', required=True),
    free("essay", extra="<NumberOfLinesSuggestion>3</NumberOfLinesSuggestion>"),
    select("one", ("a", "b", "c")),
    select("two", ("a", "b", "c", "d"), low=2, high=2),
    select("some", ("a", "b", "c", "d", "e"), low=1, high=2, style="multichooser"),
    select("drop", ("a", "b"), style="dropdown", other=""),
    select("maybe", ("x", "y"), required=False, other="<Constraints><IsNumeric/></Constraints>"),
)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_simulated_workers_give_valid_answers_to_a_rendered_form(profile):
    form = qf.parse(WORKER_FORM)
    url = "http://127.0.0.1:9/hit/H/question?assignmentId=A1"
    page = qf.render(form, action="/mturk/externalSubmit", hidden={"assignmentId": "A1"})
    understood = understand(page, url)
    assert understood.action == "http://127.0.0.1:9/mturk/externalSubmit"
    for seed in range(40):
        filled = answer_form(understood, PROFILES[profile], random.Random(seed), lambda _: None)
        got = parsed_answers(qf.answers(form, filled.fields))
        assert {"name", "age", "one", "two", "some", "drop"} <= set(got)
        assert len(got["two"]["SelectionIdentifier"]) == 2
        assert 1 <= len(got["some"]["SelectionIdentifier"]) <= 2


# --- through the sandbox: boto3, the worker site, simulated workers --------------------------


def create_form_hit(mturk, question: str = TIC_TAC_TOE, **overrides) -> str:
    params = {
        "MaxAssignments": 3,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "Reward": "0.25",
        "Title": "Tic-tac-toe",
        "Description": "Help decide the next move",
        "Question": question,
    }
    return mturk.create_hit(**(params | overrides))["HIT"]["HITId"]


def test_create_hit_refuses_an_invalid_question_form(sandbox, mturk):
    status, body = raw(
        sandbox,
        "CreateHIT",
        {
            "MaxAssignments": 1,
            "LifetimeInSeconds": 3600,
            "AssignmentDurationInSeconds": 600,
            "Reward": "0.25",
            "Title": "t",
            "Description": "d",
            "Question": form_xml(free("a"), free("a")),
        },
    )
    assert status == 400 and body["TurkErrorCode"] == "AWS.MechanicalTurk.XMLParseError"
    assert "used by more than one Question" in body["Message"]
    assert mturk.list_hits()["NumResults"] == 0


def test_a_question_form_hit_is_shown_and_answered_through_the_worker_site(sandbox, mturk):
    hit_id = create_form_hit(mturk)
    status, _, page = sandbox.page(f"/hit/{hit_id}?workerId=AW1")
    assert status == 200 and "does not render" not in page and 'id="question"' in page
    status, _, preview = sandbox.page(
        f"/hit/{hit_id}/question?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId={hit_id}"
    )
    assert status == 200 and 'id="submit-button" disabled' in preview
    assert "coordinates of the best move" in preview and 'value="C1"' in preview

    assignment_id = sandbox.accept(hit_id, "AW1")
    status, _, work = sandbox.page(
        f"/hit/{hit_id}/question?assignmentId={assignment_id}&hitId={hit_id}&workerId=AW1"
    )
    assert status == 200 and f'value="{assignment_id}"' in work
    assert 'id="submit-button">' in work and "preview-notice" not in work

    # A submission breaking the form's rules is a 400 page; nothing is stored.
    status, _, body = http(
        f"{sandbox.url}/mturk/externalSubmit",
        {"assignmentId": assignment_id, "qf.0": "B", "qf.1": "2"},
    )
    assert status == 400 and "at least 2 characters" in body
    assert mturk.list_assignments_for_hit(HITId=hit_id)["NumResults"] == 0

    status, _, body = http(
        f"{sandbox.url}/mturk/externalSubmit",
        {"assignmentId": assignment_id, "workerId": "AW1", "qf.0": "B2", "qf.1": "2"},
    )
    assert status == 200 and "nextmove" in body and "likely" in body
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert parsed_answers(assignment["Answer"]) == {
        "nextmove": {"FreeText": ["B2"]},
        "likelytowin": {"SelectionIdentifier": ["likely"]},
    }


def test_simulated_workers_answer_a_question_form_hit(sandbox_factory):
    running = sandbox_factory(
        "--workers", "diligent:2,spammer:1", "--seconds-per-assignment", "0.2", "--worker-seed", "3"
    )
    mturk = running.client()
    hit_id = create_form_hit(mturk, WORKER_FORM)
    deadline = time.monotonic() + 60
    found: list = []
    while time.monotonic() < deadline:
        found = mturk.list_assignments_for_hit(HITId=hit_id, MaxResults=10)["Assignments"]
        if len(found) == 3:
            break
        time.sleep(0.5)
    assert len(found) == 3, "".join(running.log)
    for assignment in found:
        got = parsed_answers(assignment["Answer"])
        assert got["one"]["SelectionIdentifier"][0] in {"a", "b", "c"}
        assert len(got["two"]["SelectionIdentifier"]) == 2
        assert 18 <= float(got["age"]["FreeText"][0]) <= 99
        assert 3 <= len(got["name"]["FreeText"][0]) <= 12


def test_a_person_answers_a_question_form_hit_in_chromium(sandbox, mturk, page, foreign_requests):
    """The rendered form works in a real browser: preview without a working Submit, accept,
    fill in free text, a radio group, check boxes and a drop-down with "other", submit."""
    question = form_xml(
        "<Overview><Title>Landmarks</Title><FormattedContent><![CDATA[<p>Answer <b>all</b> "
        "questions.</p>]]></FormattedContent></Overview>",
        free("name", '<Length minLength="3"/>', required=True),
        select("place", ("tower", "bridge")),
        select("tags", ("old", "new", "tall"), low=1, high=2),
        select("city", ("paris", "rome"), style="dropdown", other=""),
    )
    hit_id = create_form_hit(mturk, question, Title="Landmarks form")
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId=A3FORMWORKER")
    frame = page.frame_locator("#question")
    expect(frame.locator("#submit-button")).to_be_disabled()
    expect(frame.locator(".qf-formatted b")).to_have_text("all")
    page.click("#accept-button")
    expect(page.locator("#mode")).to_have_text("Accepted")
    assignment_id = page.locator("#assignment-id").inner_text()
    expect(frame.locator("#submit-button")).to_be_enabled()
    frame.locator("input[name='qf.0']").fill("Big Ben")
    frame.locator("input[name='qf.1'][value='0']").check()
    frame.locator("input[name='qf.2'][value='0']").check()
    frame.locator("input[name='qf.2'][value='2']").check()
    frame.locator("select[name='qf.3']").select_option("other")
    frame.locator("input[name='qf.3.other']").fill("London")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "question-form.png"), full_page=True)
    frame.locator("#submit-button").click()
    page.wait_for_url(f"{sandbox.url}/?workerId=A3FORMWORKER&submitted={assignment_id}")
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert parsed_answers(assignment["Answer"]) == {
        "name": {"FreeText": ["Big Ben"]},
        "place": {"SelectionIdentifier": ["tower"]},
        "tags": {"SelectionIdentifier": ["old", "tall"]},
        "city": {"OtherSelectionText": ["London"]},
    }
    assert foreign_requests == []


# --- review: hostile requesters and workers -------------------------------------------------


def test_a_backtracking_answer_format_regex_is_cut_off_not_a_hang(monkeypatch):
    """``^(a+)+$`` against ``a…a!`` takes Python's ``re`` about 2**n steps (hours at 45
    characters), holding the sandbox's state lock all the while: the check runs in a child
    process that is stopped after ``REGEX_TIMEOUT_SECONDS``, the answer is refused, and the
    next check works (a new child)."""
    monkeypatch.setattr(qf, "REGEX_TIMEOUT_SECONDS", 0.5)
    form = qf.parse(form_xml(free("word", '<AnswerFormatRegex regex="^(a+)+$" flags="i"/>')))
    started = time.monotonic()
    message = answer_error(form, [("qf.0", "a" * 45 + "!")])
    assert time.monotonic() - started < 5
    assert "could not be checked against its AnswerFormatRegex" in message
    assert "Nothing was submitted" in message
    assert "<FreeText>AAA</FreeText>" in qf.answers(form, [("qf.0", "AAA")])
    assert "must match" in answer_error(form, [("qf.0", "b")])


def test_is_numeric_takes_ascii_digits_only():
    """A browser's number field takes 0-9 only; Python's ``\\d`` would also take "３" (full
    width) and "٣" (Arabic-Indic), which a requester's int() may read but Java or JavaScript
    parsers do not."""
    form = qf.parse(form_xml(free("n", '<IsNumeric minValue="1" maxValue="5"/>')))
    for text in ("３", "٣", "1\u0663"):
        assert "must be a number" in answer_error(form, [("qf.0", text)])
    assert "<FreeText>3</FreeText>" in qf.answers(form, [("qf.0", "3")])
    assert "must be a number" in refused(form_xml(free("m", '<IsNumeric minValue="１"/>')))


@pytest.mark.parametrize(
    "prolog",
    ['<?xml version="1.0"?><?style sheet?>', "\ufeff", "<!-- a -->\n<?pi?>"],
)
def test_a_document_type_after_a_processing_instruction_or_bom_is_refused(prolog):
    """The DOCTYPE check used to look only right after the XML declaration and comments: a
    processing instruction or a byte order mark in front let an internal subset's entities
    through (expanded into the worker's page)."""
    xml = form_xml(free("a")).replace("<Text>Say a</Text>", "<Text>&e;</Text>")
    message = refused(prolog + '<!DOCTYPE QuestionForm [<!ENTITY e "EXPANDED">]>' + xml)
    assert "document type declaration" in message


@pytest.mark.parametrize(
    "content",
    [
        "<FormattedContent><p>not in CDATA</p><script>alert(1)</script></FormattedContent>",
        "<Text>half <b>bold</b></Text>",
        "<Title>t<i>x</i></Title>",
        "<List><ListItem>one <b>two</b></ListItem></List>",
    ],
)
def test_markup_inside_text_content_is_refused_not_dropped(content):
    """MTurk's schema types Title, Text, ListItem and FormattedContent as strings: markup in
    them is refused (it used to be dropped without a word: a FormattedContent written without
    CDATA showed nothing)."""
    xml = form_xml(free("a")).replace("<Text>Say a</Text>", content)
    assert "holds text only" in refused(xml)


def test_many_comments_before_the_root_parse_quickly():
    """The old DOCTYPE regex, ``(?:<!--.*?-->\\s*)*<!DOCTYPE``, tried every way of grouping
    the comments in front of the root: 2**n steps for n comments (40 held CreateHIT, and the
    sandbox's state lock, for days). The parser's own doctype hook replaced it."""
    xml = "<!---->" * 40 + form_xml(free("a"))
    started = time.monotonic()
    assert qf.parse(xml).questions[0].identifier == "a"
    assert "document type" in refused("<!---->" * 40 + "<!DOCTYPE QuestionForm>" + form_xml())
    assert time.monotonic() - started < 1


def test_a_dead_regex_process_is_replaced_and_a_missing_one_does_not_refuse_answers(
    monkeypatch,
):
    form = qf.parse(form_xml(free("code", '<AnswerFormatRegex regex="^[A-Z]{3}$"/>')))
    assert "<FreeText>ABC</FreeText>" in qf.answers(form, [("qf.0", "ABC")])
    child = qf._REGEXES._child
    assert child is not None
    child.kill()
    child.wait()
    assert "<FreeText>XYZ</FreeText>" in qf.answers(form, [("qf.0", "XYZ")])
    assert "must match" in answer_error(form, [("qf.0", "xyz")])
    # No Python to start (an embedded interpreter): the check runs in this process.
    qf._REGEXES.stop()
    monkeypatch.setattr(qf.sys, "executable", "/nonexistent/python")
    assert "<FreeText>DEF</FreeText>" in qf.answers(form, [("qf.0", "DEF")])
    assert "must match" in answer_error(form, [("qf.0", "de")])
