"""Tests of the MTurk adapters in plugins/mturk_provider.

A package, so that its conftest is imported as ``plugins.conftest`` and does not take the place
of tests/conftest.py as the module ``conftest`` that other tests import from.
"""
