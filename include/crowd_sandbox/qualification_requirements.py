"""Qualification requirements: MTurk's system qualification types, the checks a requirement
passes when a HIT type is made, and whether a worker meets it when they discover, preview or
accept a HIT."""

from __future__ import annotations

from typing import Any

from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.store import Store

# MTurk's system qualification types (the Masters id is the sandbox's).
PERCENT_APPROVED = "000000000000000000L0"
NUMBER_APPROVED = "00000000000000000040"
LOCALE = "00000000000000000071"
ADULT = "00000000000000000060"
MASTERS_SANDBOX = "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"
MASTERS_PRODUCTION = "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH"
SYSTEM_QUALIFICATIONS = {
    PERCENT_APPROVED: "PercentAssignmentsApproved",
    NUMBER_APPROVED: "NumberHITsApproved",
    LOCALE: "Locale",
    ADULT: "Adult",
    MASTERS_SANDBOX: "Masters",
    MASTERS_PRODUCTION: "Masters",
}


_SYSTEM_DESCRIPTIONS = {
    "PercentAssignmentsApproved": "The percentage of assignments the Worker has submitted "
    "that were subsequently approved by the Requester, over all assignments the Worker has "
    "submitted.",
    "NumberHITsApproved": "Specifies the total number of HITs submitted by a Worker that have "
    "been approved.",
    "Locale": "The location of the Worker, as specified in the Worker's mailing address.",
    "Adult": "Requires Workers to acknowledge that they are over 18 and that they agree to "
    "work on potentially offensive content.",
    "Masters": "Workers who have demonstrated excellence across a wide range of HITs.",
}
SYSTEM_CREATION_TIME = 1_104_537_600.0  # 2005-01-01: before any requester's own type


def system_qualification_type(type_id: str) -> dict[str, Any] | None:
    """MTurk's QualificationType structure of a system type (None for any other id): found by
    GetQualificationType and listed by ListQualificationTypes, never requestable or grantable by
    a requester."""
    name = SYSTEM_QUALIFICATIONS.get(type_id)
    if name is None:
        return None
    return {
        "QualificationTypeId": type_id,
        "CreationTime": SYSTEM_CREATION_TIME,
        "Name": name,
        "Description": _SYSTEM_DESCRIPTIONS[name],
        "Keywords": None,
        "QualificationTypeStatus": "Active",
        "IsRequestable": False,
        "AutoGranted": False,
    }


def requires_masters(hit: dict[str, Any]) -> bool:
    """Whether a HIT asks for Masters (MTurk's fee is higher then)."""
    return any(
        SYSTEM_QUALIFICATIONS.get(q["QualificationTypeId"]) == "Masters"
        for q in hit.get("QualificationRequirements") or []
    )


MAX_REQUIREMENTS = 10
MAX_INTEGER_VALUES = 15
MAX_LOCALE_VALUES = 30
LOCALE_COMPARATORS = ("EqualTo", "NotEqualTo", "In", "NotIn", "Exists", "DoesNotExist")


def checked_requirements(store: Store, requirements: list | None) -> list[dict[str, Any]]:
    """The requirements of a new HIT type, checked and with ``ActionsGuarded`` filled in.

    MTurk's limits (CreateHIT and the QualificationRequirement data structure of its API
    reference): "A HIT can have between zero and ten Qualification requirements"; In and NotIn
    take "up to 15 IntegerValue elements" or "up to 30 LocaleValue elements"; "LocaleValue can
    only be used with a Worker_Locale QualificationType ID" and "only ... with the EqualTo,
    NotEqualTo, In, and NotIn comparators"; IntegerValue "cannot be used with the Worker_Locale
    QualificationType ID".
    """
    if len(requirements or []) > MAX_REQUIREMENTS:
        raise RequestError(
            f"A HIT can have between zero and {MAX_REQUIREMENTS} Qualification requirements, "
            f"not {len(requirements or [])}.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )
    checked = []
    for requirement in requirements or []:
        type_id = requirement["QualificationTypeId"]
        if type_id not in SYSTEM_QUALIFICATIONS:
            qtype = store.doc("SELECT doc FROM qualification_types WHERE id = ?", (type_id,))
            if qtype is None:
                raise RequestError(
                    f"QualificationType {type_id} does not exist.",
                    "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
                )
        comparator = requirement["Comparator"]
        values = requirement.get("IntegerValues") or requirement.get("LocaleValues") or []
        if comparator in ("Exists", "DoesNotExist") and values:
            raise RequestError(f"The comparator {comparator} takes no values.")
        if comparator in ("In", "NotIn") and not values:
            raise RequestError(f"The comparator {comparator} needs at least one value.")
        if comparator not in ("Exists", "DoesNotExist", "In", "NotIn") and len(values) != 1:
            raise RequestError(f"The comparator {comparator} needs exactly one value.")
        if type_id == LOCALE and requirement.get("IntegerValues"):
            raise RequestError("The Locale qualification compares LocaleValues.")
        if type_id != LOCALE and requirement.get("LocaleValues"):
            raise RequestError(
                f"LocaleValues can only be used with the Worker_Locale qualification type "
                f"({LOCALE}), not {type_id}: compare IntegerValues.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if type_id == LOCALE and comparator not in LOCALE_COMPARATORS:
            raise RequestError(
                f"The Locale qualification can only be compared with "
                f"{', '.join(LOCALE_COMPARATORS)}, not {comparator}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        most = MAX_LOCALE_VALUES if type_id == LOCALE else MAX_INTEGER_VALUES
        if len(values) > most:
            raise RequestError(
                f"A set comparison takes up to {most} "
                f"{'LocaleValue' if type_id == LOCALE else 'IntegerValue'} elements, "
                f"not {len(values)}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        entry = dict(requirement)
        if entry.pop("RequiredToPreview", False) and "ActionsGuarded" not in entry:
            entry["ActionsGuarded"] = "PreviewAndAccept"
        entry.setdefault("ActionsGuarded", "Accept")
        checked.append(entry)
    return checked


def held_qualification(store: Store, type_id: str, worker_id: str) -> dict[str, Any] | None:
    """A worker's qualification of a (requester-made) type, granted or revoked, if any."""
    return store.doc(
        "SELECT doc FROM qualifications WHERE type_id = ? AND worker_id = ?",
        (type_id, worker_id),
    )


def unmet_requirements(
    store: Store, worker: dict[str, Any], hit: dict[str, Any], action: str
) -> list[str]:
    """Return the unmet requirements that guard ``action`` (Discover, Preview, Accept)."""
    guards = {
        "Discover": ("DiscoverPreviewAndAccept",),
        "Preview": ("DiscoverPreviewAndAccept", "PreviewAndAccept"),
        "Accept": ("DiscoverPreviewAndAccept", "PreviewAndAccept", "Accept"),
    }[action]
    unmet = []
    for requirement in hit.get("QualificationRequirements") or []:
        if requirement.get("ActionsGuarded", "Accept") not in guards:
            continue
        if not _meets(store, worker, requirement):
            unmet.append(_describe(requirement))
    return unmet


def _meets(store: Store, worker: dict[str, Any], requirement: dict[str, Any]) -> bool:
    type_id, comparator = requirement["QualificationTypeId"], requirement["Comparator"]
    system = SYSTEM_QUALIFICATIONS.get(type_id)
    value: Any
    if system == "Masters":
        value = 1 if worker.get("Masters") else None
    elif system:
        value = worker.get(system)
    else:
        held = held_qualification(store, type_id, worker["WorkerId"])
        value = held["IntegerValue"] if held and held["Status"] == "Granted" else None
    if comparator == "DoesNotExist":
        return value is None
    if value is None:
        return False
    if comparator == "Exists":
        return True
    if system == "Locale":
        wanted = requirement.get("LocaleValues") or []
        matched = any(
            value.get("Country") == w.get("Country")
            and (not w.get("Subdivision") or value.get("Subdivision") == w.get("Subdivision"))
            for w in wanted
        )
        return matched if comparator in ("EqualTo", "In") else not matched
    numbers = requirement.get("IntegerValues") or []
    checks = {
        "LessThan": lambda: value < numbers[0],
        "LessThanOrEqualTo": lambda: value <= numbers[0],
        "GreaterThan": lambda: value > numbers[0],
        "GreaterThanOrEqualTo": lambda: value >= numbers[0],
        "EqualTo": lambda: value == numbers[0],
        "NotEqualTo": lambda: value != numbers[0],
        "In": lambda: value in numbers,
        "NotIn": lambda: value not in numbers,
    }
    return bool(checks[comparator]())


def _describe(requirement: dict[str, Any]) -> str:
    type_id = requirement["QualificationTypeId"]
    name = SYSTEM_QUALIFICATIONS.get(type_id, type_id)
    values = requirement.get("IntegerValues") or [
        "-".join(filter(None, (v.get("Country"), v.get("Subdivision"))))
        for v in requirement.get("LocaleValues") or []
    ]
    shown = ",".join(str(v) for v in values)
    return f"{name} {requirement['Comparator']} {shown}".strip()
