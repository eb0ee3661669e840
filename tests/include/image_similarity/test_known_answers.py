from __future__ import annotations

from pathlib import Path

import pytest

from include.image_similarity.known_answers import KnownAnswerError, parse_known_answer_sets
from include.image_similarity.sources import ImageFile, Listing


def listing(*names: str) -> Listing:
    return Listing(source="gold", images=[ImageFile(n, Path(n), f"hash-{n}", 1) for n in names])


def full_set(n: int, ext: str = ".jpg") -> list[str]:
    return [f"known{n}{ext}"] + [f"known{n}_{r}_match{ext}" for r in ("1st", "2nd", "3rd")]


def test_complete_sets_in_any_extension_case():
    sets = parse_known_answer_sets(
        listing(*full_set(1), *full_set(2, ".PNG"), *full_set(10, ".jpeg"))
    )
    assert [s.set_id for s in sets] == ["known1", "known2", "known10"]
    second = sets[1]
    assert second.target.name == "known2.PNG"
    assert second.correct.name == "known2_1st_match.PNG"
    assert [w.name for w in second.wrong] == ["known2_2nd_match.PNG", "known2_3rd_match.PNG"]


def test_missing_file_names_the_set_and_the_file():
    names = full_set(1) + [n for n in full_set(4) if "1st" not in n]
    with pytest.raises(KnownAnswerError) as caught:
        parse_known_answer_sets(listing(*names))
    assert caught.value.problems == ["set 'known4' has no known4_1st_match.<ext> image"]


def test_ambiguous_set_names_both_files():
    with pytest.raises(KnownAnswerError) as caught:
        parse_known_answer_sets(listing(*full_set(3), "known3.png"))
    assert "known3.jpg, known3.png" in str(caught.value)
    assert "ambiguous" in str(caught.value)


def test_extra_and_misnamed_files_are_reported_together():
    names = full_set(1) + ["known1_4th_match.jpg", "cat.jpg", "known2.gif"]
    with pytest.raises(KnownAnswerError) as caught:
        parse_known_answer_sets(listing(*names))
    text = "\n".join(caught.value.problems)
    assert "extra file known1_4th_match.jpg" in text
    assert "cat.jpg does not follow the naming scheme" in text
    assert "known2.gif has extension .gif" in text


def test_empty_folder_is_an_error():
    with pytest.raises(KnownAnswerError, match="holds no known-answer set"):
        parse_known_answer_sets(listing())
