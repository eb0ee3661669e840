"""MTurkHook against the crowd sandbox (endpoint from the connection extra) and offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from mturk_provider.hooks.mturk import MTURK_ENDPOINTS, MTurkHook
from plugins.mturk_testing import WORKERS, connection_json, create_hit


def test_connection_extra_points_mturk_at_the_crowd_sandbox(crowd, hook):
    assert hook.conn.meta.endpoint_url == crowd.url
    # The connection says eu-west-1 (for S3, say); MTurk only exists in us-east-1.
    assert hook.conn.meta.region_name == "us-east-1"
    assert hook.get_account_balance()["AvailableBalance"] == "10000.00"
    hit_id = create_hit(hook)
    assert hook.get_hit(hit_id)["HIT"]["HITStatus"] == "Assignable"
    assert hook.preview_url(hit_id, "TYPE") == f"{crowd.url}/hit/{hit_id}"
    status, _, page = crowd.page(f"/hit/{hit_id}")
    assert status == 200 and "Pick" in page


@pytest.mark.parametrize(
    ("environment", "endpoint", "preview"),
    [
        (
            "sandbox",
            "https://mturk-requester-sandbox.us-east-1.amazonaws.com",
            "https://workersandbox.mturk.com/mturk/preview?groupId=TYPE1",
        ),
        (
            "production",
            "https://mturk-requester.us-east-1.amazonaws.com",
            "https://worker.mturk.com/mturk/preview?groupId=TYPE1",
        ),
    ],
)
def test_environment_chooses_the_endpoint_when_the_connection_names_none(
    monkeypatch, environment, endpoint, preview
):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json())
    hook = MTurkHook(environment=environment)
    assert hook.conn.meta.endpoint_url == endpoint  # built without a network call
    assert hook.conn.meta.region_name == "us-east-1"
    assert hook.preview_url("HIT1", "TYPE1") == preview


def test_connection_override_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json("http://127.0.0.1:1"))
    hook = MTurkHook(environment="production")
    assert hook.conn.meta.endpoint_url == "http://127.0.0.1:1"
    assert hook.preview_url("HIT1", "TYPE1") == "http://127.0.0.1:1/hit/HIT1"


def test_an_override_to_the_real_sandbox_still_previews_on_mturk(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(MTURK_ENDPOINTS["sandbox"]))
    preview = MTurkHook(environment="production").preview_url("HIT1", "TYPE1")
    assert preview == "https://workersandbox.mturk.com/mturk/preview?groupId=TYPE1"


def test_unknown_environment_or_region_is_refused():
    with pytest.raises(ValueError, match="environment"):
        MTurkHook(environment="prod")
    with pytest.raises(ValueError, match="us-east-1"):
        MTurkHook(region_name="eu-west-1")


def test_retries_are_adaptive_unless_the_connection_sets_them(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", connection_json(config_kwargs={"connect_timeout": 7})
    )
    config = MTurkHook(max_attempts=4).conn.meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 4}
    assert config.connect_timeout == 7  # the connection's other settings are kept

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        connection_json(config_kwargs={"retries": {"mode": "standard", "max_attempts": 2}}),
    )
    # botocore counts max_attempts as retries after the first attempt.
    retries = MTurkHook().conn.meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 3}


def test_adaptive_retries_get_through_30_percent_throttling(crowd_factory):
    crowd = crowd_factory("--throttle-rate", "0.3", "--fault-seed", "3")
    # A client that does not retry fails on the first throttled call...
    plain = crowd.client()
    with pytest.raises(ClientError, match="Throttling"):
        for _ in range(20):
            plain.get_account_balance()

    # ...the hook's calls all succeed.
    hook = MTurkHook()
    hit_ids = [create_hit(hook, title=f"Pick {n}") for n in range(3)]
    for hit_id in hit_ids:
        assert hook.get_hit(hit_id)["HIT"]["HITId"] == hit_id
    assert len(list(hook.list_hits())) == 3
    assert crowd.admin("faults")["injected"]["throttle"] >= 2


def test_list_assignments_reads_every_page_beyond_100(hook, crowd):
    hit_id = create_hit(hook, assignments=101)
    submitted = {crowd.work(hit_id, worker) for worker in WORKERS[:101]}
    assignments = hook.list_assignments_for_hit(hit_id)
    assert {a["AssignmentId"] for a in assignments} == submitted
    assert len(hook.list_assignments_for_hit(hit_id, statuses=["Approved"])) == 0


def test_list_hits_reads_every_page(hook):
    created = {create_hit(hook, title=f"Pick {n}") for n in range(23)}
    assert {hit["HITId"] for hit in hook.list_hits(page_size=10)} == created


def test_review_calls_change_what_the_crowd_sees(hook, crowd):
    hit_id = create_hit(hook, assignments=3, lifetime=600)
    first, second, third = (crowd.work(hit_id, worker) for worker in WORKERS[:3])

    hook.approve_assignment(first, requester_feedback="Thanks")
    hook.reject_assignment(second, requester_feedback="Wrong gold answer")
    hook.approve_assignment(second, override_rejection=True)
    hook.approve_assignment(third)
    hook.send_bonus(WORKERS[0], first, "0.10", "Gold answer right", "bonus-" + first)
    with pytest.raises(ClientError, match="already granted"):  # MTurk's answer to a repeat
        hook.send_bonus(WORKERS[0], first, "0.10", "Gold answer right", "bonus-" + first)
    answer = hook.notify_workers("Your answer", "The gold answer was wrong.", [WORKERS[1]])
    assert answer["NotifyWorkersFailureStatuses"] == []

    statuses = {
        a["AssignmentId"]: a["AssignmentStatus"] for a in hook.list_assignments_for_hit(hit_id)
    }
    assert statuses == {first: "Approved", second: "Approved", third: "Approved"}
    bonuses = hook.get_conn().list_bonus_payments(HITId=hit_id)["BonusPayments"]
    assert [(b["WorkerId"], b["BonusAmount"]) for b in bonuses] == [(WORKERS[0], "0.10")]
    assert WORKERS[1] in crowd.page("/outbox")[2]

    hook.update_expiration_for_hit(hit_id, datetime.now(UTC) - timedelta(minutes=1))
    assert hook.get_hit(hit_id)["HIT"]["HITStatus"] == "Reviewable"
    hook.delete_hit(hit_id)
    assert hit_id not in {hit["HITId"] for hit in hook.list_hits()}


def test_notify_workers_refuses_more_than_100_workers(hook):
    with pytest.raises(ValueError, match="at most 100"):
        hook.notify_workers("s", "m", WORKERS[:101])


def test_get_or_create_qualification_type_matches_the_exact_name(hook, crowd):
    gold_v2 = hook.get_or_create_qualification_type("Gold v2", "Passed gold v2")
    gold = hook.get_or_create_qualification_type("Gold", "Passed gold")
    assert gold["QualificationTypeId"] != gold_v2["QualificationTypeId"]
    again = hook.get_or_create_qualification_type("Gold", "ignored")
    assert again["QualificationTypeId"] == gold["QualificationTypeId"]
    listed = hook.get_conn().list_qualification_types(
        MustBeRequestable=False, MustBeOwnedByCaller=True, MaxResults=100
    )
    names = [q["Name"] for q in listed["QualificationTypes"]]
    assert sorted(names) == ["Gold", "Gold v2"]

    hook.associate_qualification_with_worker(gold["QualificationTypeId"], WORKERS[0], 90)
    score = hook.get_conn().get_qualification_score(
        QualificationTypeId=gold["QualificationTypeId"], WorkerId=WORKERS[0]
    )
    assert score["Qualification"]["IntegerValue"] == 90


def test_none_arguments_are_left_out(hook, crowd):
    hit_id = create_hit(hook)
    assignment_id = crowd.work(hit_id, WORKERS[0])
    # RequesterFeedback=None would fail botocore's validation if it were sent.
    hook.approve_assignment(assignment_id, requester_feedback=None, override_rejection=None)
    assignment = hook.get_conn().get_assignment(AssignmentId=assignment_id)["Assignment"]
    assert assignment["AssignmentStatus"] == "Approved"


def test_assignment_bonus_and_revocation_reads(hook, crowd):
    hit_id = create_hit(hook, assignments=2)
    first, second = (crowd.work(hit_id, worker) for worker in WORKERS[:2])
    assert hook.get_assignment(first)["Assignment"]["AssignmentStatus"] == "Submitted"
    hook.approve_assignment(first)
    hook.send_bonus(WORKERS[0], first, "0.07", "Gold answer right", "bonus-" + first)
    assert [b["BonusAmount"] for b in hook.list_bonus_payments(first)] == ["0.07"]
    assert hook.list_bonus_payments(second) == []

    qualification = hook.get_or_create_qualification_type("Excluded", "Failed gold")
    type_id = qualification["QualificationTypeId"]
    hook.associate_qualification_with_worker(type_id, WORKERS[0], 1)
    hook.disassociate_qualification_from_worker(type_id, WORKERS[0], reason="A second chance")
    score = hook.get_conn().get_qualification_score(
        QualificationTypeId=type_id, WorkerId=WORKERS[0]
    )
    assert score["Qualification"]["Status"] == "Revoked"
