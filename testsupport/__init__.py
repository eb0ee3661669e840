"""Test support shared by the tests and the benchmarks: moto S3 (``motokit``), the crowd sandbox
as a process (``sandbox_process``), the full Airflow stack as processes (``stackkit``), synthetic
images (``imagekit``), the crowd-stage plans and fixtures (``crowd_plans``, ``crowd_fixtures``),
a batch folder as the similarity stage leaves it (``crowd_batch``) and an in-memory Google Drive
behind googleapiclient's real request path (``drivekit``).

It lives at the project root, not under ``tests/``, so that benchmarks import it without importing
the tests: ``from testsupport.motokit import moto_s3``.
"""
