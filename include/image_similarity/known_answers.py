"""Known-answer (gold) sets, named as in the original notebook.

A set ``knownN`` is four files in one folder (extension ``.jpg``, ``.jpeg`` or ``.png``, any case):

- ``knownN.<ext>``: the target a worker compares against;
- ``knownN_1st_match.<ext>``: the correct answer;
- ``knownN_2nd_match.<ext>`` and ``knownN_3rd_match.<ext>``: the wrong answers.

Sets are parsed and checked before anything else runs, so a typo in a file name stops the run
with a message naming the set and the file, before any money could be spent on a bad gold question.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from include.image_similarity.sources import ImageFile, Listing

ROLES = ("target", "1st_match", "2nd_match", "3rd_match")
KNOWN_EXTENSIONS = (".jpg", ".jpeg", ".png")
_NAME = re.compile(
    r"^known(?P<number>\d+)(?:_(?P<role>[^.]*))?(?P<ext>\.[^.]+)$",
    re.IGNORECASE,
)


class KnownAnswerError(ValueError):
    """One or more known-answer sets are incomplete, ambiguous or misnamed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "known-answer sets are not usable:\n  - " + "\n  - ".join(problems) + "\nName each "
            "set knownN.<ext>, knownN_1st_match.<ext> (correct), knownN_2nd_match.<ext> and "
            "knownN_3rd_match.<ext> (wrong), with <ext> one of .jpg, .jpeg, .png."
        )


@dataclass(frozen=True)
class KnownAnswerSet:
    """One gold question: a target, its correct match and two wrong matches."""

    set_id: str
    target: ImageFile
    correct: ImageFile
    wrong: tuple[ImageFile, ImageFile]

    @property
    def files(self) -> tuple[ImageFile, ...]:
        return (self.target, self.correct, *self.wrong)

    def as_dict(self) -> dict:
        return {
            "set_id": self.set_id,
            "target": self.target.name,
            "correct": self.correct.name,
            "wrong": [image.name for image in self.wrong],
        }


def _role_file_name(set_id: str, role: str) -> str:
    return f"{set_id}.<ext>" if role == "target" else f"{set_id}_{role}.<ext>"


def parse_known_answer_sets(listing: Listing) -> list[KnownAnswerSet]:
    """Group a folder's images into known-answer sets, or raise ``KnownAnswerError``.

    Every problem is reported at once (not only the first), each naming the set and the file.
    """
    problems: list[str] = []
    by_set: dict[str, dict[str, list[ImageFile]]] = defaultdict(lambda: defaultdict(list))
    for image in listing.images:
        match = _NAME.match(image.name)
        if not match:
            problems.append(
                f"{image.name} does not follow the naming scheme (knownN.<ext> or "
                "knownN_1st_match.<ext>, _2nd_match, _3rd_match)"
            )
            continue
        set_id = f"known{int(match['number'])}"
        role = (match["role"] or "target").lower()
        if match["ext"].lower() not in KNOWN_EXTENSIONS:
            problems.append(
                f"set '{set_id}': {image.name} has extension {match['ext']}; "
                "use .jpg, .jpeg or .png"
            )
            continue
        if role not in ROLES:
            problems.append(
                f"set '{set_id}': extra file {image.name} (the suffix '_{match['role']}' is not "
                "one of _1st_match, _2nd_match, _3rd_match)"
            )
            continue
        by_set[set_id][role].append(image)

    sets: list[KnownAnswerSet] = []
    for set_id in sorted(by_set, key=lambda s: int(s[5:])):
        roles = by_set[set_id]
        set_ok = True
        for role in ROLES:
            files = roles.get(role, [])
            if not files:
                problems.append(f"set '{set_id}' has no {_role_file_name(set_id, role)} image")
                set_ok = False
            elif len(files) > 1:
                names = ", ".join(sorted(f.name for f in files))
                problems.append(
                    f"set '{set_id}' is ambiguous: {names} all claim the role {role}; keep one"
                )
                set_ok = False
        if set_ok:
            sets.append(
                KnownAnswerSet(
                    set_id=set_id,
                    target=roles["target"][0],
                    correct=roles["1st_match"][0],
                    wrong=(roles["2nd_match"][0], roles["3rd_match"][0]),
                )
            )
    if problems:
        raise KnownAnswerError(problems)
    if not sets:
        raise KnownAnswerError([f"the folder {listing.source} holds no known-answer set"])
    return sets
