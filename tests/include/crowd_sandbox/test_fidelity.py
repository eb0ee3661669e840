"""The sandbox is no stricter and no looser than MTurk where MTurk's API reference says what it
does (issue 16, build item 6). Each test quotes its source; the 2017-01-17 reference pages are
``https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_<Name>.html`` and their
text is the same as botocore's service model, which the sandbox validates against."""

from __future__ import annotations

import pytest

from include.crowd_sandbox.qualification_requirements import LOCALE, PERCENT_APPROVED
from include.crowd_sandbox.question_xml import MAX_QUESTION_BYTES
from testsupport.sandbox_process import DAY, error_of, html_question
from testsupport.sandbox_process import create_hit as create

REFERENCE = "https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_"


def _requirement(type_id: str, comparator: str, **values) -> dict:
    return {"QualificationTypeId": type_id, "Comparator": comparator, **values}


def test_locale_values_are_refused_on_integer_qualifications(sandbox, mturk):
    """QualificationRequirement: "LocaleValue can only be used with a Worker_Locale
    QualificationType ID. LocaleValue can only be used with the EqualTo, NotEqualTo, In, and
    NotIn comparators" (REFERENCE + QualificationRequirementDataStructureArticle.html). The
    sandbox once accepted such a requirement and failed (IndexError) when a worker accepted."""
    wrong = [
        _requirement(PERCENT_APPROVED, "GreaterThan", LocaleValues=[{"Country": "US"}]),
        _requirement(LOCALE, "LessThan", LocaleValues=[{"Country": "US"}]),
        _requirement(LOCALE, "GreaterThanOrEqualTo", LocaleValues=[{"Country": "US"}]),
    ]
    for requirement in wrong:
        error = error_of(create, mturk, QualificationRequirements=[requirement])
        assert "Locale" in error["Message"], requirement
    assert mturk.list_hits()["NumResults"] == 0
    # The allowed forms still work, and a worker can accept.
    hit = create(
        mturk,
        QualificationRequirements=[
            _requirement(LOCALE, "In", LocaleValues=[{"Country": "US"}, {"Country": "DE"}])
        ],
    )
    sandbox.work(hit["HITId"], "AGOODWORKER")  # the sandbox's default worker is in the US


def test_qualification_requirement_limits_follow_mturk(mturk):
    """CreateHIT: "A HIT can have between zero and ten Qualification requirements"
    (REFERENCE + CreateHITOperation.html); QualificationRequirement: with In or NotIn "you can
    use up to 15 IntegerValue elements" and "up to 30 LocaleValue elements"
    (REFERENCE + QualificationRequirementDataStructureArticle.html)."""
    eleven = [_requirement(PERCENT_APPROVED, "GreaterThan", IntegerValues=[i]) for i in range(11)]
    assert (
        "10 Qualification" in error_of(create, mturk, QualificationRequirements=eleven)["Message"]
    )
    create(mturk, QualificationRequirements=eleven[:10])
    sixteen = _requirement(PERCENT_APPROVED, "In", IntegerValues=list(range(16)))
    assert "15" in error_of(create, mturk, QualificationRequirements=[sixteen])["Message"]
    create(mturk, QualificationRequirements=[{**sixteen, "IntegerValues": list(range(15))}])
    places = [{"Country": chr(65 + i // 26) + chr(65 + i % 26)} for i in range(31)]
    many = _requirement(LOCALE, "NotIn", LocaleValues=places)
    assert "30" in error_of(create, mturk, QualificationRequirements=[many])["Message"]
    create(mturk, QualificationRequirements=[{**many, "LocaleValues": places[:30]}])


def test_a_rejection_can_be_overridden_only_within_30_days_of_submission_and_before_delete(
    sandbox, mturk
):
    """ApproveAssignment: overriding a rejection "only works on rejected assignments that were
    submitted within the previous 30 days and only if the assignment's related HIT has not been
    deleted" (REFERENCE + ApproveAssignmentOperation.html); DeleteHIT: "After you dispose of a
    HIT, you can no longer approve the HIT's rejected assignments"
    (REFERENCE + DeleteHITOperation.html). The window runs from the submission, not from the
    rejection."""
    hit_id = create(
        mturk, MaxAssignments=2, LifetimeInSeconds=60 * DAY, AutoApprovalDelayInSeconds=30 * DAY
    )["HITId"]
    late, recent = (sandbox.work(hit_id, f"AWORKER{n}") for n in "AB")
    sandbox.admin("clock", {"advance": 29 * DAY})
    mturk.reject_assignment(AssignmentId=late, RequesterFeedback="wrong")
    mturk.reject_assignment(AssignmentId=recent, RequesterFeedback="wrong")
    mturk.approve_assignment(AssignmentId=recent, OverrideRejection=True)  # day 29: allowed
    sandbox.admin("clock", {"advance": 2 * DAY})  # day 31 after submission, 2 after rejection
    error = error_of(mturk.approve_assignment, AssignmentId=late, OverrideRejection=True)
    assert "submitted within the previous 30 days" in error["Message"]
    assert mturk.get_assignment(AssignmentId=late)["Assignment"]["AssignmentStatus"] == "Rejected"

    other = create(mturk, MaxAssignments=1, Title="Another")["HITId"]
    rejected = sandbox.work(other, "AWORKERD")
    mturk.reject_assignment(AssignmentId=rejected, RequesterFeedback="wrong")
    mturk.update_expiration_for_hit(HITId=other, ExpireAt=0)
    mturk.delete_hit(HITId=other)
    error = error_of(mturk.approve_assignment, AssignmentId=rejected, OverrideRejection=True)
    assert "deleted" in error["Message"]


def test_delete_hit_needs_the_reviewable_status_not_reviewing(sandbox, mturk):
    """DeleteHIT: "You can only dispose of HITs that are in the Reviewable state ... If you call
    the DeleteHIT operation on a HIT that is not in the Reviewable state ... the service will
    return an error" (REFERENCE + DeleteHITOperation.html). A HIT marked Reviewing
    (UpdateHITReviewStatus) is reverted before it is deleted."""
    hit_id = create(mturk, MaxAssignments=1)["HITId"]
    mturk.approve_assignment(AssignmentId=sandbox.work(hit_id, "AWORKERONE"))
    mturk.update_hit_review_status(HITId=hit_id, Revert=False)
    error = error_of(mturk.delete_hit, HITId=hit_id)
    assert "currently in the state 'Reviewing'" in error["Message"]
    mturk.update_hit_review_status(HITId=hit_id, Revert=True)
    mturk.delete_hit(HITId=hit_id)
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Disposed"


def test_list_bonus_payments_takes_either_id_or_both(sandbox, mturk):
    """ListBonusPayments: HITId "... Either the HITId parameter or the AssignmentId parameter
    must be specified"; AssignmentId: "If specified, only bonus payments for the given
    assignment are returned" (REFERENCE + ListBonusPaymentsOperation.html). Giving both is no
    error: the assignment's bonuses come back. Only an assignment of another HIT is refused
    (the sandbox's reading)."""
    hit_id = create(mturk, MaxAssignments=2)["HITId"]
    one, two = sandbox.work(hit_id, "AWORKERONE"), sandbox.work(hit_id, "AWORKERTWO")
    for assignment, worker in ((one, "AWORKERONE"), (two, "AWORKERTWO")):
        mturk.send_bonus(
            WorkerId=worker,
            BonusAmount="0.10",
            AssignmentId=assignment,
            Reason="gold",
            UniqueRequestToken=f"bonus-{assignment}",
        )
    both = mturk.list_bonus_payments(HITId=hit_id, AssignmentId=one)["BonusPayments"]
    assert [b["AssignmentId"] for b in both] == [one]
    assert mturk.list_bonus_payments(HITId=hit_id)["NumResults"] == 2
    other = create(mturk, MaxAssignments=1, Title="Another")["HITId"]
    error = error_of(mturk.list_bonus_payments, HITId=other, AssignmentId=one)
    assert "does not belong" in error["Message"]
    assert "HITId or AssignmentId" in error_of(mturk.list_bonus_payments)["Message"]


def test_a_question_over_65535_bytes_is_refused(mturk):
    """CreateHIT's Question: "The XML question data must not be larger than 64 kilobytes
    (65,535 bytes) in size, including whitespace" (REFERENCE + CreateHITOperation.html).
    65,535 bytes pass; 65,536 are refused."""
    assert MAX_QUESTION_BYTES == 65_535
    base = html_question("x")
    padded = html_question("x" * (65_535 - len(base) + 1))
    assert len(padded.encode()) == 65_535
    create(mturk, Question=padded)
    too_big = html_question("x" * (65_535 - len(base) + 2))
    error = error_of(create, mturk, Question=too_big)
    assert "65535" in error["Message"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://tasks.example.org/hit?batch=7", True),
        ("http://127.0.0.1:8000/task", True),
        ("http://localhost/task", True),
        ("http://tasks.example.org/hit", False),
        ("http://127.0.0.1.example.org/task", False),
        ("ftp://tasks.example.org/hit", False),
        ("javascript:alert(1)", False),
        ("https://", False),
    ],
)
def test_an_external_question_needs_an_https_url(mturk, url, allowed):
    """ExternalQuestion: "This URL must use the HTTPS protocol"
    (REFERENCE + ExternalQuestionArticle.html). The sandbox also takes http on 127.0.0.1 and
    localhost, for pages served on this machine (its own exception)."""
    question = (
        '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
        'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
        f"<ExternalURL>{url.replace('&', '&amp;')}</ExternalURL>"
        "<FrameHeight>400</FrameHeight></ExternalQuestion>"
    )
    if allowed:
        create(mturk, Question=question)
    else:
        assert "https" in error_of(create, mturk, Question=question)["Message"]


def test_system_qualification_types_can_be_looked_up_and_listed(mturk):
    """ListQualificationTypes: MustBeRequestable "If false, all Qualification types, including
    those managed by the system, are considered"; MustBeOwnedByCaller "If false, the operation
    returns all Qualification types" (REFERENCE + ListQualificationTypesOperation.html);
    GetQualificationType "retrieves information about a Qualification type using its ID"
    (REFERENCE + GetQualificationTypeOperation.html). System types are found by id and listed,
    but cannot be assigned: AssociateQualificationWithWorker "You can only assign a
    Qualification of a Qualification type that you created"."""
    found = mturk.get_qualification_type(QualificationTypeId=PERCENT_APPROVED)
    assert found["QualificationType"]["Name"] == "PercentAssignmentsApproved"
    assert found["QualificationType"]["IsRequestable"] is False
    own = mturk.create_qualification_type(
        Name="Gold", Description="Passed gold", QualificationTypeStatus="Active"
    )["QualificationType"]["QualificationTypeId"]
    listed = mturk.list_qualification_types(MustBeRequestable=False, MaxResults=100)
    ids = [q["QualificationTypeId"] for q in listed["QualificationTypes"]]
    assert PERCENT_APPROVED in ids and LOCALE in ids and own in ids
    owned = mturk.list_qualification_types(
        MustBeRequestable=False, MustBeOwnedByCaller=True, MaxResults=100
    )
    assert [q["QualificationTypeId"] for q in owned["QualificationTypes"]] == [own]
    requestable = mturk.list_qualification_types(MustBeRequestable=True, MaxResults=100)
    assert [q["QualificationTypeId"] for q in requestable["QualificationTypes"]] == [own]
    # Query searches the description too.
    by_text = mturk.list_qualification_types(
        MustBeRequestable=False, Query="mailing address", MaxResults=100
    )
    assert [q["QualificationTypeId"] for q in by_text["QualificationTypes"]] == [LOCALE]
    error = error_of(
        mturk.associate_qualification_with_worker,
        QualificationTypeId=PERCENT_APPROVED,
        WorkerId="AWORKERONE",
        IntegerValue=100,
    )
    assert "System qualifications" in error["Message"]


def test_associating_a_qualification_notifies_the_worker_unless_told_not_to(sandbox, mturk):
    """AssociateQualificationWithWorker's SendNotification: "Specifies whether to send a
    notification email message to the Worker saying that the qualification was assigned to
    the Worker. Note: this is true by default"
    (REFERENCE + AssociateQualificationWithWorkerOperation.html)."""
    type_id = mturk.create_qualification_type(
        Name="Trusted", Description="Trusted worker", QualificationTypeStatus="Active"
    )["QualificationType"]["QualificationTypeId"]
    mturk.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId="AWORKERONE", IntegerValue=1
    )
    mturk.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId="AWORKERTWO", IntegerValue=1, SendNotification=False
    )
    for worker, told in (("AWORKERONE", True), ("AWORKERTWO", False)):
        status, _, outbox = sandbox.page(f"/outbox?workerId={worker}")
        assert status == 200
        assert ("granted the qualification Trusted" in outbox) is told, worker
