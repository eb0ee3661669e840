"""The crowd platform both DAG files give the crowd stage: Mechanical Turk, every call through
``MTurkHook`` (``include.crowd.mturk.MTurkPlatform`` over the hook)."""

from __future__ import annotations


def mturk_platform(aws_conn_id: str, environment: str):
    """``MTurkPlatform`` over an ``MTurkHook`` of the AWS connection ``aws_conn_id``; its
    ``.hook`` gives the hook (preview links). Nothing is called until the platform is used."""
    from include.crowd.mturk import MTurkPlatform
    from mturk_provider.hooks.mturk import MTurkHook

    return MTurkPlatform(MTurkHook(aws_conn_id=aws_conn_id, environment=environment))
