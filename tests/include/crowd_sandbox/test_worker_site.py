"""The worker site over HTTP: list, preview, accept, the question, externalSubmit, outbox."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from testsupport.sandbox_process import html_question, http

ANSWERS_NS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)
WORKER = "A1WORKERSITE01"


def create_hit(mturk, *, title: str = "Pick one", question: str | None = None, **extra) -> str:
    params = {
        "Title": title,
        "Description": "Choose the option that matches.",
        "Keywords": "images, similarity",
        "Reward": "0.05",
        "MaxAssignments": 2,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "Question": question or html_question(),
    } | extra
    return mturk.create_hit(**params)["HIT"]["HITId"]


def iframe_src(page: str) -> str:
    found = re.search(r'<iframe id="question"[^>]*\ssrc="([^"]+)"', page)
    assert found, page
    return html.unescape(found.group(1))


def answers(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml)
    return {
        a.find(ANSWERS_NS + "QuestionIdentifier").text: a.find(ANSWERS_NS + "FreeText").text
        for a in root.findall(ANSWERS_NS + "Answer")
    }


def test_the_list_shows_assignable_hits_and_lets_a_person_pick_a_worker(sandbox, mturk):
    hit_id = create_hit(mturk, title="Are these two photos the same place?")
    sandbox.client().create_hit(
        Title="Expired soon",
        Description="d",
        Reward="0.10",
        LifetimeInSeconds=30,
        AssignmentDurationInSeconds=60,
        Question=html_question(),
    )
    sandbox.admin("clock", {"advance": 600})

    status, headers, page = sandbox.page("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<form id="pick-worker"' in page and 'name="workerId"' in page
    assert 'href="/outbox"' in page
    assert "Are these two photos the same place?" in page
    assert "Expired soon" not in page
    assert f'href="/hit/{hit_id}"' in page

    status, _, page = sandbox.page(f"/?workerId={WORKER}")
    assert status == 200
    assert f'href="/hit/{hit_id}?workerId={WORKER}"' in page
    assert "$0.05" in page and "Are these two photos the same place?" in page
    assert re.search(r'<td class="num">2</td>', page), "assignments available"
    # 3600 s of life less the 600 s the clock moved (less the test's own run time, which can
    # pass a second on a loaded machine): the real clock would say 59 min.
    assert re.search(r"in (49|50) min", page), "expiry relative to the sandbox clock"

    # The worker is now known and offered on the picker; a worker who did the HIT no longer sees it.
    assert f'href="/?workerId={WORKER}"' in sandbox.page("/")[2]
    sandbox.work(hit_id, WORKER)
    assert f"/hit/{hit_id}?" not in sandbox.page(f"/?workerId={WORKER}")[2]
    assert f"/hit/{hit_id}?" in sandbox.page("/?workerId=A2OTHER")[2]


def test_a_bad_worker_id_is_refused_with_the_reason(sandbox):
    status, _, page = sandbox.page("/?workerId=" + quote("not a worker"))
    assert status == 400
    assert "is not a worker id" in page
    # Typed in lower case it is still the same worker.
    status, _, page = sandbox.page("/?workerId=a1b2c3")
    assert status == 200 and 'id="current-worker">A1B2C3<' in page


def test_the_preview_frames_the_question_with_mturks_parameters(sandbox, mturk):
    hit_id = create_hit(mturk)
    status, _, page = sandbox.page(f"/hit/{hit_id}?workerId={WORKER}")
    assert status == 200
    assert "Choose the option that matches." in page and "$0.05" in page
    src = iframe_src(page)
    assert src == (
        f"/hit/{hit_id}/question?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId={hit_id}"
        f"&workerId={WORKER}&turkSubmitTo={quote(sandbox.url, safe='')}"
    )
    assert 'height="600"' in page, "FrameHeight"
    accept = re.search(r'<form id="accept" method="post" action="/hit/([A-Z0-9]+)/accept"', page)
    assert accept and accept.group(1) == hit_id
    assert f'<input type="hidden" name="workerId" value="{WORKER}">' in page

    # The question as MTurk serves it: the HTMLContent, with the submit URL made local.
    status, headers, question = sandbox.page(src)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<input type="radio" name="choice" value="1" required>' in question
    assert f'action="{sandbox.url}/mturk/externalSubmit"' in question
    assert "mturk.com" not in question

    # A preview cannot be submitted.
    status = sandbox.submit("ASSIGNMENT_ID_NOT_AVAILABLE", {"choice": "1"})
    assert status == 400
    status, _, page = http(
        f"{sandbox.url}/mturk/externalSubmit",
        {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "choice": "1"},
    )
    assert "accept the HIT before submitting" in page


def test_accept_redirects_to_the_work_page_and_submit_stores_mturk_answer_xml(sandbox, mturk):
    hit_id = create_hit(mturk)
    status, headers, _ = http(f"{sandbox.url}/hit/{hit_id}/accept", {"workerId": WORKER})
    assert status == 303
    location = urlsplit(headers["Location"])
    assert location.path == f"/hit/{hit_id}"
    query = parse_qs(location.query)
    assert query["workerId"] == [WORKER]
    assignment_id = query["assignmentId"][0]

    status, _, page = sandbox.page(headers["Location"])
    assert status == 200
    src = iframe_src(page)
    assert f"assignmentId={assignment_id}&hitId={hit_id}&workerId={WORKER}" in src
    assert f'<form id="return" method="post" action="/hit/{hit_id}/return"' in page
    assert 'id="accept"' not in page

    # Accepting again (a double click) lands on the same assignment.
    assert sandbox.accept(hit_id, WORKER) == assignment_id

    status, _, page = http(
        f"{sandbox.url}/mturk/externalSubmit",
        {"assignmentId": assignment_id, "choice": "2", "comment": "looks <b>alike</b> & more"},
    )
    assert status == 200
    assert "Submitted" in page
    assert f'href="/?workerId={WORKER}"' in page
    assert "looks &lt;b&gt;alike&lt;/b&gt; &amp; more" in page

    listed = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert [a["AssignmentId"] for a in listed] == [assignment_id]
    assert listed[0]["WorkerId"] == WORKER and listed[0]["AssignmentStatus"] == "Submitted"
    root = ET.fromstring(listed[0]["Answer"])
    assert root.tag == ANSWERS_NS + "QuestionFormAnswers"
    assert len(root.findall(ANSWERS_NS + "Answer")) == 2
    assert answers(listed[0]["Answer"]) == {"choice": "2", "comment": "looks <b>alike</b> & more"}

    # Accepting a HIT already done, submitting twice, or an unknown assignment: refused, with why.
    status, _, page = http(f"{sandbox.url}/hit/{hit_id}/accept", {"workerId": WORKER})
    assert status == 409 and "has already done" in page
    status, _, page = http(
        f"{sandbox.url}/mturk/externalSubmit", {"assignmentId": assignment_id, "choice": "1"}
    )
    assert status == 400 and "already submitted" in page
    status, _, page = http(
        f"{sandbox.url}/mturk/externalSubmit", {"assignmentId": "3NOSUCHASSIGNMENT", "choice": "1"}
    )
    assert status == 400 and "does not exist" in page
    status, _, page = http(f"{sandbox.url}/mturk/externalSubmit", {"choice": "1"})
    assert status == 400 and "no assignmentId" in page

    # The work page of a submitted assignment says so.
    status, _, page = sandbox.page(f"/hit/{hit_id}?workerId={WORKER}&assignmentId={assignment_id}")
    assert status == 409 and "Submitted" in page


def test_return_frees_the_slot_and_goes_back_to_the_list(sandbox, mturk):
    hit_id = create_hit(mturk, MaxAssignments=1)
    assignment_id = sandbox.accept(hit_id, WORKER)
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsAvailable"] == 0
    status, _, page = sandbox.page("/?workerId=A2SOMEONEELSE")
    assert f"/hit/{hit_id}" not in page
    assert sandbox.accept_status(hit_id, "A2SOMEONEELSE") == 409

    # Someone else cannot return it.
    status, _, _ = http(
        f"{sandbox.url}/hit/{hit_id}/return",
        {"assignmentId": assignment_id, "workerId": "A2SOMEONEELSE"},
    )
    assert status == 404

    # The list shows it in progress until it is returned.
    assert f"assignmentId={assignment_id}" in sandbox.page(f"/?workerId={WORKER}")[2]
    status, headers, _ = http(
        f"{sandbox.url}/hit/{hit_id}/return", {"assignmentId": assignment_id, "workerId": WORKER}
    )
    assert status == 303 and headers["Location"] == f"/?workerId={WORKER}"
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsAvailable"] == 1
    status, _, page = sandbox.page(f"/hit/{hit_id}?workerId={WORKER}&assignmentId={assignment_id}")
    assert status == 404 and "returned" in page


def test_qualification_requirements_guard_accept_and_preview(sandbox, mturk):
    qualification = mturk.create_qualification_type(
        Name="Trusted photo judge",
        Description="Did well on the test set.",
        QualificationTypeStatus="Active",
    )["QualificationType"]["QualificationTypeId"]
    accept_guarded = create_hit(
        mturk,
        title="Trusted only",
        QualificationRequirements=[{"QualificationTypeId": qualification, "Comparator": "Exists"}],
    )
    status, _, page = sandbox.page(f"/hit/{accept_guarded}?workerId={WORKER}")
    assert status == 200
    assert 'id="not-qualified"' in page and "“Trusted photo judge” Exists" in page
    assert 'id="accept"' not in page
    assert '<iframe id="question"' in page, "Accept-guarded HITs can still be previewed"
    assert sandbox.accept_status(accept_guarded, WORKER) == 403
    status, _, page = http(f"{sandbox.url}/hit/{accept_guarded}/accept", {"workerId": WORKER})
    assert (
        "does not meet the HIT's qualification requirements: “Trusted photo judge” Exists"
        in html.unescape(page)
    )
    assert mturk.list_assignments_for_hit(HITId=accept_guarded)["Assignments"] == []

    preview_guarded = create_hit(
        mturk,
        title="Trusted only, even to look",
        QualificationRequirements=[
            {
                "QualificationTypeId": qualification,
                "Comparator": "Exists",
                "ActionsGuarded": "PreviewAndAccept",
            }
        ],
    )
    status, _, page = sandbox.page(f"/hit/{preview_guarded}?workerId={WORKER}")
    assert status == 200
    assert 'id="preview-blocked"' in page and "<iframe" not in page and 'id="accept"' not in page
    question = f"/hit/{preview_guarded}/question?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE"
    assert sandbox.page(f"{question}&workerId={WORKER}")[0] == 403

    # Once granted, the worker sees the question and can accept both.
    mturk.associate_qualification_with_worker(
        QualificationTypeId=qualification, WorkerId=WORKER, IntegerValue=1
    )
    status, _, page = sandbox.page(f"/hit/{preview_guarded}?workerId={WORKER}")
    assert '<iframe id="question"' in page and 'id="accept"' in page
    assert sandbox.page(f"{question}&workerId={WORKER}")[0] == 200
    sandbox.work(accept_guarded, WORKER)
    sandbox.work(preview_guarded, WORKER)


def test_titles_and_answers_are_escaped_everywhere(sandbox, mturk):
    title = '<script>alert("pwned")</script> & <b>bold</b>'
    hit_id = create_hit(mturk, title=title, Description="<img src=x onerror=alert(1)>")
    for path in ("/", f"/?workerId={WORKER}", f"/hit/{hit_id}?workerId={WORKER}"):
        status, _, page = sandbox.page(path)
        assert status == 200
        assert "<script>alert" not in page and "<b>bold</b>" not in page, path
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold" in page
    assert "<img src=x" not in sandbox.page(f"/hit/{hit_id}?workerId={WORKER}")[2]
    assert "<img src=x" not in sandbox.page("/")[2]

    # A worker id in a URL is checked, never echoed raw.
    status, _, page = sandbox.page("/hit/" + hit_id + "?workerId=" + quote("A1<script>"))
    assert status == 400 and "<script>" not in page
    status, _, page = sandbox.page("/no/such/<page>")
    assert status == 404 and "<page>" not in page


@pytest.mark.parametrize(
    "action",
    [
        "https://www.mturk.com/mturk/externalSubmit",
        "https://workersandbox.mturk.com/mturk/externalSubmit",
        "http://www.mturk.com/mturk/externalSubmit",
    ],
)
def test_mturk_submit_urls_are_rewritten_to_the_sandbox_and_nothing_else_changes(
    sandbox, mturk, action
):
    content = (
        "<!DOCTYPE html><html><body>\n"
        f'<form id="a" method="post" action="{action}"><input name="x"></form>\n'
        "<script>document.forms[0].action = "
        f'"{action}";</script>\n'
        '<form id="b" method="post" action="https://example.org/elsewhere"></form>\n'
        '<p>See <a href="https://www.mturk.com/worker">MTurk</a>.</p>\n'
        "</body></html>"
    )
    question = (
        '<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/'
        'AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd">'
        f"<HTMLContent><![CDATA[{content}]]></HTMLContent><FrameHeight>0</FrameHeight>"
        "</HTMLQuestion>"
    )
    hit_id = create_hit(mturk, question=question)
    status, _, served = sandbox.page(f"/hit/{hit_id}/question?hitId={hit_id}")
    assert status == 200
    local = f"{sandbox.url}/mturk/externalSubmit"
    assert served == content.replace(action, local)
    assert served.count(local) == 2
    assert "https://example.org/elsewhere" in served and "https://www.mturk.com/worker" in served
    # FrameHeight 0: the page sizes the frame to its content.
    assert 'data-fit="content"' in sandbox.page(f"/hit/{hit_id}?workerId={WORKER}")[2]


def test_an_external_question_redirects_with_mturks_parameters(sandbox, mturk):
    question = (
        '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
        'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
        "<ExternalURL>https://tasks.example.org/hit?batch=7</ExternalURL>"
        "<FrameHeight>400</FrameHeight></ExternalQuestion>"
    )
    hit_id = create_hit(mturk, question=question)
    src = iframe_src(sandbox.page(f"/hit/{hit_id}?workerId={WORKER}")[2])
    status, headers, _ = sandbox.page(src)
    assert status == 302
    assert headers["Location"] == (
        "https://tasks.example.org/hit?batch=7&assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE"
        f"&hitId={hit_id}&workerId={WORKER}&turkSubmitTo={quote(sandbox.url, safe='')}"
    )


def test_the_outbox_shows_each_workers_emails_and_bonuses(sandbox, mturk):
    status, _, page = sandbox.page("/outbox")
    assert status == 200 and "Nothing sent" in page

    hit_id = create_hit(mturk)
    first = sandbox.work(hit_id, WORKER, {"choice": "1"})
    second = sandbox.work(hit_id, "A2SECONDWORKER", {"choice": "2"})
    for assignment_id in (first, second):
        mturk.approve_assignment(AssignmentId=assignment_id)
    mturk.send_bonus(
        WorkerId=WORKER,
        BonusAmount="0.25",
        AssignmentId=first,
        Reason="Matched the <gold> answers, thank you!",
        UniqueRequestToken="bonus-1",
    )
    mturk.notify_workers(
        Subject="New batch tomorrow",
        MessageText="Hello,\nanother batch of photo pairs goes up tomorrow.",
        WorkerIds=[WORKER],
    )

    status, _, page = sandbox.page("/outbox")
    assert status == 200
    box = page.split(f'id="worker-{WORKER}"')[1].split('id="worker-')[0]
    assert "New batch tomorrow" in box
    assert "Hello,\nanother batch of photo pairs goes up tomorrow." in box
    assert "$0.25" in box and "Matched the &lt;gold&gt; answers, thank you!" in box
    assert first in box
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", box)
    assert 'id="worker-A2SECONDWORKER"' not in page, "no mail, no bonus: nothing to show"

    status, _, page = sandbox.page(f"/outbox?workerId={WORKER}")
    assert status == 200 and "New batch tomorrow" in page


def test_unknown_pages_hits_and_methods_are_html_errors(sandbox):
    status, headers, page = sandbox.page("/hit/3NOSUCHHIT?workerId=" + WORKER)
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "does not exist" in page
    assert sandbox.accept_status("3NOSUCHHIT", WORKER) == 404
    assert sandbox.page("/hit/3NOSUCHHIT/accept")[0] == 405
    status, _, page = http(f"{sandbox.url}/hit/3NOSUCHHIT/accept", {"workerId": ""})
    assert status == 400 and "Choose a worker id" in page
