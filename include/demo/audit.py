"""Audit a batch against the crowd sandbox's own state, independently of the product's ledger.

Reads the sandbox (boto3 for HITs, assignments and bonuses; its state file for the e-mails,
which MTurk's API cannot list) and the batch's manifest and results, and checks:

- every submitted assignment of the batch is approved;
- each worker who answered the gold question right got exactly one bonus for that HIT, and
  nobody else got one;
- each HIT whose gold question a worker answered wrong is named in exactly one of the e-mails
  to that worker (counting a list cut to "and N more"), and nobody else got one (the no-bonus
  message an e-mail starts with identifies it);
- the report's votes per query equal the votes counted from the sandbox's answers.

Gold correctness and votes are recomputed here from the raw ``QuestionFormAnswers`` and the
manifest's option positions, not taken from the review's records.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from include.crowd.records import NONE_OF_THESE, HitPlan
from include.crowd_sandbox.store import Store

_NAMED_HIT = re.compile(r"^- HIT (\S+): bonus of ", re.MULTILINE)
_MORE_HITS = re.compile(r"^- and (\d+) more HITs?: ", re.MULTILINE)


@dataclass
class AuditReport:
    hits: int = 0
    assignments: int = 0
    approved: int = 0
    gold_passed: int = 0
    gold_failed: int = 0
    bonuses: int = 0
    emails: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = (
            f"{self.hits} HITs, {self.assignments} assignments ({self.approved} approved), "
            f"gold passed {self.gold_passed} / failed {self.gold_failed}, "
            f"{self.bonuses} bonuses, {self.emails} e-mails"
        )
        if self.ok:
            return [head, "audit: OK (every rule holds)"]
        return [head, *(f"audit: PROBLEM {p}" for p in self.problems)]


def _answers(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml.encode("utf-8"))
    found = {}
    for answer in root:
        parts = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in answer}
        found[parts.get("QuestionIdentifier", "")] = parts.get("FreeText", "")
    return found


def audit_batch(
    mturk,
    state_file: Path,
    plans: list[HitPlan],
    results: dict,
    *,
    no_bonus_message: str,
) -> AuditReport:
    report = AuditReport(hits=len(plans))
    store = Store(state_file)
    try:
        messages = [m for m in store.messages() if m["MessageText"].startswith(no_bonus_message)]
    finally:
        store.close()
    named: dict[str, Counter] = {}  # worker -> HIT ids named in their e-mails
    more: Counter = Counter()  # worker -> HITs left out of their e-mails' lists ("and N more")
    for message in messages:
        worker = message["WorkerId"]
        named.setdefault(worker, Counter()).update(_NAMED_HIT.findall(message["MessageText"]))
        more[worker] += sum(int(n) for n in _MORE_HITS.findall(message["MessageText"]))
    mailed = Counter(m["WorkerId"] for m in messages)
    report.emails = len(messages)
    failed_hits: dict[str, set[str]] = {}
    sandbox_votes: dict[str, Counter] = {}

    for plan in plans:
        assignments = []
        for page in mturk.get_paginator("list_assignments_for_hit").paginate(HITId=plan.hit_id):
            assignments.extend(page["Assignments"])
        bonuses = mturk.list_bonus_payments(HITId=plan.hit_id)["BonusPayments"]
        paid = Counter(b["WorkerId"] for b in bonuses)
        report.bonuses += len(bonuses)
        votes = sandbox_votes.setdefault(plan.query.name, Counter())
        for assignment in assignments:
            report.assignments += 1
            worker = assignment["WorkerId"]
            if assignment["AssignmentStatus"] == "Approved":
                report.approved += 1
            else:
                report.problems.append(
                    f"assignment {assignment['AssignmentId']} is {assignment['AssignmentStatus']}"
                )
            try:
                answers = _answers(assignment["Answer"])
                gold = int(answers[plan.gold.field])
                model = int(answers[plan.model.field])
                option = plan.model.option(model)
                valid = plan.gold.option(gold) is not None and option is not None
            except (ET.ParseError, KeyError, ValueError):
                valid = False
            expected_bonus = 0
            if valid and gold == plan.gold.correct_position:
                report.gold_passed += 1
                expected_bonus = 1
                votes[option.image.name if option.image else NONE_OF_THESE] += 1
            elif valid:
                report.gold_failed += 1
                failed_hits.setdefault(worker, set()).add(plan.hit_id)
            if paid.get(worker, 0) != expected_bonus:
                report.problems.append(
                    f"worker {worker} got {paid.get(worker, 0)} bonuses on HIT {plan.hit_id}, "
                    f"expected {expected_bonus}"
                )
    for worker in sorted(set(failed_hits) | set(mailed)):
        failed = failed_hits.get(worker, set())
        names = named.get(worker, Counter())
        twice = sorted(hit for hit, n in names.items() if n > 1)
        stray = sorted(set(names) - failed)
        if not failed and mailed.get(worker):
            report.problems.append(
                f"worker {worker} got {mailed[worker]} no-bonus e-mails, expected 0"
            )
        elif not mailed.get(worker) or twice or stray or len(names) + more[worker] != len(failed):
            report.problems.append(
                f"worker {worker} got {mailed.get(worker, 0)} no-bonus e-mails naming "
                f"{sorted(names)} (+{more[worker]} more) for the {len(failed)} HITs "
                f"{sorted(failed)} whose check question they answered wrongly"
            )
    for query in results.get("queries", []):
        reported = Counter({c["name"]: c["votes"] for c in query["candidates"] if c["votes"]})
        if query["none"]["votes"]:
            reported[NONE_OF_THESE] = query["none"]["votes"]
        if reported != sandbox_votes.get(query["query"], Counter()):
            report.problems.append(
                f"report votes for {query['query']} {dict(reported)} differ from the sandbox's "
                f"answers {dict(sandbox_votes.get(query['query'], {}))}"
            )
    return report
