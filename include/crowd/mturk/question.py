"""The HIT as MTurk takes it: an ``HTMLQuestion`` around the page, with the request token in a
comment of the page (to find the HIT again when the answer to CreateHIT was lost)."""

from __future__ import annotations

import re

HTML_QUESTION_XMLNS = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
)
MAX_QUESTION_BYTES = 65_535  # CreateHIT's limit for the whole Question XML
TOKEN_MARK = "request-token:"
# Characters XML 1.0 does not allow anywhere, not even in CDATA.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def html_question(page: str, *, frame_height: int = 0) -> str:
    """Return the ``HTMLQuestion`` XML showing ``page``, ready for ``CreateHIT(Question=...)``.

    :param frame_height: the frame's height in pixels; 0 lets MTurk fit it to the page.
    :raises ValueError: a negative frame height, or a question larger than MTurk's 64 KB.
    """
    if frame_height < 0:
        raise ValueError(f"frame_height must be 0 (fit the page) or positive, not {frame_height}")
    html = _NOT_XML.sub("", page).replace("]]>", "]]]]><![CDATA[>")
    xml = (
        f'<HTMLQuestion xmlns="{HTML_QUESTION_XMLNS}">'
        f"<HTMLContent><![CDATA[{html}]]></HTMLContent>"
        f"<FrameHeight>{int(frame_height)}</FrameHeight>"
        "</HTMLQuestion>"
    )
    size = len(xml.encode("utf-8"))
    if size > MAX_QUESTION_BYTES:
        raise ValueError(
            f"the HIT's question is {size} bytes, over MTurk's {MAX_QUESTION_BYTES}: use "
            "shorter image URLs (e.g. shorter presigned URL expiry or a CDN) or a shorter text"
        )
    return xml


def mark_token(question_xml: str, token: str) -> str:
    """Put the request token in the HIT's HTML as a comment (to find the HIT again)."""
    marker = "<![CDATA["
    at = question_xml.find(marker)
    if at < 0:
        raise ValueError("the question has no CDATA HTML content to mark")
    at += len(marker)
    return f"{question_xml[:at]}<!-- {TOKEN_MARK}{token} -->{question_xml[at:]}"


def carries_token(question_xml: str, token: str) -> bool:
    return f"{TOKEN_MARK}{token} " in question_xml
