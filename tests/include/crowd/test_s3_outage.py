"""S3 goes away in the middle of a review: the step fails with a clear message after the
client's retries, and once S3 is back the retried step finishes without paying or mailing
anyone twice. moto's server is stopped and started again on the same port (its data lives in
the test process, so it survives, as S3's does)."""

from __future__ import annotations

import socket
import sqlite3
from collections import Counter

import pytest

from include.crowd.create import create_hits, load_manifest
from include.crowd.ledger import LedgerUnavailable, S3Ledger
from include.crowd.mturk import FEES
from include.crowd.review import review_batch, spent
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.crowd_plans import REVIEW, SETTINGS, answer_two_pass_one_fail, plans_for, render
from testsupport.motokit import s3_client
from testsupport.platforms import mturk_platform

BUCKET = "outage"
QUERIES = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()

    class Control:
        url = f"http://127.0.0.1:{port}"
        up = True

        def stop(self):
            servers[-1].stop()
            self.up = False

        def start(self):
            servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            servers[-1].start()
            self.up = True

    control = Control()
    yield control
    if control.up:
        servers[-1].stop()


@pytest.fixture
def crowd(tmp_path):
    running = sandbox_fixtures.start_sandbox(tmp_path / "sandbox.sqlite")
    yield running
    running.stop()


def test_s3_down_mid_review_fails_clearly_and_the_retry_finishes_exactly_once(
    s3_server, crowd, monkeypatch
):
    s3 = s3_client(s3_server.url, retries={"mode": "standard", "total_max_attempts": 3})
    s3.create_bucket(Bucket=BUCKET)
    mturk = crowd.client()
    ledger = S3Ledger(s3, BUCKET, "image-similarity", "outage")
    created = create_hits(
        mturk_platform(mturk), plans_for("outage", QUERIES), ledger, SETTINGS, render
    )
    answer_two_pass_one_fail(crowd, created)
    before = sandbox_fixtures.account_cents(mturk)

    # S3 disappears after the review has recorded 5 facts (some MTurk calls are done by then).
    real_put, writes = ledger.put, Counter()

    def put_then_fail(kind, key, doc):
        real_put(kind, key, doc)
        writes["n"] += 1
        if writes["n"] == 5:
            s3_server.stop()

    monkeypatch.setattr(ledger, "put", put_then_fail)
    plans = load_manifest(ledger)
    with pytest.raises(LedgerUnavailable, match=r"S3 is unavailable: could not write s3://outage/"):
        review_batch(mturk_platform(mturk), plans, ledger, REVIEW)
    with pytest.raises(LedgerUnavailable, match="Nothing is lost"):  # still down: same message
        review_batch(mturk_platform(mturk), plans, ledger, REVIEW)

    s3_server.start()
    monkeypatch.setattr(ledger, "put", real_put)
    review_batch(mturk_platform(mturk), plans, ledger, REVIEW)

    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        bonuses = Counter(db.execute("SELECT hit_id, worker_id FROM bonuses").fetchall())
        mails = Counter(w for (w,) in db.execute("SELECT worker_id FROM messages"))
        statuses = [
            s
            for (s,) in db.execute(
                "SELECT json_extract(doc, '$.AssignmentStatus') FROM assignments"
            )
        ]
    assert statuses == ["Approved"] * 3 * QUERIES
    assert set(bonuses) == {(p.hit_id, w) for p in plans for w in ("APASS1", "APASS2")}
    assert set(bonuses.values()) == {1}
    assert mails == Counter({f"AFAIL{n}": 1 for n in range(QUERIES)})
    assert len(ledger.entries("reviews")) == 3 * QUERIES
    charged = before - sandbox_fixtures.account_cents(mturk)
    assert charged == spent(ledger, REVIEW, FEES)["total_cents"]
