"""Hostile input: bursts of clients, huge or forged submits, malformed JSON and HTTP framing.

Every refusal is a 4xx that changes nothing, and the sandbox keeps serving afterwards.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import xml.etree.ElementTree as ET
from contextlib import closing
from http.client import HTTPConnection
from urllib.parse import urlencode, urlsplit
from urllib.request import Request, urlopen

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from include.crowd_sandbox.requester import MAX_ANSWER_BYTES
from testsupport.sandbox_process import html_question, http

ANSWERS_NS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)
TARGET = "MTurkRequesterServiceV20170117."
WORKER, OTHER = "A1HOSTILEWORKER", "A2SOMEONEELSE"


def create_hit(mturk, **extra) -> str:
    params = {
        "Title": "Pick one",
        "Description": "Choose the option that matches.",
        "Reward": "0.05",
        "MaxAssignments": 3,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "Question": html_question(),
    } | extra
    return mturk.create_hit(**params)["HIT"]["HITId"]


def stored_bytes(sandbox) -> int:
    """The size of every document in the state file (what each API call may read back)."""
    with closing(sqlite3.connect(f"file:{sandbox.state}?mode=ro", uri=True)) as db:
        tables = [
            name
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if "doc" in [column[1] for column in db.execute(f"PRAGMA table_info({name})")]
        ]
        return sum(db.execute(f"SELECT total(length(doc)) FROM {t}").fetchone()[0] for t in tables)


def assignment_doc_bytes(sandbox, assignment_id: str) -> int:
    with closing(sqlite3.connect(f"file:{sandbox.state}?mode=ro", uri=True)) as db:
        (size,) = db.execute(
            "SELECT length(doc) FROM assignments WHERE id = ?", (assignment_id,)
        ).fetchone()
        return size


def post(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, str]:
    request = Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except Exception as error:  # urllib raises HTTPError for 4xx/5xx
        return error.code, error.read().decode("utf-8", "replace")


def api_post(sandbox, operation: str, body: bytes) -> tuple[int, str, bytes]:
    """POST a raw body to the requester API: status, content type, body."""
    parts = urlsplit(sandbox.url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/",
            body=body,
            headers={
                "X-Amz-Target": TARGET + operation,
                "Content-Type": "application/x-amz-json-1.1",
            },
        )
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def raw_exchange(sandbox, data: bytes, *, until_closed: bool = False) -> bytes:
    """Send bytes as they are; return what comes back until the response is whole (or, with
    ``until_closed``, until the server hangs up). A hang raises ``socket.timeout``."""
    parts = urlsplit(sandbox.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except ConnectionResetError:  # the server answered and hung up before reading it all
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            head, separator, body = received.partition(b"\r\n\r\n")
            if separator and not until_closed:
                length = [
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= int(length[0]):
                    return received


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


# --- many clients at once ---------------------------------------------------------------------


def test_two_hundred_clients_connecting_at_once_are_all_answered(sandbox):
    clients = 200
    start = threading.Barrier(clients)
    outcomes: list[object] = []
    parts = urlsplit(sandbox.url)

    def call(index: int) -> None:
        try:
            start.wait(timeout=30)
            connection = HTTPConnection(parts.hostname, parts.port, timeout=30)
            if index % 2:
                connection.request("GET", "/admin/health")
            else:
                connection.request(
                    "POST",
                    "/",
                    body=b"{}",
                    headers={
                        "X-Amz-Target": TARGET + "GetAccountBalance",
                        "Content-Type": "application/x-amz-json-1.1",
                    },
                )
            response = connection.getresponse()
            response.read()
            connection.close()
            outcomes.append(response.status)
        except Exception as error:  # a reset or a timeout is what this test looks for
            outcomes.append(error)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "clients still waiting after 60 s"
    failures = [outcome for outcome in outcomes if outcome != 200]
    assert not failures, f"{len(failures)}/{clients} clients failed: {failures[:5]}"
    assert len(outcomes) == clients


# --- answers: bounded, and only from the worker who accepted the assignment --------------------


def test_a_submit_over_the_answer_limit_is_refused_and_stores_nothing(sandbox, mturk):
    hit_id = create_hit(mturk)
    assignment_id = sandbox.accept(hit_id, WORKER)
    submit_url = f"{sandbox.url}/mturk/externalSubmit"
    before = stored_bytes(sandbox)

    # One 4 MB field; a field of bytes that are not UTF-8 (each becomes &#65533;, 8 bytes of
    # XML); the same as a multipart form and as a GET with the answers in the query.
    big = urlencode({"assignmentId": assignment_id, "comment": "a" * (4 * 1024 * 1024 - 100)})
    status, page = post(submit_url, big.encode(), "application/x-www-form-urlencoded")
    assert status == 413 and "Answers too large" in page and "Nothing was stored" in page
    not_utf8 = f"assignmentId={assignment_id}&comment=".encode() + b"\xff" * (MAX_ANSWER_BYTES // 4)
    status, page = post(submit_url, not_utf8, "application/x-www-form-urlencoded")
    assert status == 413 and f"{MAX_ANSWER_BYTES:,} bytes" in page
    multipart = b"".join(
        f'--XX\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in [("assignmentId", assignment_id), ("comment", "b" * MAX_ANSWER_BYTES)]
    )
    multipart += b"--XX--\r\n"
    status, page = post(submit_url, multipart, "multipart/form-data; boundary=XX")
    assert status == 413 and "Answers too large" in page
    status, _, page = http(f"{submit_url}?assignmentId={assignment_id}&c=" + "%FF" * 10_000)
    assert status == 413 and "Answers too large" in page
    # 4 MB of empty fields (each an <Answer> of 70 bytes: 35 MB of XML) is refused unread.
    fields = "&".join(f"f{i}=" for i in range(450_000))
    form = f"assignmentId={assignment_id}&{fields}".encode()
    status, page = post(submit_url, form, "application/x-www-form-urlencoded")
    assert status == 413 and "more than 10000 fields" in page
    parts = b'--XX\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n' * 80_000
    status, page = post(submit_url, parts + b"--XX--\r\n", "multipart/form-data; boundary=XX")
    assert status == 413 and "more than 1000 parts" in page

    assert stored_bytes(sandbox) == before
    assert mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"] == []
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsPending"] == 1

    # The assignment is still the worker's to submit; what is stored grows with the answer.
    comment = "c" * (MAX_ANSWER_BYTES - 1000)
    assert sandbox.submit(assignment_id, {"comment": comment}) == 200
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert len(assignment["Answer"]) <= MAX_ANSWER_BYTES
    assert ET.fromstring(assignment["Answer"]).find(f".//{ANSWERS_NS}FreeText").text == comment
    assert assignment_doc_bytes(sandbox, assignment_id) < len(assignment["Answer"]) + 1000
    assert stored_bytes(sandbox) - before < len(comment) + 2000


def test_answers_hold_only_characters_xml_can_carry(sandbox, mturk):
    hit_id = create_hit(mturk)
    assignment_id = sandbox.accept(hit_id, WORKER)
    body = f"assignmentId={assignment_id}&comment=a%01b%00c%EF%BF%BEd%C3%A9".encode()
    assert (
        post(f"{sandbox.url}/mturk/externalSubmit", body, "application/x-www-form-urlencoded")[0]
        == 200
    )
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    # The requester can parse it: control characters and U+FFFE became U+FFFD.
    text = ET.fromstring(assignment["Answer"]).find(f".//{ANSWERS_NS}FreeText").text
    assert text == "a\ufffdb\ufffdc\ufffdd\u00e9"


def test_a_worker_cannot_submit_another_workers_assignment(sandbox, mturk):
    hit_id = create_hit(mturk)
    mine = sandbox.accept(hit_id, WORKER)
    theirs = sandbox.accept(hit_id, OTHER)
    submit_url = f"{sandbox.url}/mturk/externalSubmit"
    before = stored_bytes(sandbox)

    # As a form field, as a query parameter, and as the question page a browser posts from.
    status, _, page = http(submit_url, {"assignmentId": theirs, "workerId": WORKER, "c": "1"})
    assert status == 403 and "accepted by another worker" in page
    status, _, page = http(f"{submit_url}?workerId={WORKER}", {"assignmentId": theirs, "c": "1"})
    assert status == 403
    question_page = f"{sandbox.url}/hit/{hit_id}/question?" + urlencode(
        {"assignmentId": mine, "hitId": hit_id, "workerId": WORKER, "turkSubmitTo": sandbox.url}
    )
    status, page = post(
        submit_url,
        urlencode({"assignmentId": theirs, "c": "1"}).encode(),
        "application/x-www-form-urlencoded",
        Referer=question_page,
    )
    assert status == 403 and "Not your assignment" in page

    assert stored_bytes(sandbox) == before
    assert mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"] == []

    # Each worker submits their own, from their question page or naming themselves.
    status, _ = post(
        submit_url,
        urlencode({"assignmentId": mine, "c": "1"}).encode(),
        "application/x-www-form-urlencoded",
        Referer=question_page,
    )
    assert status == 200
    status, _, _ = http(submit_url, {"assignmentId": theirs, "workerId": OTHER.lower(), "c": "2"})
    assert status == 200
    listed = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert {a["AssignmentId"]: a["WorkerId"] for a in listed} == {mine: WORKER, theirs: OTHER}


def test_only_an_accepted_assignment_in_time_can_be_submitted(sandbox, mturk):
    hit_id = create_hit(mturk, AssignmentDurationInSeconds=60)
    returned = sandbox.accept(hit_id, WORKER)
    status, _, _ = http(
        f"{sandbox.url}/hit/{hit_id}/return", {"assignmentId": returned, "workerId": WORKER}
    )
    assert status == 303
    assert sandbox.submit(returned, {"c": "1"}) == 400

    late = sandbox.accept(hit_id, OTHER)
    sandbox.admin("clock", {"advance": 61})
    status, _, page = http(f"{sandbox.url}/mturk/externalSubmit", {"assignmentId": late, "c": "1"})
    assert status == 400 and "its time ran out" in page

    done = sandbox.accept(hit_id, "A3THIRDWORKER")
    assert sandbox.submit(done, {"c": "1"}) == 200
    before = stored_bytes(sandbox)
    status, _, page = http(f"{sandbox.url}/mturk/externalSubmit", {"assignmentId": done, "c": "2"})
    assert status == 400 and "already submitted" in page
    assert stored_bytes(sandbox) == before
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert ">1<" in assignment["Answer"]


# --- the requester API: undecodable bodies are client errors botocore does not retry ----------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 1_000 + b"]" * 1_000, id="arrays-1000-deep"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="arrays-100000-deep"),
        pytest.param(b'{"a":' * 1_000 + b"1" + b"}" * 1_000, id="objects-1000-deep"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="objects-100000-deep"),
        pytest.param(b"[" * 100_000, id="unclosed-100000-deep"),
        pytest.param(b'{"HITId": "\xff\xfe"}', id="bad-utf-8"),
        pytest.param(b'["HITId"]', id="top-level-list"),
        pytest.param(b'"HITId"', id="top-level-string"),
        pytest.param(b"null", id="top-level-null"),
        pytest.param(b'{"HITId": ' + b"9" * 100_000 + b"}", id="huge-number"),
        pytest.param(b'{"HITId": NaN}', id="nan"),
        pytest.param(b'{"HITId": "' + b"\\ud800" + b'"}', id="unpaired-surrogate"),
    ],
)
def test_an_undecodable_api_body_is_a_400_request_error(sandbox, body):
    status, content_type, answer = api_post(sandbox, "GetHIT", body)
    assert status == 400
    assert content_type == "application/x-amz-json-1.1"
    error = json.loads(answer)
    assert error["__type"] == "RequestError" and error["Message"]
    assert len(answer) < 4096


def test_botocore_raises_the_400_at_once_without_retrying(sandbox):
    client = boto3.client(
        "mturk",
        endpoint_url=sandbox.url,
        region_name="us-east-1",
        aws_access_key_id="sandbox-test",
        aws_secret_access_key="sandbox-test-secret",
        config=Config(retries={"total_max_attempts": 4, "mode": "standard"}),
    )
    sent = []

    def nest_the_body(request, **_):
        request.body = b"[" * 100_000 + b"]" * 100_000
        request.headers["Content-Length"] = str(len(request.body))
        sent.append(request)

    client.meta.events.register("before-send.mturk.GetAccountBalance", nest_the_body)
    with pytest.raises(ClientError) as raised:
        client.get_account_balance()
    assert raised.value.response["Error"]["Code"] == "RequestError"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    assert len(sent) == 1


def test_values_no_mturk_member_can_hold_are_400s_with_short_messages(sandbox, mturk):
    hit_id = create_hit(mturk)
    cases = {
        "UpdateExpirationForHIT": {"HITId": hit_id, "ExpireAt": 1e300},
        "ListHITs": {"MaxResults": 2**70},
        "CreateHIT": {"Title": "x", "QualificationRequirements": [1] * 500_000},
    }
    for operation, payload in cases.items():
        status, _, answer = api_post(sandbox, operation, json.dumps(payload).encode())
        error = json.loads(answer)
        assert status == 400 and error["__type"] == "RequestError", (operation, error)
        assert len(answer) < 8192, operation
    # A clock moved by NaN or beyond the year 9999 would break every later call.
    for advance in ("nan", 1e300, -1):
        with pytest.raises(Exception, match="400"):
            sandbox.admin("clock", {"advance": advance})
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Assignable"


# --- HTTP framing -----------------------------------------------------------------------------


UNKNOWN_CHARSET = (
    b'--XX\r\nContent-Disposition: form-data; name="assignmentId"\r\n'
    b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n3NOSUCH\r\n--XX--\r\n"
)


def _api_head(**headers: str) -> bytes:
    lines = ["POST / HTTP/1.1", "Host: sandbox", f"X-Amz-Target: {TARGET}GetAccountBalance"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(_api_head(Content_Length="abc") + b"{}", id="content-length-not-a-number"),
        pytest.param(_api_head(Content_Length="-5") + b"{}", id="content-length-negative"),
        pytest.param(_api_head(Content_Length="9" * 30) + b"{}", id="content-length-huge"),
        pytest.param(
            _api_head(Content_Length=str(5 * 1024 * 1024)) + b"{}", id="content-length-over-limit"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            id="content-length-twice",
        ),
        pytest.param(
            _api_head(Transfer_Encoding="chunked") + b"2\r\n{}\r\n0\r\n\r\n", id="chunked"
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: sandbox\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
            id="header-too-long",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: sandbox\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(200))
            + b"\r\n",
            id="too-many-headers",
        ),
        pytest.param(
            b"GET /no/such/page?" + b"a=1&" * 15_000 + b" HTTP/1.1\r\nHost: sandbox\r\n\r\n",
            id="query-of-15000-fields",
        ),
        pytest.param(
            b"GET /no/such/page?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: sandbox\r\n\r\n",
            id="request-line-too-long",
        ),
        pytest.param(
            b"POST /mturk/externalSubmit HTTP/1.1\r\nHost: sandbox\r\n"
            b"Content-Type: multipart/form-data; boundary=XX\r\n"
            + b"Content-Length: %d\r\n\r\n%s"
            % (len(UNKNOWN_CHARSET), UNKNOWN_CHARSET),
            id="multipart-unknown-charset",
        ),
        pytest.param(
            b"POST /admin/faults HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
            id="admin-json-100000-deep",
        ),
    ],
)
def test_malformed_http_is_a_4xx_not_a_500_or_a_hang(sandbox, request_bytes):
    response = raw_exchange(sandbox, request_bytes)
    assert 400 <= status_of(response) < 500, response[:300]
    # The sandbox goes on serving.
    assert http(f"{sandbox.url}/admin/health")[0] == 200


def test_a_refused_body_is_not_read_as_the_next_request(sandbox):
    # Over the limit, the body is never read: the connection closes instead of the body being
    # parsed as a second request on the same connection.
    smuggled = b"GET /admin/health HTTP/1.1\r\nHost: sandbox\r\n\r\n"
    response = raw_exchange(
        sandbox, _api_head(Content_Length=str(5 * 1024 * 1024)) + smuggled, until_closed=True
    )
    assert status_of(response) == 413
    assert b"Connection: close" in response
    assert response.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        '<?xml version="1.0"?>',
        "\ufeff",
        '<?xml-stylesheet href="x"?><!-- a comment -->',
    ],
)
def test_a_question_with_a_document_type_is_refused_before_its_entities_expand(mturk, prefix):
    """An HTMLQuestion may not declare entities: 4 KB of nested entities would otherwise
    expand into megabytes of page on every view of the HIT. The DOCTYPE is refused wherever it
    is (after an XML declaration, a byte order mark, a processing instruction or a comment)."""
    laughs = (
        '<!DOCTYPE HTMLQuestion [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(6))
        + "]>"
    )
    question = prefix + laughs + html_question().replace("Pick one", "&g;", 1)
    with pytest.raises(ClientError) as raised:
        create_hit(mturk, Title="Entities", Question=question)
    assert "<!DOCTYPE>" in raised.value.response["Error"]["Message"]
    assert mturk.list_hits()["NumResults"] == 0
