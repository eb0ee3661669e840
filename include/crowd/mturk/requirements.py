"""Who may work on a HIT, in MTurk's terms: ``QualificationRequirements`` with MTurk's system
qualification types (approval rate, approved HITs, locale, Masters) and the exclusion."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from include.crowd.platform import WorkerRequirements

# MTurk's system qualification types.
PERCENT_ASSIGNMENTS_APPROVED = "000000000000000000L0"
NUMBER_HITS_APPROVED = "00000000000000000040"
LOCALE = "00000000000000000071"
MASTERS = {
    "sandbox": "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6",
    "production": "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH",
}
_LOCALE = re.compile(r"^(?P<country>[A-Z]{2})(?:-(?P<subdivision>[A-Z0-9]{1,3}))?$")


def for_workers(requirements: WorkerRequirements, environment: str) -> list[dict]:
    """``qualification_requirements`` for a ``platform.WorkerRequirements``."""
    return qualification_requirements(
        min_approval_rate=requirements.min_approval_rate,
        min_approved_hits=requirements.min_approved_hits,
        locales=list(requirements.locales) or None,
        exclude_qualification_id=requirements.excluded,
        masters=requirements.masters,
        environment=environment,
        cap_qualification_id=requirements.capped,
    )


def requires_masters(requirements: Sequence[dict] | None) -> bool:
    """Whether a HIT's qualification requirements ask for Masters (MTurk then charges 5 %
    more on its rewards)."""
    return any(r.get("QualificationTypeId") in MASTERS.values() for r in requirements or [])


def qualification_requirements(
    *,
    min_approval_rate: int | None,
    min_approved_hits: int | None,
    locales: Sequence[str] | None,
    exclude_qualification_id: str | None,
    masters: bool = False,
    environment: Literal["sandbox", "production"],
    cap_qualification_id: str | None = None,
) -> list[dict]:
    """Return ``QualificationRequirements`` for ``CreateHIT``, in boto3's shape.

    .. seealso:: ``MTurk.Client.create_hit``

    System requirements (approval rate, approved HITs, locale, Masters) guard accepting, as
    MTurk does by default, so anyone can still preview. The exclusion (workers holding
    ``exclude_qualification_id``, e.g. those already done with this batch) hides the HIT from
    them altogether.

    :param min_approval_rate: lowest PercentAssignmentsApproved, 0-100; None: no requirement.
    :param min_approved_hits: lowest NumberHITsApproved; None: no requirement.
    :param locales: allowed locales, ``"US"`` or ``"US-NY"`` style; None or empty: anywhere.
    :param exclude_qualification_id: a custom qualification type whose holders may not work.
    :param masters: require the Masters qualification of ``environment``.
    :param environment: ``"sandbox"`` or ``"production"`` (the Masters ids differ).
    :param cap_qualification_id: the batch's "reached the HIT cap" qualification type: its
        holders (granted at each review round) may not see or accept more HITs of the batch.
    """
    if environment not in MASTERS:
        raise ValueError(f"environment must be 'sandbox' or 'production', not {environment!r}")
    requirements: list[dict] = []
    if min_approval_rate is not None:
        if not 0 <= min_approval_rate <= 100:
            raise ValueError(f"min_approval_rate is a percentage 0-100, not {min_approval_rate}")
        requirements.append(
            _at_least(PERCENT_ASSIGNMENTS_APPROVED, min_approval_rate),
        )
    if min_approved_hits is not None:
        if min_approved_hits < 0:
            raise ValueError(f"min_approved_hits cannot be negative ({min_approved_hits})")
        requirements.append(_at_least(NUMBER_HITS_APPROVED, min_approved_hits))
    if locales:
        requirements.append(
            {
                "QualificationTypeId": LOCALE,
                "Comparator": "In",
                "LocaleValues": [_locale(value) for value in locales],
                "ActionsGuarded": "Accept",
            }
        )
    if masters:
        requirements.append(
            {
                "QualificationTypeId": MASTERS[environment],
                "Comparator": "Exists",
                "ActionsGuarded": "Accept",
            }
        )
    for excluded in (exclude_qualification_id, cap_qualification_id):
        if excluded:
            requirements.append(
                {
                    "QualificationTypeId": excluded,
                    "Comparator": "DoesNotExist",
                    "ActionsGuarded": "DiscoverPreviewAndAccept",
                }
            )
    return requirements


def _at_least(type_id: str, value: int) -> dict:
    return {
        "QualificationTypeId": type_id,
        "Comparator": "GreaterThanOrEqualTo",
        "IntegerValues": [int(value)],
        "ActionsGuarded": "Accept",
    }


def _locale(value: str) -> dict[str, str]:
    match = _LOCALE.match(value.strip().upper())
    if not match:
        raise ValueError(
            f"locale {value!r} is not a country code like 'US' or a subdivision like 'US-NY'"
        )
    locale = {"Country": match["country"]}
    if match["subdivision"]:
        locale["Subdivision"] = match["subdivision"]
    return locale
