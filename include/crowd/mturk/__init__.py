"""Amazon Mechanical Turk behind ``include/crowd/platform.py``: the only part of the crowd logic
that knows MTurk's operations, errors, XML, fees and system qualifications.

``MTurkPlatform(hook)`` calls MTurk through ``hook`` (``mturk_provider``'s ``MTurkHook``, or
anything with the same methods), so this package imports no Airflow.
"""

from include.crowd.mturk.adapter import MTurkPlatform
from include.crowd.mturk.fees import FEES, MTurkFees

__all__ = ["FEES", "MTurkFees", "MTurkPlatform"]
