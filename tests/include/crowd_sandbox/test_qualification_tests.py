"""Qualification tests and requests, driven with plain boto3 and the worker site as MTurk
requesters and workers use them.

Sources (MTurk API reference, 2017-01-17, https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/):
ApiReference_CreateQualificationTypeOperation, ApiReference_UpdateQualificationTypeOperation,
ApiReference_ListQualificationRequestsOperation, ApiReference_AcceptQualificationRequestOperation,
ApiReference_RejectQualificationRequestOperation, ApiReference_QualificationRequestDataStructure-
Article, ApiReference_QualificationTypeDataStructureArticle and (legacy 2014-08-15 reference,
the same schema) ApiReference_AnswerKeyDataStructureArticle. Each test quotes the rule it checks.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape
from urllib.parse import urlencode

import pytest
from botocore.exceptions import ClientError
from test_workers import Files, altered, png, wait_for  # noqa: F401  (files: the fixture below)

from include.crowd_sandbox import qualification_tests, question_form
from include.crowd_sandbox.protocol import RequestError
from testsupport import sandbox_process
from testsupport.imagekit import textured
from testsupport.sandbox_process import html_question, http

QF_NS = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2017-11-06/QuestionForm.xsd"
)
AK_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/AnswerKey.xsd"
ANSWERS = "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd}"


def selection_question(identifier: str, choices: dict[str, str], text: str) -> str:
    selections = "".join(
        f"<Selection><SelectionIdentifier>{sid}</SelectionIdentifier>{shown}</Selection>"
        for sid, shown in choices.items()
    )
    return (
        f"<Question><QuestionIdentifier>{identifier}</QuestionIdentifier>"
        f"<IsRequired>true</IsRequired><QuestionContent><Text>{text}</Text></QuestionContent>"
        f"<AnswerSpecification><SelectionAnswer><StyleSuggestion>radiobutton</StyleSuggestion>"
        f"<Selections>{selections}</Selections></SelectionAnswer></AnswerSpecification></Question>"
    )


def make_form(*questions: str) -> str:
    return f'<QuestionForm xmlns="{QF_NS}">' + "".join(questions) + "</QuestionForm>"


ARITHMETIC = make_form(
    selection_question("sum", {"three": "<Text>3</Text>", "four": "<Text>4</Text>"}, "2 + 2?"),
    selection_question("product", {"six": "<Text>6</Text>", "nine": "<Text>9</Text>"}, "2 x 3?"),
)


def answer_key(*questions: tuple[str, str, int], mapping: str = "") -> str:
    keyed = "".join(
        f"<Question><QuestionIdentifier>{qid}</QuestionIdentifier><AnswerOption>"
        f"<SelectionIdentifier>{sid}</SelectionIdentifier><AnswerScore>{score}</AnswerScore>"
        "</AnswerOption></Question>"
        for qid, sid, score in questions
    )
    return f'<AnswerKey xmlns="{AK_NS}">{keyed}{mapping}</AnswerKey>'


PERCENT = (
    "<QualificationValueMapping><PercentageMapping><MaximumSummedScore>2</MaximumSummedScore>"
    "</PercentageMapping></QualificationValueMapping>"
)
ARITHMETIC_KEY = answer_key(("sum", "four", 1), ("product", "six", 1), mapping=PERCENT)


def error_of(call, **kwargs) -> dict:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response["Error"]


def qualification_type(mturk, name: str = "Arithmetic", **params) -> str:
    params = {"Description": "Simple sums", "QualificationTypeStatus": "Active", **params}
    return mturk.create_qualification_type(Name=name, **params)["QualificationType"][
        "QualificationTypeId"
    ]


def open_test(sandbox, type_id: str, worker_id: str) -> tuple[int, str, list[tuple[str, str]]]:
    """GET the test page: status, page, and the form's hidden fields."""
    status, _, page = http(f"{sandbox.url}/qualification/{type_id}?workerId={worker_id}")
    hidden = [
        (unescape(name), unescape(value))
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    ]
    return status, page, hidden


def take_test(sandbox, type_id: str, worker_id: str, choices: dict[str, str]) -> tuple[int, str]:
    """Open the test and answer it: ``choices`` maps field names (``qf.0``) to values."""
    status, page, hidden = open_test(sandbox, type_id, worker_id)
    assert status == 200, page[:2000]
    status, _, page = http(f"{sandbox.url}/qualification/{type_id}", {**dict(hidden), **choices})
    return status, page


def outcome(page: str) -> str | None:
    found = re.search(r'id="outcome"[^>]*data-status="([A-Za-z]+)"', page)
    return found.group(1) if found else None


def create_hit(mturk, requirements: list[dict]) -> str:
    return sandbox_process.create_hit(
        mturk,
        MaxAssignments=3,
        Reward="0.10",
        Title="Needs a qualification",
        Description="Only for qualified workers",
        QualificationRequirements=requirements,
    )["HITId"]


# --- auto-graded tests --------------------------------------------------------------------


def test_an_auto_graded_test_grants_the_computed_value_and_opens_the_hit(sandbox, mturk):
    """CreateQualificationType: "Qualification requests for types with answer keys are granted
    automatically by Mechanical Turk, using a value calculated from the answer key and the
    Worker's test answers"; AnswerKey PercentageMapping: "the sum of the scores of the selected
    answers, divided by the maximum, multiplied by 100 and rounded to the nearest integer"."""
    type_id = qualification_type(
        mturk, Test=ARITHMETIC, AnswerKey=ARITHMETIC_KEY, TestDurationInSeconds=600
    )
    qtype = mturk.get_qualification_type(QualificationTypeId=type_id)["QualificationType"]
    assert qtype["Test"] == ARITHMETIC and qtype["AnswerKey"] == ARITHMETIC_KEY
    assert qtype["TestDurationInSeconds"] == 600 and qtype["IsRequestable"] is True
    hit_id = create_hit(
        mturk,
        [
            {
                "QualificationTypeId": type_id,
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [100],
            }
        ],
    )
    status, _, preview = http(f"{sandbox.url}/hit/{hit_id}?workerId=AHALFRIGHT")
    assert status == 200 and "Take the qualification test" in preview
    assert f'href="/qualification/{type_id}?workerId=AHALFRIGHT&amp;hitId={hit_id}"' in preview

    # The page shows the questions, never the requester's SelectionIdentifiers.
    status, page, hidden = open_test(sandbox, type_id, "AHALFRIGHT")
    assert status == 200 and "2 + 2?" in page and "four" not in page
    assert dict(hidden)["workerId"] == "AHALFRIGHT"
    status, page = take_test(sandbox, type_id, "AHALFRIGHT", {"qf.0": "1", "qf.1": "1"})
    assert status == 200 and outcome(page) == "Granted", page[:3000]
    score = mturk.get_qualification_score(QualificationTypeId=type_id, WorkerId="AHALFRIGHT")
    assert score["Qualification"]["IntegerValue"] == 50
    assert sandbox.accept_status(hit_id, "AHALFRIGHT") == 403

    status, page = take_test(sandbox, type_id, "AALLRIGHT", {"qf.0": "1", "qf.1": "0"})
    assert outcome(page) == "Granted" and ">100<" in page
    sandbox.work(hit_id, "AALLRIGHT")
    # Graded requests are not pending: nothing waits for the requester.
    assert mturk.list_qualification_requests(QualificationTypeId=type_id)["NumResults"] == 0


def test_a_test_with_answers_the_form_refuses_changes_nothing(sandbox, mturk):
    """QuestionForm IsRequired: MTurk's worker UI does not submit a test with a required
    question unanswered; the test stays open to be answered."""
    type_id = qualification_type(
        mturk, Test=ARITHMETIC, AnswerKey=ARITHMETIC_KEY, TestDurationInSeconds=600
    )
    status, page = take_test(sandbox, type_id, "AHASTY", {"qf.0": "1"})
    assert status == 400 and "required" in page
    status, page = take_test(sandbox, type_id, "AHASTY", {"qf.0": "1", "qf.1": "0"})
    assert outcome(page) == "Granted"


# --- tests reviewed by the requester --------------------------------------------------------


def test_a_test_without_answer_key_waits_for_the_requester(sandbox, mturk):
    """CreateQualificationType AnswerKey: "If not specified, you must process Qualification
    requests manually"; ListQualificationRequests: "poll for pending requests"; the request's
    Test is "identical to the QuestionForm associated with the Qualification type at the time
    the Worker requests the Qualification" and its Answer is the worker's QuestionFormAnswers;
    AcceptQualificationRequest IntegerValue "Default: 1"; RejectQualificationRequest Reason:
    "to be shown to the Worker who made the request"."""
    type_id = qualification_type(mturk, Test=ARITHMETIC, TestDurationInSeconds=600)
    for worker, choices in (
        ("AFIRST", ("1", "0")),
        ("ASECOND", ("0", "1")),
        ("ATHIRD", ("1", "0")),
    ):
        status, page = take_test(sandbox, type_id, worker, {"qf.0": choices[0], "qf.1": choices[1]})
        assert outcome(page) == "Submitted", page[:3000]
    listed = mturk.list_qualification_requests(QualificationTypeId=type_id)
    assert listed["NumResults"] == 3
    requests = {r["WorkerId"]: r for r in listed["QualificationRequests"]}
    first = requests["AFIRST"]
    assert first["QualificationTypeId"] == type_id and first["Test"] == ARITHMETIC
    assert "SubmitTime" in first
    root = ET.fromstring(first["Answer"])
    chosen = {
        a.findtext(f"{ANSWERS}QuestionIdentifier"): a.findtext(f"{ANSWERS}SelectionIdentifier")
        for a in root.findall(f"{ANSWERS}Answer")
    }
    assert chosen == {"sum": "four", "product": "six"}
    pages = list(
        mturk.get_paginator("list_qualification_requests").paginate(
            PaginationConfig={"PageSize": 2}
        )
    )
    assert [p["NumResults"] for p in pages] == [2, 1]

    mturk.accept_qualification_request(QualificationRequestId=first["QualificationRequestId"])
    assert (
        mturk.get_qualification_score(QualificationTypeId=type_id, WorkerId="AFIRST")[
            "Qualification"
        ]["IntegerValue"]
        == 1
    )
    mturk.accept_qualification_request(
        QualificationRequestId=requests["ATHIRD"]["QualificationRequestId"], IntegerValue=7
    )
    assert (
        mturk.get_qualification_score(QualificationTypeId=type_id, WorkerId="ATHIRD")[
            "Qualification"
        ]["IntegerValue"]
        == 7
    )
    second = requests["ASECOND"]["QualificationRequestId"]
    mturk.reject_qualification_request(QualificationRequestId=second, Reason="Both wrong")
    error = error_of(mturk.get_qualification_score, QualificationTypeId=type_id, WorkerId="ASECOND")
    assert "does not exist" in error["Message"]
    _, _, outbox = http(f"{sandbox.url}/outbox?workerId=ASECOND")
    assert "Both wrong" in outbox
    # Decided requests are no longer pending.
    assert mturk.list_qualification_requests(QualificationTypeId=type_id)["NumResults"] == 0
    for call, params in (
        (mturk.accept_qualification_request, {"QualificationRequestId": second}),
        (mturk.reject_qualification_request, {"QualificationRequestId": second}),
        (mturk.accept_qualification_request, {"QualificationRequestId": "NOSUCHREQUEST"}),
    ):
        assert error_of(call, **params)["Code"] == "RequestError"


def test_a_type_without_a_test_can_be_requested(sandbox, mturk):
    """CreateQualificationType Test: "If not specified, the Worker may request the Qualification
    without answering any questions"; AutoGranted: "requests for the Qualification type are
    granted immediately, without prompting the Worker with a Qualification test"; the
    request's SubmitTime is "the time the Worker requested the Qualification if the
    Qualification type does not have a test"."""
    reviewed = qualification_type(mturk, name="Reviewed")
    automatic = qualification_type(mturk, name="Automatic", AutoGranted=True, AutoGrantedValue=5)
    hit_id = create_hit(mturk, [{"QualificationTypeId": reviewed, "Comparator": "Exists"}])
    _, _, preview = http(f"{sandbox.url}/hit/{hit_id}?workerId=AASKER")
    assert "Request qualification" in preview and "Take the qualification test" not in preview
    status, _, page = http(f"{sandbox.url}/qualification/{reviewed}?workerId=AASKER")
    assert status == 200 and 'id="request-qualification"' in page
    status, _, page = http(f"{sandbox.url}/qualification/{reviewed}", {"workerId": "AASKER"})
    assert outcome(page) == "Submitted"
    [request] = mturk.list_qualification_requests(QualificationTypeId=reviewed)[
        "QualificationRequests"
    ]
    assert request["WorkerId"] == "AASKER" and "Test" not in request and "Answer" not in request
    mturk.accept_qualification_request(QualificationRequestId=request["QualificationRequestId"])
    sandbox.work(hit_id, "AASKER")

    status, _, page = http(f"{sandbox.url}/qualification/{automatic}", {"workerId": "AASKER"})
    assert outcome(page) == "Granted" and ">5<" in page
    assert mturk.list_qualification_requests(QualificationTypeId=automatic)["NumResults"] == 0


# --- retries and the test's time --------------------------------------------------------------


def test_retries_follow_retry_delay(sandbox, mturk):
    """CreateQualificationType RetryDelayInSeconds: "If not specified, retries are disabled and
    Workers can request a Qualification of this type only once, even if the Worker has not been
    granted the Qualification"; with it, "the number of seconds that a Worker must wait after
    requesting a Qualification ... before the worker can retry". QualificationType: "Workers
    can take a Qualification test multiple times if they were not granted the Qualification
    from a previous attempt, or if the test offers a gradient score and they want a better
    score"."""
    once = qualification_type(
        mturk, name="Once", Test=ARITHMETIC, AnswerKey=ARITHMETIC_KEY, TestDurationInSeconds=600
    )
    take_test(sandbox, once, "AWORKER", {"qf.0": "0", "qf.1": "1"})
    status, page, _ = open_test(sandbox, once, "AWORKER")
    assert status == 409 and "only once" in page

    again = qualification_type(
        mturk,
        name="Again",
        Test=ARITHMETIC,
        AnswerKey=ARITHMETIC_KEY,
        TestDurationInSeconds=600,
        RetryDelayInSeconds=3600,
    )
    status, page = take_test(sandbox, again, "AWORKER", {"qf.0": "0", "qf.1": "1"})
    assert ">0<" in page
    status, page, _ = open_test(sandbox, again, "AWORKER")
    assert status == 409 and "again in" in page
    sandbox.admin("clock", {"advance": 3601})
    status, page = take_test(sandbox, again, "AWORKER", {"qf.0": "1", "qf.1": "0"})
    assert outcome(page) == "Granted"
    score = mturk.get_qualification_score(QualificationTypeId=again, WorkerId="AWORKER")
    assert score["Qualification"]["IntegerValue"] == 100

    # A request under review blocks another one, whatever the delay.
    reviewed = qualification_type(mturk, name="Reviewed", RetryDelayInSeconds=0)
    http(f"{sandbox.url}/qualification/{reviewed}", {"workerId": "AWORKER"})
    status, _, page = http(f"{sandbox.url}/qualification/{reviewed}", {"workerId": "AWORKER"})
    assert status == 409 and "waiting for the requester" in page


def test_answers_after_the_test_duration_are_refused(sandbox, mturk):
    """CreateQualificationType TestDurationInSeconds: "The number of seconds the Worker has to
    complete the Qualification test, starting from the time the Worker requests the
    Qualification"."""
    type_id = qualification_type(
        mturk,
        Test=ARITHMETIC,
        AnswerKey=ARITHMETIC_KEY,
        TestDurationInSeconds=60,
        RetryDelayInSeconds=600,
    )
    status, _, hidden = open_test(sandbox, type_id, "ASLOW")
    assert status == 200
    sandbox.admin("clock", {"advance": 30})
    _, _, hidden_again = open_test(sandbox, type_id, "ASLOW")  # the same test, still running
    assert dict(hidden_again) == dict(hidden)
    sandbox.admin("clock", {"advance": 31})
    status, _, page = http(
        f"{sandbox.url}/qualification/{type_id}", {**dict(hidden), "qf.0": "1", "qf.1": "0"}
    )
    assert status == 409 and "ran out" in page
    error = error_of(mturk.get_qualification_score, QualificationTypeId=type_id, WorkerId="ASLOW")
    assert "does not exist" in error["Message"]
    # The expired attempt was a request: the retry delay runs from it.
    status, page, _ = open_test(sandbox, type_id, "ASLOW")
    assert status == 409 and "again in" in page


# --- validation -----------------------------------------------------------------------------


def test_create_and_update_follow_mturks_rules_for_tests(mturk):
    """CreateQualificationType Test: "If this parameter is specified, TestDurationInSeconds must
    also be specified. Constraints: Must not be longer than 65535 bytes. Must be a QuestionForm
    data structure. This parameter cannot be specified if AutoGranted is true."
    UpdateQualificationType: "If you are updating the test for a type, you must specify the Test
    and TestDurationInSeconds parameters. The AnswerKey parameter is optional; omitting it
    specifies that the updated test does not have an answer key"; "If the type already has a
    test, you cannot update it to be AutoGranted"; "If you want to update the test duration or
    answer key for an existing test without changing the questions, you must specify a Test
    parameter with the original questions"."""
    create = mturk.create_qualification_type
    base = {"Description": "d", "QualificationTypeStatus": "Active"}
    refused = [
        {"Name": "a", "Test": ARITHMETIC},
        {"Name": "b", "Test": ARITHMETIC, "TestDurationInSeconds": 60, "AutoGranted": True},
        {"Name": "c", "AnswerKey": ARITHMETIC_KEY},
        {"Name": "d", "Test": "<QuestionForm><oops", "TestDurationInSeconds": 60},
        {"Name": "e", "Test": html_question(), "TestDurationInSeconds": 60},
        {
            "Name": "f",
            "Test": ARITHMETIC.replace("2 + 2?", "x" * 65_536),
            "TestDurationInSeconds": 60,
        },
        {"Name": "g", "Test": ARITHMETIC, "TestDurationInSeconds": 0},
        {"Name": "h", "RetryDelayInSeconds": -1},
    ]
    for params in refused:
        assert error_of(create, **base, **params)["Code"] == "RequestError", params["Name"]
    owned = mturk.list_qualification_types(MustBeRequestable=False, MustBeOwnedByCaller=True)
    assert owned["NumResults"] == 0

    type_id = qualification_type(
        mturk, Test=ARITHMETIC, AnswerKey=ARITHMETIC_KEY, TestDurationInSeconds=60
    )
    update = mturk.update_qualification_type
    for params in (
        {"AnswerKey": ARITHMETIC_KEY},
        {"TestDurationInSeconds": 120},
        {"AutoGranted": True},
        {"Test": ARITHMETIC},
    ):
        error = error_of(update, QualificationTypeId=type_id, **params)
        assert error["Code"] == "RequestError", params
    updated = update(
        QualificationTypeId=type_id,
        Test=ARITHMETIC,
        TestDurationInSeconds=120,
        Description="new",
        RetryDelayInSeconds=10,
        QualificationTypeStatus="Inactive",
    )["QualificationType"]
    assert updated["TestDurationInSeconds"] == 120 and "AnswerKey" not in updated
    assert updated["Description"] == "new" and updated["RetryDelayInSeconds"] == 10
    assert updated["QualificationTypeStatus"] == "Inactive"
    assert mturk.get_qualification_type(QualificationTypeId=type_id)["QualificationType"] == updated
    error = error_of(update, QualificationTypeId="NOSUCHTYPE", Description="x")
    assert "does not exist" in error["Message"]
    plain = qualification_type(mturk, name="Plain")
    made = update(QualificationTypeId=plain, AutoGranted=True, AutoGrantedValue=3)
    assert made["QualificationType"]["AutoGranted"] is True
    assert made["QualificationType"]["AutoGrantedValue"] == 3


def test_an_inactive_type_takes_no_requests(sandbox, mturk):
    """UpdateQualificationType: a type can be disabled "to prevent Workers from taking the
    Qualification test" (CreateQualificationType, 2006-10-31 reference)."""
    type_id = qualification_type(mturk, QualificationTypeStatus="Inactive")
    status, _, page = http(f"{sandbox.url}/qualification/{type_id}", {"workerId": "AWORKER"})
    assert status == 409 and "inactive" in page


def test_a_test_open_when_its_type_is_made_inactive_cannot_be_submitted(sandbox, mturk):
    """An Inactive type takes no requests (as ``test_an_inactive_type_takes_no_requests``),
    also from a test a worker opened before the requester made it Inactive."""
    type_id = qualification_type(mturk, Test=ARITHMETIC, TestDurationInSeconds=600)
    status, page, hidden = open_test(sandbox, type_id, "ALATE")
    assert status == 200, page[:2000]
    mturk.update_qualification_type(QualificationTypeId=type_id, QualificationTypeStatus="Inactive")
    status, _, page = http(
        f"{sandbox.url}/qualification/{type_id}", {**dict(hidden), "qf.0": "1", "qf.1": "0"}
    )
    assert status == 409 and "Inactive" in page
    assert mturk.list_qualification_requests(QualificationTypeId=type_id)["NumResults"] == 0


def test_the_qualification_page_refuses_what_it_cannot_take(sandbox, mturk):
    type_id = qualification_type(
        mturk, Test=ARITHMETIC, AnswerKey=ARITHMETIC_KEY, TestDurationInSeconds=60
    )
    assert http(f"{sandbox.url}/qualification/NOSUCHTYPE?workerId=AWORKER")[0] == 404
    assert http(f"{sandbox.url}/qualification/{type_id}")[0] == 400  # no worker id
    assert http(f"{sandbox.url}/qualification/{type_id}?workerId=lower")[0] == 400
    # Someone else's test, or a made-up one, cannot be submitted.
    _, _, hidden = open_test(sandbox, type_id, "AOWNER")
    forged = {**dict(hidden), "workerId": "AOTHER", "qf.0": "1", "qf.1": "0"}
    status, _, page = http(f"{sandbox.url}/qualification/{type_id}", forged)
    assert status == 409
    forged = {"workerId": "AOTHER", "qualificationRequestId": "MADEUP", "qf.0": "1"}
    assert http(f"{sandbox.url}/qualification/{type_id}", forged)[0] == 409
    # Hostile answers: unknown fields and values are refused, nothing is granted.
    _, _, hidden = open_test(sandbox, type_id, "AHOSTILE")
    for answers in ({"qf.0": "7", "qf.1": "0"}, {"qf.9": "1"}, {"qf.0": "x" * 70_000}):
        status, _, _ = http(f"{sandbox.url}/qualification/{type_id}", {**dict(hidden), **answers})
        assert status in (400, 413), answers
    error = error_of(
        mturk.get_qualification_score, QualificationTypeId=type_id, WorkerId="AHOSTILE"
    )
    assert "does not exist" in error["Message"]


# --- the AnswerKey --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (answer_key(("nosuchquestion", "four", 1)), "does not have"),
        (answer_key(("sum", "five", 1)), "does not offer"),
        (answer_key(("sum", "four", 2**31)), "32-bit"),
        (answer_key(("sum", "four", "9" * 5000)), "whole number"),
        (answer_key(("sum", "four", "1.5")), "whole number"),
        ("<AnswerKey><Question>", "well-formed"),
        ('<!DOCTYPE a [<!ENTITY x "xx">]><AnswerKey/>', "DOCTYPE"),
        ("<Other/>", "root element"),
        (answer_key(("sum", "four", 1), ("sum", "three", 0)), "more than once"),
        (answer_key(), "at least one Question"),
        (
            answer_key(
                ("sum", "four", 1),
                mapping="<QualificationValueMapping><PercentageMapping><MaximumSummedScore>0"
                "</MaximumSummedScore></PercentageMapping></QualificationValueMapping>",
            ),
            "above 0",
        ),
        (
            answer_key(
                ("sum", "four", 1),
                mapping="<QualificationValueMapping><RangeMapping>"
                + "".join(
                    f"<SummedScoreRange><InclusiveLowerBound>{lo}</InclusiveLowerBound>"
                    f"<InclusiveUpperBound>{hi}</InclusiveUpperBound>"
                    "<QualificationValue>1</QualificationValue></SummedScoreRange>"
                    for lo, hi in ((0, 5), (5, 9))
                )
                + "<OutOfRangeQualificationValue>0</OutOfRangeQualificationValue>"
                "</RangeMapping></QualificationValueMapping>",
            ),
            "overlaps",
        ),
        (
            answer_key(
                ("sum", "four", 1),
                mapping="<QualificationValueMapping><ScaleMapping><SummedScoreMultiplier>NaN"
                "</SummedScoreMultiplier></ScaleMapping></QualificationValueMapping>",
            ),
            "out of range",
        ),
    ],
)
def test_hostile_or_wrong_answer_keys_are_refused_at_create(mturk, key, words):
    """AnswerKey: a Question's QuestionIdentifier "corresponds to a QuestionIdentifier in the
    QuestionForm", its SelectionIdentifiers "correspond to identifiers for the selections";
    "Ranges cannot overlap". The sandbox refuses a key that cannot grade its test (and scores
    beyond a 32-bit Qualification value), so the requester learns it before a worker does."""
    error = error_of(
        mturk.create_qualification_type,
        Name="Keyed",
        Description="d",
        QualificationTypeStatus="Active",
        Test=ARITHMETIC,
        TestDurationInSeconds=60,
        AnswerKey=key,
    )
    assert error["Code"] == "RequestError" and words in error["Message"], error["Message"]


def grade(key: str, chosen: dict[str, list[str]], form: str = ARITHMETIC) -> int:
    parsed = question_form.parse(form)
    positions = {q.identifier: i for i, q in enumerate(parsed.questions)}
    fields = []
    for qid, selections in chosen.items():
        question = parsed.questions[positions[qid]]
        ids = [c.identifier for c in question.answer.choices]
        fields += [(f"qf.{positions[qid]}", str(ids.index(s))) for s in selections]
    answers = question_form.answers(parsed, fields)
    return qualification_tests.grade(qualification_tests.parse_answer_key(key, parsed), answers)


def test_grading_follows_the_answer_key_article():
    """AnswerKey: "The Worker must select all of the selections specified by the
    SelectionIdentifier elements, and no others, to earn the score"; "An AnswerScore ... may be
    negative"; DefaultScore "is added ... if none of the answer options exactly match ... and
    defaults to 0"; without a QualificationValueMapping "the sum of the scores of the answers is
    used"; ScaleMapping: the sum "multiplied by the multiplier"; RangeMapping: the range's
    QualificationValue, else OutOfRangeQualificationValue."""
    multi = make_form(
        selection_question("fruit", {"a": "<Text>apple</Text>", "b": "<Text>pear</Text>"}, "x")
        .replace(
            "<StyleSuggestion>radiobutton</StyleSuggestion>",
            "<MaxSelectionCount>2</MaxSelectionCount>",
        )
        .replace("<IsRequired>true</IsRequired>", "<IsRequired>false</IsRequired>"),
        selection_question("sum", {"three": "<Text>3</Text>", "four": "<Text>4</Text>"}, "2+2"),
    )
    key = (
        f'<AnswerKey xmlns="{AK_NS}"><Question><QuestionIdentifier>fruit</QuestionIdentifier>'
        "<AnswerOption><SelectionIdentifier>a</SelectionIdentifier><SelectionIdentifier>b"
        "</SelectionIdentifier><AnswerScore>10</AnswerScore></AnswerOption>"
        "<AnswerOption><SelectionIdentifier>a</SelectionIdentifier><AnswerScore>-3</AnswerScore>"
        "</AnswerOption><DefaultScore>1</DefaultScore></Question>"
        "<Question><QuestionIdentifier>sum</QuestionIdentifier><AnswerOption>"
        "<SelectionIdentifier>four</SelectionIdentifier><AnswerScore>5</AnswerScore>"
        "</AnswerOption></Question>{mapping}</AnswerKey>"
    )
    plain = key.format(mapping="")
    assert grade(plain, {"fruit": ["a", "b"], "sum": ["four"]}, multi) == 15
    assert grade(plain, {"fruit": ["a"], "sum": ["four"]}, multi) == 2
    assert grade(plain, {"fruit": ["b"], "sum": ["three"]}, multi) == 1  # DefaultScore, 0
    assert grade(plain, {"sum": ["three"]}, multi) == 1  # an unanswered question: DefaultScore
    scale = key.format(
        mapping="<QualificationValueMapping><ScaleMapping><SummedScoreMultiplier>2.5"
        "</SummedScoreMultiplier></ScaleMapping></QualificationValueMapping>"
    )
    assert grade(scale, {"fruit": ["a"], "sum": ["four"]}, multi) == 5
    ranged = key.format(
        mapping="<QualificationValueMapping><RangeMapping><SummedScoreRange>"
        "<InclusiveLowerBound>10</InclusiveLowerBound><InclusiveUpperBound>20"
        "</InclusiveUpperBound><QualificationValue>3</QualificationValue></SummedScoreRange>"
        "<OutOfRangeQualificationValue>-1</OutOfRangeQualificationValue></RangeMapping>"
        "</QualificationValueMapping>"
    )
    assert grade(ranged, {"fruit": ["a", "b"], "sum": ["four"]}, multi) == 3
    assert grade(ranged, {"fruit": ["a"], "sum": ["three"]}, multi) == -1
    # PercentageMapping rounds to the nearest integer: 1 of 3 is 33.
    third = ARITHMETIC_KEY.replace(">2</MaximumSummedScore>", ">3</MaximumSummedScore>")
    assert grade(third, {"sum": ["four"], "product": ["nine"]}) == 33
    # A value past the 32-bit range is kept at its end.
    big = answer_key(("sum", "four", 2**31 - 1), ("product", "six", 2**31 - 1))
    assert grade(big, {"sum": ["four"], "product": ["six"]}) == 2**31 - 1


def test_answer_key_parsing_checks_size_before_parsing():
    """CreateQualificationType AnswerKey: "Must not be longer than 65535 bytes"."""
    parsed = question_form.parse(ARITHMETIC)
    with pytest.raises(RequestError, match="65535"):
        qualification_tests.parse_answer_key(" " * 65_536, parsed)


# --- simulated workers ----------------------------------------------------------------------


@pytest.fixture
def files():
    server = Files()
    yield server
    server.close()


def image_test(add, questions: int = 2) -> tuple[str, str]:
    """A qualification test of image questions (a target and three pictures, one of them an
    altered copy of the target) with its AnswerKey: one point per right answer."""
    blocks, keyed = [], []
    for number in range(questions):
        target = textured(160, 120, seed=300 + 10 * number)
        right = (number + 1) % 3
        target_url = add(f"/q/{number}-target.png", png(target))
        choices = {}
        for i in range(3):
            picture = (
                altered(target, i) if i == right else textured(160, 120, 301 + 10 * number + i)
            )
            url = add(f"/q/{number}-{i}.png", png(picture))
            choices[f"pic{i}"] = (
                f"<Binary><MimeType><Type>image</Type><SubType>png</SubType></MimeType>"
                f"<DataURL>{url}</DataURL><AltText>picture {i}</AltText></Binary>"
            )
        content = (
            "<Text>Which picture shows the same scene?</Text><Binary><MimeType><Type>image"
            f"</Type><SubType>png</SubType></MimeType><DataURL>{target_url}</DataURL>"
            "<AltText>the scene</AltText></Binary>"
        )
        blocks.append(
            selection_question(f"scene{number}", choices, "x").replace("<Text>x</Text>", content)
        )
        keyed.append((f"scene{number}", f"pic{right}", 1))
    return make_form(*blocks), answer_key(*keyed)


def test_simulated_workers_take_the_test_then_do_the_hit(sandbox_factory, files):
    """Simulated workers meet a HIT whose requirement has a test: they take it through the
    worker site (a diligent worker looks at the pictures and passes), then do the HIT; a spammer
    guesses, is graded, and does the HIT only if its guess passed."""
    running = sandbox_factory(
        "--workers", "diligent:1,spammer:1", "--seconds-per-assignment", "0.1", "--worker-seed", "3"
    )
    mturk = running.client()
    test, key = image_test(files.add)
    type_id = qualification_type(mturk, Test=test, AnswerKey=key, TestDurationInSeconds=600)
    hit_id = create_hit(
        mturk,
        [{"QualificationTypeId": type_id, "Comparator": "EqualTo", "IntegerValues": [2]}],
    )

    def graded():
        found = mturk.list_workers_with_qualification_type(QualificationTypeId=type_id)
        return found if found["NumResults"] == 2 else None

    try:
        scores = {
            q["WorkerId"]: q["IntegerValue"] for q in wait_for(graded, timeout=60)["Qualifications"]
        }
        assert scores["ADILIGENT01"] == 2, scores

        def done():
            found = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
            return found if any(a["WorkerId"] == "ADILIGENT01" for a in found) else None

        workers = {a["WorkerId"] for a in wait_for(done, timeout=60)}
    except AssertionError as error:
        raise AssertionError("sandbox log:\n" + "".join(running.log)) from error
    assert ("ASPAMMER01" in workers) == (scores["ASPAMMER01"] == 2)
    assert "asked for qualification" in "".join(running.log)
    # Each worker took the test once (no retries): the requester sees no pending requests.
    assert mturk.list_qualification_requests()["NumResults"] == 0


def test_hit_page_offers_only_obtainable_qualifications(sandbox, mturk):
    """Requirements a worker cannot obtain on the worker site get no offer: system
    qualifications, DoesNotExist requirements and inactive types."""
    excluded = qualification_type(mturk, name="Excluded")
    inactive = qualification_type(mturk, name="Inactive", QualificationTypeStatus="Inactive")
    hit_id = create_hit(
        mturk,
        [
            {"QualificationTypeId": excluded, "Comparator": "DoesNotExist"},
            {"QualificationTypeId": inactive, "Comparator": "Exists"},
            {
                "QualificationTypeId": "000000000000000000L0",
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [100],
            },
        ],
    )
    mturk.associate_qualification_with_worker(QualificationTypeId=excluded, WorkerId="AWORKER")
    _, _, preview = http(f"{sandbox.url}/hit/{hit_id}?{urlencode({'workerId': 'AWORKER'})}")
    assert 'id="not-qualified"' in preview and "qualification-offer" not in preview


def test_a_restart_keeps_tests_and_requests(sandbox_factory, tmp_path):
    """The state file keeps a type's test and the requests waiting for the requester, and an
    open test keeps its time across a restart."""
    state = tmp_path / "kept.sqlite"
    first = sandbox_factory(state=state)
    mturk = first.client()
    type_id = qualification_type(mturk, Test=ARITHMETIC, TestDurationInSeconds=600)
    take_test(first, type_id, "AKEPT", {"qf.0": "1", "qf.1": "0"})
    _, _, hidden = open_test(first, type_id, "AOPEN")
    before = mturk.list_qualification_requests(QualificationTypeId=type_id)
    assert first.stop() == 0

    second = sandbox_factory(state=state)
    mturk = second.client()
    after = mturk.list_qualification_requests(QualificationTypeId=type_id)
    assert after["QualificationRequests"] == before["QualificationRequests"]
    assert after["NumResults"] == 1
    status, _, page = http(
        f"{second.url}/qualification/{type_id}", {**dict(hidden), "qf.0": "0", "qf.1": "1"}
    )
    assert outcome(page) == "Submitted"
    assert mturk.list_qualification_requests(QualificationTypeId=type_id)["NumResults"] == 2


# --- review: races and crossed forms ---------------------------------------------------------


def test_a_test_submitted_many_times_at_once_counts_once(sandbox, mturk):
    """Exactly once: eight simultaneous posts of one open test (a double click, a retrying
    client) give one request; the others are told it was already submitted. Then eight
    simultaneous AcceptQualificationRequest calls grant once and e-mail once."""
    from concurrent.futures import ThreadPoolExecutor

    type_id = qualification_type(mturk, Test=ARITHMETIC, TestDurationInSeconds=600)
    status, page, hidden = open_test(sandbox, type_id, "ARACER")
    assert status == 200, page[:2000]
    form = {**dict(hidden), "qf.0": "1", "qf.1": "0"}
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: http(f"{sandbox.url}/qualification/{type_id}", form), range(8))
        )
    outcomes = sorted((status, outcome(page)) for status, _, page in results)
    assert outcomes.count((200, "Submitted")) == 1, outcomes
    assert all(status == 409 for status, _ in outcomes if _ is None), outcomes
    (request,) = mturk.list_qualification_requests(QualificationTypeId=type_id)[
        "QualificationRequests"
    ]

    def accept(_):
        try:
            mturk.accept_qualification_request(
                QualificationRequestId=request["QualificationRequestId"], IntegerValue=5
            )
            return "accepted"
        except ClientError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        decisions = sorted(pool.map(accept, range(8)))
    assert decisions == ["accepted"] + ["refused"] * 7
    _, _, outbox = http(f"{sandbox.url}/outbox?workerId=ARACER")
    assert outbox.count("was accepted") == 1


def test_a_test_form_posted_to_another_types_page_is_refused(sandbox, mturk):
    """The qualificationRequestId of one type's test, posted to another type's page, is not
    graded under the page's name: the page refuses it and the test stays open."""
    first = qualification_type(
        mturk, name="First", Test=ARITHMETIC, TestDurationInSeconds=600, AnswerKey=ARITHMETIC_KEY
    )
    second = qualification_type(mturk, name="Second", Test=ARITHMETIC, TestDurationInSeconds=600)
    status, page, hidden = open_test(sandbox, first, "ACROSSED")
    assert status == 200, page[:2000]
    form = {**dict(hidden), "qf.0": "1", "qf.1": "0"}
    status, _, page = http(f"{sandbox.url}/qualification/{second}", form)
    assert status == 409 and outcome(page) is None, page[:2000]
    error = error_of(mturk.get_qualification_score, QualificationTypeId=first, WorkerId="ACROSSED")
    assert "does not exist" in error["Message"]
    status, _, page = http(f"{sandbox.url}/qualification/{first}", form)
    assert status == 200 and outcome(page) == "Granted", page[:2000]
