"""MTurk's wire protocol (JSON 1.1), checked and shaped with botocore's own service model.

Requests are validated against the operation's input shape (required members, types, enums,
lengths, ranges, patterns) before anything runs; a member the model requires but MTurk's API
reference lists as optional (``OPTIONAL_BY_API_REFERENCE``) may be left out. Responses are
shaped by the output shape: only members the model knows, timestamps as epoch seconds, nothing
``None``. Errors are MTurk's
``RequestError`` / ``ServiceFault`` in the JSON body botocore reads (``__type``, ``Message``,
``TurkErrorCode``), so boto3 raises ``ClientError`` with that code and message.
"""

from __future__ import annotations

import json
import re
import reprlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

TARGET_PREFIX = "MTurkRequesterServiceV20170117"
CONTENT_TYPE = "application/x-amz-json-1.1"
# A validation error lists this many violations and counts the rest: a list of a million wrong
# values is one short answer, not a message of a hundred megabytes.
MAX_LISTED_VIOLATIONS = 20
# What botocore's model calls integer and long are Java's int and long.
INTEGER_BITS = {"integer": 32, "long": 64}

# Members botocore's model requires but MTurk's API reference lists as not required, by input
# shape: boto3 still refuses to send a request without them, a raw request may leave them out.
# CreateWorkerBlock's Reason: "Required: No" in
# https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_CreateWorkerBlockOperation.html
OPTIONAL_BY_API_REFERENCE = {"CreateWorkerBlockRequest": frozenset({"Reason"})}

# Containers in an error message: their first few items, a few levels deep.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 80, 80


class MTurkError(Exception):
    """An error MTurk answers with: ``code`` is the error type botocore reports."""

    status = 400

    def __init__(self, message: str, turk_error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.turk_error_code = turk_error_code

    code = "RequestError"

    def body(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"__type": self.code, "Message": f"{self.message} ({request_id})"}
        if self.turk_error_code:
            body["TurkErrorCode"] = self.turk_error_code
        return body


class RequestError(MTurkError):
    """The request is invalid for MTurk (HTTP 400)."""


class ServiceFault(MTurkError):
    """MTurk failed internally (HTTP 500); the client may retry."""

    code = "ServiceFault"
    status = 500


class Throttled(MTurkError):
    """The caller exceeded the request rate (what MTurk answers when throttling)."""

    code = "ThrottlingException"

    def __init__(self) -> None:
        super().__init__("Rate exceeded")


class ServiceUnavailable(MTurkError):
    """A 503 from the front door, as AWS answers when a service is briefly unavailable."""

    code = "ServiceUnavailable"
    status = 503

    def __init__(self) -> None:
        super().__init__("Service Unavailable")


@cache
def service_model() -> ServiceModel:
    """Return botocore's service model for ``mturk`` (shipped with botocore, read offline)."""
    return botocore.session.get_session().get_service_model("mturk")


def operation(target: str | None) -> OperationModel:
    """Return the operation named by an ``X-Amz-Target`` header, or raise ``RequestError``."""
    prefix = TARGET_PREFIX + "."
    if not target or not target.startswith(prefix):
        raise RequestError(f"Missing or unknown X-Amz-Target header: {target!r}")
    name = target[len(prefix) :]
    model = service_model()
    if name not in model.operation_names:
        raise RequestError(f"Unknown operation {name!r}")
    return model.operation_model(name)


def new_request_id() -> str:
    return str(uuid.uuid4())


# --- input ----------------------------------------------------------------------------------


class _Validator:
    """Collect every violation of the input shape, as AWS reports them, in one error."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.count = 0

    def fail(self, path: str, value: Any, constraint: str) -> None:
        self.count += 1
        if len(self.errors) >= MAX_LISTED_VIOLATIONS:
            return
        if isinstance(value, float | bool) or value is None:
            shown = value
        elif isinstance(value, int):
            shown = _SHOWN.repr(value)  # a 4,000-digit number is shown by its ends
        elif isinstance(value, str):
            shown = repr(value[:77] + "...") if len(value) > 80 else repr(value)
        else:
            shown = _SHOWN.repr(value)
        self.errors.append(
            f"Value {shown} at '{path}' failed to satisfy constraint: Member must {constraint}"
        )

    def message(self) -> str:
        count = self.count
        listed = "; ".join(self.errors)
        if count > len(self.errors):
            listed += f"; and {count - len(self.errors)} more"
        return f"{count} validation error{'s' if count > 1 else ''} detected: {listed}"

    def check(self, shape: Shape, value: Any, path: str) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return self._structure(shape, value, path)
        if kind == "list":
            return self._list(shape, value, path)
        if kind == "map":
            if not isinstance(value, dict):
                self.fail(path, value, "be a map")
                return value
            return {k: self.check(shape.value, v, f"{path}.{k}") for k, v in value.items()}
        if kind == "string":
            return self._string(shape, value, path)
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, value, "be an integer")
                return value
            bits = INTEGER_BITS[kind]
            if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                self.fail(path, value, f"be a {bits}-bit integer")
                return value
            self._range(shape, value, path)
            return value
        if kind in ("double", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(path, value, "be a number")
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                self.fail(path, value, "be a boolean")
            return value
        if kind == "timestamp":
            return self._timestamp(value, path)
        return value

    def _structure(self, shape: Shape, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.fail(path or "request", value, "be a structure")
            return value
        out: dict[str, Any] = {}
        optional = OPTIONAL_BY_API_REFERENCE.get(shape.name, frozenset())
        for name in shape.required_members:
            if value.get(name) is None and name not in optional:
                self.fail(_join(path, name), None, "not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                out[name] = self.check(member, value[name], _join(path, name))
        return out  # unknown members are ignored, as AWS services do

    def _list(self, shape: Shape, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            self.fail(path, value, "be a list")
            return value
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            self.fail(path, f"list of {len(value)}", f"have length greater than or equal to {low}")
        if high is not None and len(value) > high:
            self.fail(path, f"list of {len(value)}", f"have length less than or equal to {high}")
        return [self.check(shape.member, item, f"{path}.{i + 1}") for i, item in enumerate(value)]

    def _string(self, shape: Shape, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            self.fail(path, value, "be a string")
            return value
        if not _is_unicode(value):
            self.fail(path, value, "be Unicode text (it holds an unpaired surrogate)")
            return value
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            self.fail(path, value, f"have length greater than or equal to {low}")
        if high is not None and len(value) > high:
            self.fail(path, value, f"have length less than or equal to {high}")
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            self.fail(path, value, f"satisfy enum value set: [{', '.join(enum)}]")
        pattern = shape.metadata.get("pattern")
        if pattern and not _regex(pattern).search(value):
            self.fail(path, value, f"satisfy regular expression pattern: {pattern}")
        return value

    def _range(self, shape: Shape, value: int, path: str) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and value < low:
            self.fail(path, value, f"have value greater than or equal to {low}")
        if high is not None and value > high:
            self.fail(path, value, f"have value less than or equal to {high}")

    def _timestamp(self, value: Any, path: str) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                self.fail(path, value, "be a timestamp between the years 1 and 9999")
                return value
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        self.fail(path, value, "be a timestamp (epoch seconds or ISO 8601)")
        return value


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (JSON's ``\\ud800`` escapes can make it not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, name: str) -> str:
    name = name[:1].lower() + name[1:]
    return f"{path}.{name}" if path else name


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_request(op: OperationModel, raw: bytes) -> dict[str, Any]:
    """Decode and validate a request body; timestamps become aware ``datetime`` objects.

    Any body that is not a JSON object meeting the input shape is a ``RequestError`` (400), which
    clients do not retry: bad UTF-8, bad or deeply nested JSON, NaN, numbers too long to read.
    """
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_no_constant) if raw else {}
    except RecursionError:
        raise RequestError("The request body is not valid JSON: it is nested too deeply.") from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise RequestError(f"The request body is not valid JSON: {error}") from None
    if op.input_shape is None:
        return {}
    validator = _Validator()
    params = validator.check(op.input_shape, payload, "")
    if validator.count:
        raise RequestError(validator.message(), "AWS.MechanicalTurk.ValidationError")
    return params


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# --- output ---------------------------------------------------------------------------------


def shape_response(op: OperationModel, result: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep what the output shape declares, in its wire form."""
    if op.output_shape is None or result is None:
        return {}
    return _shape(op.output_shape, result) or {}


def _shape(shape: Shape, value: Any) -> Any:
    if value is None:
        return None
    kind = shape.type_name
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            shaped = _shape(member, value.get(name))
            if shaped is not None:
                out[name] = shaped
        return out
    if kind == "list":
        return [_shape(shape.member, item) for item in value]
    if kind == "map":
        return {k: _shape(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, datetime):
            return round(value.timestamp(), 3)
        return float(value)
    if kind in ("integer", "long"):
        return int(value)
    if kind == "boolean":
        return bool(value)
    return value
