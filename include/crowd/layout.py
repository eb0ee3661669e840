"""The HITs' layout: which images go where, the HTML a worker sees, and who may see it.

One HIT per query, two questions styled alike, in random order: the *gold* question (a
known-answer set: its target, its correct match and two wrong matches) and the *model* question
(the query and the model's top matches). Each question also offers "None of these" as its last
option, and both offer as many pictures: when the model question has fewer than three matches
(a small dataset), the gold question drops wrong matches to the same count, so both look the
same. The plan (``HitPlan``) records the position → image mapping and the gold's correct
position; the HTML only shows the images, under opaque field names and position values.

Plans are deterministic: every random choice is a SHA-256 of stable inputs (batch id, query
content hash, seed), never Python's ``random``, so a retried task (even on another Python)
renders byte-identical HITs and reuses the same ``UniqueRequestToken``.

Known-answer sets are used in a balanced rotation: a batch shuffles the sets once (from the batch
id and seed), and each new query takes the least-used set, ties going to the earlier set in the
rotation. Counts continue from the plans already created (``existing``), so adding queries to a
batch leaves every created HIT's plan as it was and keeps the counts within one of each other.
With ``own_gold=True`` a set is never used twice, nor a picture shown in two HITs' gold
questions: planning fails instead, naming how many sets are missing (generated gold,
``include.image_similarity.gold``, gives every HIT its own set).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from include.crowd.records import HitPlan, ImageRef, Option, Question

Match = tuple[ImageRef, int, float]
"""A model match: the dataset image, its rank (1 = most similar) and its similarity score."""
Query = tuple[ImageRef, Sequence[Match]]
GoldSet = tuple[str, ImageRef, ImageRef, tuple[ImageRef, ImageRef]]
"""A known-answer set: its id, target, correct match and two wrong matches."""

MAX_MATCHES = 3
NONE_LABEL = "None of these"
PROMPT = "Which option is the most similar to the reference picture?"

TEMPLATES = Path(__file__).resolve().parent / "templates"
_TOKEN_PREFIX_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


# --- determinism ----------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    """A hex SHA-256 of the parts, each length-prefixed so that ("ab", "c") != ("a", "bc")."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        hasher.update(b"%d:" % len(data))
        hasher.update(data)
    return hasher.hexdigest()


def _shuffled(items: Sequence, *salt: str) -> list:
    """The items in an order drawn from the salt alone (the same salt, the same order)."""
    order = sorted(range(len(items)), key=lambda i: _digest(*salt, "item", str(i)))
    return [items[i] for i in order]


def _seed_text(seed: int | str | None) -> str:
    return "" if seed is None else f"{type(seed).__name__}:{seed}"


def request_token(batch_id: str, query_sha256: str, revision: str = "") -> str:
    """Return the ``UniqueRequestToken`` for a query's HIT: stable, at most 64 characters.

    A readable prefix (the batch id, cut and reduced to ``[A-Za-z0-9_-]``) and a hash of the
    inputs, so tokens of different batches never collide even when their prefixes do.
    ``revision`` (``match_revision``) tells a later HIT of the same query, asked again about
    other matches, from its first one (whose token has none, as before revisions existed).
    """
    if not batch_id or not query_sha256:
        raise ValueError("request_token needs a batch id and a query's content hash")
    prefix = _TOKEN_PREFIX_CHARS.sub("-", batch_id).strip("-")[:24] or "batch"
    parts = ("token", batch_id, query_sha256, *((revision,) if revision else ()))
    return f"{prefix}-{_digest(*parts)[:32]}"


def best_matches(matches: Sequence[Match]) -> list[Match]:
    """The matches a model question offers: the best ranks, at most ``MAX_MATCHES``."""
    return sorted(matches, key=lambda match: match[1])[:MAX_MATCHES]


def match_revision(matches: Sequence[Match]) -> str:
    """A digest of the images a model question offers (``best_matches``), in rank order."""
    return _digest("matches", *(image.sha256 for image, _, _ in best_matches(matches)))[:16]


def offered_images(plan: HitPlan) -> list[str]:
    """The content hashes of the images a plan's model question offers, in rank order."""
    options = [o for o in plan.model.options if o.image is not None]
    return [o.image.sha256 for o in sorted(options, key=lambda o: (o.rank or 0, o.position))]


# --- planning -------------------------------------------------------------------------------


def plan_hits(
    batch_id: str,
    queries: Sequence[Query],
    gold_sets: Sequence[GoldSet],
    *,
    seed: int | str | None = None,
    existing: Mapping[str, HitPlan] | None = None,
    reask_changed: bool = False,
    own_gold: bool = False,
    preferred: Iterable[str] = (),
) -> list[HitPlan]:
    """Plan one HIT per query, in the order of ``queries``.

    :param batch_id: the batch the HITs belong to; part of every random draw.
    :param queries: ``(query, matches)`` pairs, matches as ``(image, rank, score)``; at most
        the three best ranks are used (fewer when the dataset has fewer images).
    :param gold_sets: ``(set_id, target, correct, (wrong, wrong))`` known-answer sets.
    :param seed: changes every draw (question order, option order, field names, rotation).
    :param existing: plans already made for this batch (e.g. read back from the HIT manifest),
        by query content hash (its newest plan). A query found here keeps its plan unchanged;
        all of them count towards the known-answer sets' balance, so new queries continue the
        rotation.
    :param reask_changed: a query found in ``existing`` whose matches are no longer the images
        its plan offers gets a new plan (a new HIT), told apart by ``match_revision``.
    :param own_gold: every new HIT gets a known-answer set of its own: no set, and no picture
        of a set, is used by two HITs (``existing`` included). By default sets are reused in the
        balanced rotation once each has been used.
    :param preferred: set ids taken first: the rotation holds them before the others, so each
        is used once before any other set is (generated gold before provided sets).
    :raises ValueError: no known-answer set, duplicate set ids or query contents, a query
        without matches, or an existing plan of another batch; with ``own_gold``, too few
        unused sets or two sets sharing a picture.
    """
    if not batch_id:
        raise ValueError("plan_hits needs a batch id")
    if not gold_sets:
        raise ValueError(
            "no known-answer sets: every HIT needs one gold question; add at least one set "
            "(knownN, knownN_1st_match, knownN_2nd_match, knownN_3rd_match) to the known "
            "answers folder"
        )
    by_id: dict[str, GoldSet] = {}
    for gold in gold_sets:
        if gold[0] in by_id:
            raise ValueError(f"known-answer set id {gold[0]!r} appears twice; ids must be unique")
        by_id[gold[0]] = gold
    existing = dict(existing or {})
    for sha, plan in existing.items():
        if plan.batch_id != batch_id:
            raise ValueError(
                f"existing plan for query {plan.query.name!r} belongs to batch "
                f"{plan.batch_id!r}, not {batch_id!r}; pass only this batch's manifest"
            )
        if plan.query.sha256 != sha:
            raise ValueError(
                f"existing plan for query {plan.query.name!r} is filed under hash {sha}, but "
                f"its query's hash is {plan.query.sha256}"
            )

    seen: dict[str, str] = {}
    for query, _ in queries:
        if query.sha256 in seen:
            raise ValueError(
                f"queries {seen[query.sha256]!r} and {query.name!r} have the same content "
                f"(sha256 {query.sha256}); one HIT per distinct image: remove one of them"
            )
        seen[query.sha256] = query.name

    seed_text = _seed_text(seed)
    first = set(preferred) & set(by_id)
    rotation = _shuffled(sorted(first), "rotation first", batch_id, seed_text) if first else []
    rotation += _shuffled(sorted(set(by_id) - first), "rotation", batch_id, seed_text)
    uses = Counter(
        plan.gold.gold_set
        for plan in existing.values()
        if any(q.kind == "gold" for q in plan.questions) and plan.gold.gold_set in by_id
    )

    if own_gold:
        rotation = _unshared_sets(rotation, by_id, existing.values(), uses)

    plans = []
    pending: list[tuple[ImageRef, Sequence[Match], str]] = []
    for query, matches in queries:
        revision = ""
        if query.sha256 in existing:
            plan = existing[query.sha256]
            offered = [image.sha256 for image, _, _ in best_matches(matches)]
            if not reask_changed or offered_images(plan) == offered:
                plans.append(plan)
                continue
            revision = match_revision(matches)
        pending.append((query, matches, revision))
        plans.append(None)
    if own_gold and len(pending) > len(rotation):
        raise ValueError(
            f"{len(pending)} new HITs each need a known-answer set of their own, but only "
            f"{len(rotation)} unused sets sharing no picture remain; generate at least "
            f"{len(pending) - len(rotation)} more gold sets, or plan without own_gold to reuse sets"
        )
    new_plans = iter(pending)
    for index, plan in enumerate(plans):
        if plan is not None:
            continue
        query, matches, revision = next(new_plans)
        set_id = min(rotation, key=lambda s: (uses[s], rotation.index(s)))
        uses[set_id] += 1
        plans[index] = _plan_hit(batch_id, query, matches, by_id[set_id], seed_text, revision)
    return plans


def _gold_pictures(gold: GoldSet) -> set[str]:
    _, target, correct, wrong = gold
    return {target.sha256, correct.sha256, *(image.sha256 for image in wrong)}


def _unshared_sets(
    rotation: list[str],
    by_id: Mapping[str, GoldSet],
    existing: Iterable[HitPlan],
    uses: Counter,
) -> list[str]:
    """The rotation without the sets already used or sharing a picture with a used set.

    :raises ValueError: two of the given sets share a picture (a worker would see it twice).
    """
    owner: dict[str, str] = {}
    for set_id in sorted(by_id):
        for sha in sorted(_gold_pictures(by_id[set_id])):
            if sha in owner:
                raise ValueError(
                    f"known-answer sets {owner[sha]!r} and {set_id!r} share a picture "
                    f"(sha256 {sha}); with own_gold every HIT's gold pictures must be its own: "
                    "remove one of the sets or regenerate the gold"
                )
            owner[sha] = set_id
    shown = {
        image.sha256
        for plan in existing
        for question in plan.questions
        if question.kind == "gold"
        for image in (question.target, *(o.image for o in question.options))
        if image is not None
    }
    return [s for s in rotation if not uses[s] and not _gold_pictures(by_id[s]) & shown]


def _plan_hit(
    batch_id: str,
    query: ImageRef,
    matches: Sequence[Match],
    gold: GoldSet,
    seed_text: str,
    revision: str = "",
) -> HitPlan:
    salt = ("hit", batch_id, query.sha256, seed_text, *((revision,) if revision else ()))
    best = best_matches(matches)
    if not best:
        raise ValueError(
            f"query {query.name!r} has no matches: the dataset is empty or the search failed; "
            "a model question needs at least one match"
        )
    fields = _field_names(2, *salt)

    model_options = [
        Option(position, image, rank, score)
        for position, (image, rank, score) in enumerate(_shuffled(best, *salt, "model"), 1)
    ]
    model = Question(
        field=fields[0],
        kind="model",
        target=query,
        options=(*model_options, Option(len(model_options) + 1, None)),
    )

    set_id, target, correct, wrong = gold
    if len(best) <= len(wrong):
        # As many options as the model question: with fewer than three matches, a longer gold
        # question would say which one it is. (Three matches keep the plans made before this.)
        wrong = _shuffled(wrong, *salt, "gold wrong")[: len(best) - 1]
    gold_images = [correct, *wrong]
    order = _shuffled(range(len(gold_images)), *salt, "gold")  # index 0 is the correct one
    gold_options = [Option(position, gold_images[i]) for position, i in enumerate(order, 1)]
    gold_question = Question(
        field=fields[1],
        kind="gold",
        target=target,
        options=(*gold_options, Option(len(gold_options) + 1, None)),
        gold_set=set_id,
        correct_position=1 + order.index(0),
    )

    gold_first = int(_digest(*salt, "order")[0], 16) % 2 == 0
    questions = (gold_question, model) if gold_first else (model, gold_question)
    return HitPlan(
        batch_id=batch_id,
        query=query,
        token=request_token(batch_id, query.sha256, revision),
        questions=questions,
    )


def _field_names(count: int, *salt: str) -> list[str]:
    """Opaque, distinct form field names like ``q_7f3a2c``."""
    names: list[str] = []
    attempt = 0
    while len(names) < count:
        name = "q_" + _digest(*salt, "field", str(attempt))[:6]
        if name not in names:
            names.append(name)
        attempt += 1
    return names


# --- rendering ------------------------------------------------------------------------------


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def render_question(
    plan: HitPlan,
    image_url: Callable[[ImageRef], str],
    *,
    title: str,
    instructions: str | None = None,
) -> str:
    """Return the HTML page a worker sees for the HIT (the platform wraps it in its envelope:
    ``include.crowd.mturk.question.html_question`` on MTurk).

    The page shows, per question, the target and the options' images from ``image_url`` (pass
    content-addressed, e.g. presigned, URLs: a URL that contains an image's file name is
    refused) under generic labels; it says nothing about which question is the gold one or
    which option is right. Text is escaped; blank lines in ``instructions`` start paragraphs.

    :param instructions: what the page says above the questions, as workers read it (the
        batch's ``CrowdSettings.instructions``: the Param ``hit_instructions`` filled in, which
        tells them that one question checks their attention and decides their bonus); None:
        no instructions.

    :raises ValueError: a URL that is not http(s)/data or that reveals a file name.
    """

    def url(image: ImageRef, question: Question) -> str:
        value = image_url(image)
        if urlsplit(value).scheme.lower() not in ("http", "https", "data"):
            raise ValueError(f"image URL must be http(s) or data:, got {value[:60]!r}")
        readable = unquote(value)
        for secret in (image.name, question.gold_set):
            if secret and re.search(
                rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", readable
            ):
                raise ValueError(
                    f"the image URL for {image.name!r} contains {secret!r}, which would tell "
                    "workers which images are the known answers; use content-addressed URLs"
                )
        return value

    questions = [
        {
            "field": question.field,
            "target": url(question.target, question),
            "options": [
                {
                    "value": str(option.position),
                    "image": url(option.image, question) if option.image is not None else None,
                    "label": (
                        f"Option {option.position}" if option.image is not None else NONE_LABEL
                    ),
                }
                for option in sorted(question.options, key=lambda o: o.position)
            ],
        }
        for question in plan.questions
    ]
    paragraphs = [
        " ".join(block.split())
        for block in re.split(r"\n\s*\n", instructions or "")
        if block.strip()
    ]
    return (
        _environment()
        .get_template("hit.html")
        .render(title=title, instructions=paragraphs, prompt=PROMPT, questions=questions)
    )


def render_hit(
    plan: HitPlan,
    hit_urls: Callable[[HitPlan], Callable[[ImageRef], str]],
    **options,
) -> str:
    """``render_question`` with image URLs made for this HIT alone: ``hit_urls(plan)`` returns
    the page's URL function (``publish.ImageUrls.for_hit``: the HIT's own copies of its images,
    every URL signed at the same instant). ``options``: ``render_question``'s keywords."""
    return render_question(plan, hit_urls(plan), **options)
