"""Crowd platforms for tests: the production ``MTurkPlatform`` over the production
``MTurkHook``, whose boto3 client is given (a client of the crowd sandbox on 127.0.0.1, or a
wrapper around one that counts or fails calls), so tests run exactly the code a DAG runs."""

from __future__ import annotations

from include.crowd.mturk import MTurkPlatform


def hook_over(client, environment: str = "sandbox"):
    """An ``MTurkHook`` whose calls go to ``client`` (no Airflow connection is read)."""
    import airflow  # noqa: F401  (puts the plugins folder on sys.path)

    from mturk_provider.hooks.mturk import MTurkHook

    hook = MTurkHook(aws_conn_id=None, environment=environment)
    hook.__dict__["conn"] = client  # what AwsBaseHook.conn caches, so get_conn() returns it
    return hook


def mturk_platform(client, environment: str = "sandbox", **options) -> MTurkPlatform:
    """``MTurkPlatform`` over ``hook_over(client)``; ``options``: ``MTurkPlatform``'s."""
    return MTurkPlatform(hook_over(client, environment), **options)
