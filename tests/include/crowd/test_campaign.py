"""A standing campaign: runs of one batch over growing folders, through the crowd stage's own
publish, create and review steps against moto's S3 server and the crowd sandbox (127.0.0.1).

A rerun creates HITs only for queries that have none, reviews everything that came in and pays
nobody twice; a query whose matches changed is asked again only when the run says so."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.common.batch import PER_RUN, batch_id_for, campaign_id, check_batch_id
from include.crowd import history, stage
from include.crowd.create import load_manifest
from include.crowd.mturk.fees import FEES
from testsupport.crowd_batch import build_sources, write_batch
from testsupport.crowd_plans import crowd_settings
from testsupport.motokit import s3_client
from testsupport.platforms import mturk_platform

BATCH = "campaign-queries-0123456789abcdef"
SOURCES = {"dataset": "/data/frames", "queries": "/data/queries", "known_answers": "/data/known"}


# --- the campaign's id ------------------------------------------------------------------------


def test_a_campaign_id_is_stable_and_tells_dags_sources_and_environments_apart():
    first = campaign_id("image_similarity_mturk", "sandbox", SOURCES)
    assert first == campaign_id(
        "image_similarity_mturk", "sandbox", dict(reversed(SOURCES.items()))
    )
    assert first.startswith("campaign-queries-") and check_batch_id(first) == first
    others = {
        campaign_id("other_dag", "sandbox", SOURCES),
        campaign_id("image_similarity_mturk", "production", SOURCES),
        campaign_id("image_similarity_mturk", "sandbox", {**SOURCES, "dataset": "/data/other"}),
        campaign_id("image_similarity_mturk", "sandbox", {**SOURCES, "known_answers": "/k"}),
    }
    assert first not in others and len(others) == 4


@pytest.mark.parametrize(
    "queries",
    ["gdrive://1AbC-_x", "/a/b/c/", "C:\\data\\q", "../../..", "😀 quer/ies\n", "x" * 500, ""],
)
def test_a_campaign_id_is_a_safe_batch_id_whatever_the_folder_is_called(queries):
    made = campaign_id("dag", "sandbox", {**SOURCES, "queries": queries})
    assert check_batch_id(made) == made and len(made) <= 64
    assert "/" not in made and "\\" not in made and not made.startswith(".")


def test_the_batch_param_picks_the_campaign_a_named_batch_or_a_batch_per_run():
    run = "scheduled__2026-12-02T00:00:00+00:00"
    assert batch_id_for("", run, "campaign-x-1") == "campaign-x-1"
    assert batch_id_for(None, run, "campaign-x-1") == "campaign-x-1"
    assert batch_id_for("mine", run, "campaign-x-1") == "mine"
    assert batch_id_for(PER_RUN, run, "campaign-x-1") == "scheduled__2026-12-02T00_00_00_00_00"
    with pytest.raises(ValueError, match="Param batch_id"):
        batch_id_for("../x", run, "campaign-x-1")


# --- runs of one campaign -------------------------------------------------------------------


@pytest.fixture
def campaign(tmp_path, s3_endpoint, crowd):
    s3 = s3_client(s3_endpoint, signature_version="s3v4")
    bucket = f"campaign-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-")
    s3.create_bucket(Bucket=bucket)
    settings = crowd_settings(
        BATCH, s3_bucket=bucket, assignments_per_hit=3, budget_usd=None, reward_usd="0.05"
    )
    sources = build_sources(tmp_path / "sources", queries=4, dataset=12, gold_sets=2)
    return Campaign(
        tmp_path / "batch", s3, crowd, mturk_platform(crowd.client()), settings, sources
    )


class Campaign:
    def __init__(self, batch_dir, s3, crowd, platform, settings, sources):
        self.batch_dir, self.s3, self.crowd = batch_dir, s3, crowd
        self.platform, self.settings, self.sources = platform, settings, sources
        self.mturk = crowd.client()

    def run(self, queries: int, *, shift: int = 0, reask_changed: bool = False):
        """One run of the campaign's crowd stage: publish, create, answer, review."""
        write_batch(self.batch_dir, self.sources, queries, shift=shift)
        stage.publish(self.batch_dir, self.s3, self.settings)
        plans = stage.create(
            self.batch_dir,
            self.s3,
            self.platform,
            self.settings,
            exclusion_id=None,
            reask_changed=reask_changed,
        )
        for n, plan in enumerate(plans):
            done = self.mturk.list_assignments_for_hit(HITId=plan.hit_id)["Assignments"]
            workers = {a["WorkerId"] for a in done}
            right = plan.gold.correct_position
            wrong = next(o.position for o in plan.gold.options if o.position != right)
            for worker, gold in (("APASS1", str(right)), (f"AFAIL{n}", str(wrong))):
                if worker not in workers:
                    self.crowd.work(
                        plan.hit_id, worker, {plan.gold.field: gold, plan.model.field: "1"}
                    )
        stage.review(self.s3, self.platform, self.settings, caps=stage.PaymentCaps("1.00", None))
        return plans

    def hits(self) -> list[dict]:
        pages, token = [], None
        while True:
            page = self.mturk.list_hits(**({"NextToken": token} if token else {}))
            pages += [h for h in page["HITs"] if h.get("RequesterAnnotation") == BATCH]
            token = page.get("NextToken")
            if not token:
                return pages

    def bonuses(self) -> Counter:
        paid = Counter()
        for hit in self.hits():
            for bonus in self.mturk.list_bonus_payments(HITId=hit["HITId"])["BonusPayments"]:
                paid[bonus["AssignmentId"]] += 1
        return paid


def test_a_rerun_with_a_new_query_creates_one_hit_and_pays_nobody_twice(campaign):
    first = campaign.run(3)
    assert len(first) == 3 and len(campaign.hits()) == 3
    paid_first = campaign.bonuses()
    assert sum(paid_first.values()) == 3 and set(paid_first.values()) == {1}

    second = campaign.run(4)  # a query was added to the folder
    hits = campaign.hits()
    assert len(hits) == 4, "exactly one new HIT"
    assert {p.hit_id for p in first} < {p.hit_id for p in second}
    paid = campaign.bonuses()
    assert sum(paid.values()) == 4 and set(paid.values()) == {1}, "nobody paid twice"
    assert {a: paid[a] for a in paid_first} == paid_first
    assert len(load_manifest(stage.ledger_for(campaign.s3, campaign.settings))) == 4

    third = campaign.run(4)  # nothing new: nothing created, nothing paid
    assert [p.hit_id for p in third] == [p.hit_id for p in second]
    assert campaign.bonuses() == paid


def test_changed_matches_get_a_new_hit_only_when_the_run_says_so(campaign):
    first = campaign.run(3)
    same = campaign.run(3, shift=1)  # the dataset grew: other matches, not asked again
    assert [p.hit_id for p in same] == [p.hit_id for p in first]
    assert len(campaign.hits()) == 3

    asked = campaign.run(3, shift=1, reask_changed=True)
    assert len(campaign.hits()) == 6
    assert not {p.hit_id for p in asked} & {p.hit_id for p in first}
    assert {p.query.sha256 for p in asked} == {p.query.sha256 for p in first}
    again = campaign.run(3, shift=1, reask_changed=True)  # unchanged since: nothing new
    assert [p.hit_id for p in again] == [p.hit_id for p in asked]
    assert len(campaign.hits()) == 6
    manifest = load_manifest(stage.ledger_for(campaign.s3, campaign.settings))
    assert len(manifest) == 6  # the first HITs stay in the batch: reviewed, paid, reported
    paid = campaign.bonuses()
    assert sum(paid.values()) == 6 and set(paid.values()) == {1}


# --- the results' history -------------------------------------------------------------------


def write_results(campaign, when: str) -> dict:
    stamp = datetime.strptime(when, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return stage.results(campaign.batch_dir, campaign.s3, campaign.settings, FEES, now=stamp)


def snapshot_keys(campaign) -> set[str]:
    ledger = stage.ledger_for(campaign.s3, campaign.settings)
    listed = campaign.s3.list_objects_v2(
        Bucket=ledger.bucket, Prefix=ledger.key(history.HISTORY + "/")
    )
    return {item["Key"][len(ledger.key("")) :] for item in listed.get("Contents", [])}


def test_each_results_write_keeps_a_snapshot_and_the_report_says_what_changed(campaign):
    campaign.run(3)
    first = write_results(campaign, "20261202T100000Z")
    assert first["snapshot"] == "20261202T100000Z"
    doc = json.loads(Path(first["json"]).read_text())
    assert doc["history"] == {
        "snapshot": "20261202T100000Z",
        "snapshots": 1,
        "previous": None,
        "since_previous": None,
    }

    campaign.run(4)
    second = write_results(campaign, "20261202T110000Z")
    doc = json.loads(Path(second["json"]).read_text())
    assert doc["history"]["snapshots"] == 2
    assert doc["history"]["previous"] == "20261202T100000Z"
    since = doc["history"]["since_previous"]
    assert since["new"] == ["query_03.jpg"] and since["changed_count"] == 0
    assert since["unchanged"] == 3
    again = write_results(campaign, "20261202T110000Z")  # the same second: its own snapshot
    assert again["snapshot"] == "20261202T110000Z-2"

    names = ("results.json", "results.csv", "report.html")
    stamps = ("20261202T100000Z", "20261202T110000Z", "20261202T110000Z-2")
    assert snapshot_keys(campaign) == {f"results/history/{s}/{n}" for s in stamps for n in names}
    local = campaign.batch_dir / "results" / "history"
    assert sorted(p.name for p in local.iterdir()) == sorted(stamps)
    assert (local / "20261202T100000Z" / "results.json").read_bytes() == (
        campaign.s3.get_object(
            Bucket=campaign.settings.storage.bucket,
            Key=stage.ledger_for(campaign.s3, campaign.settings).key(
                "results/history/20261202T100000Z/results.json"
            ),
        )["Body"].read()
    )
    report = Path(again["html"]).read_text()
    assert "History" in report and "since 20261202T110000Z:" in report
    assert ">3<" in report.replace(" ", "")


def test_a_damaged_previous_snapshot_is_named_and_compared_with_nothing(campaign, caplog):
    campaign.run(3)
    write_results(campaign, "20261202T100000Z")
    ledger = stage.ledger_for(campaign.s3, campaign.settings)
    ledger.put_bytes("results/history/20261202T100000Z/results.json", b"{not json", "text/plain")
    ledger.put_bytes("results/history/not-a-stamp/results.json", b"{}", "application/json")
    second = write_results(campaign, "20261202T120000Z")
    doc = json.loads(Path(second["json"]).read_text())
    assert doc["history"]["snapshots"] == 2  # the foreign folder is not a snapshot
    assert doc["history"]["since_previous"]["new"] == [
        "query_00.jpg",
        "query_01.jpg",
        "query_02.jpg",
    ]
    assert "cannot be read" in caplog.text


def results_doc(*entries) -> dict:
    return {
        "queries": [
            {"query": q, "hit_id": h, "query_sha256": h, "winner": w, "status": "decided"}
            for q, h, w in entries
        ]
    }


def test_compare_names_new_queries_and_changed_winners_and_ignores_garbage():
    before = results_doc(("a.jpg", "H1", "f1.jpg"), ("b.jpg", "H2", None), ("c.jpg", "H3", "f3"))
    now = results_doc(
        ("a.jpg", "H1", "none"), ("b.jpg", "H2", "f2.jpg"), ("c.jpg", "H3", "f3"), ("d", "H4", None)
    )
    since = history.compare(before, now)
    assert since["new"] == ["d"] and since["unchanged"] == 1 and since["changed_count"] == 2
    assert since["changed"] == [
        {"query": "a.jpg", "hit_id": "H1", "before": "f1.jpg", "after": "none"},
        {"query": "b.jpg", "hit_id": "H2", "before": None, "after": "f2.jpg"},
    ]
    for garbage in (
        None,
        [],
        "x",
        {"queries": "x"},
        {"queries": [1, {"hit_id": 5}, {"winner": 3}]},
    ):
        assert history.compare(garbage, now)["changed_count"] == 0
