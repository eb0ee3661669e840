"""Airflow adapters for Amazon Mechanical Turk: hook, sensor, trigger, operator and links.

The package is imported as ``mturk_provider`` (Airflow puts the plugins folder on ``sys.path``),
so the triggerer, which never reads ``dags/``, can import the trigger. Only ``mturk_plugin.py``
is scanned by Airflow's plugin loader (see ``.airflowignore``); everything else is imported by
its package path.
"""
