"""MTurk's worker requirements: ``QualificationRequirements`` with the system qualification
types, in the shape boto3 validates."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.validate import validate_parameters

from include.crowd.mturk.requirements import (
    for_workers,
    qualification_requirements,
    requires_masters,
)
from include.crowd.platform import WorkerRequirements


def test_qualification_requirements_in_boto3_shape():
    requirements = qualification_requirements(
        min_approval_rate=95,
        min_approved_hits=500,
        locales=["US", "ca", "US-NY"],
        exclude_qualification_id="3EXCLUDEDWORKERS",
        masters=True,
        environment="production",
    )
    assert requirements == [
        {
            "QualificationTypeId": "000000000000000000L0",
            "Comparator": "GreaterThanOrEqualTo",
            "IntegerValues": [95],
            "ActionsGuarded": "Accept",
        },
        {
            "QualificationTypeId": "00000000000000000040",
            "Comparator": "GreaterThanOrEqualTo",
            "IntegerValues": [500],
            "ActionsGuarded": "Accept",
        },
        {
            "QualificationTypeId": "00000000000000000071",
            "Comparator": "In",
            "LocaleValues": [
                {"Country": "US"},
                {"Country": "CA"},
                {"Country": "US", "Subdivision": "NY"},
            ],
            "ActionsGuarded": "Accept",
        },
        {
            "QualificationTypeId": "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH",
            "Comparator": "Exists",
            "ActionsGuarded": "Accept",
        },
        {
            "QualificationTypeId": "3EXCLUDEDWORKERS",
            "Comparator": "DoesNotExist",
            "ActionsGuarded": "DiscoverPreviewAndAccept",
        },
    ]
    shape = botocore.session.get_session().get_service_model("mturk").operation_model("CreateHIT")
    validate_parameters(
        {
            "Title": "t",
            "Description": "d",
            "Reward": "0.05",
            "LifetimeInSeconds": 60,
            "AssignmentDurationInSeconds": 60,
            "QualificationRequirements": requirements,
        },
        shape.input_shape,
    )

    sandbox_masters = qualification_requirements(
        min_approval_rate=None,
        min_approved_hits=None,
        locales=None,
        exclude_qualification_id=None,
        masters=True,
        environment="sandbox",
    )
    assert sandbox_masters[0]["QualificationTypeId"] == "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"
    nothing = dict(
        min_approval_rate=None, min_approved_hits=None, locales=[], exclude_qualification_id=None
    )
    assert qualification_requirements(**nothing, environment="production") == []
    with pytest.raises(ValueError, match="'USA'"):
        qualification_requirements(**(nothing | {"locales": ["USA"]}), environment="sandbox")
    with pytest.raises(ValueError, match="0-100"):
        qualification_requirements(**(nothing | {"min_approval_rate": 101}), environment="sandbox")
    with pytest.raises(ValueError, match="'sandbox' or 'production'"):
        qualification_requirements(**nothing, environment="live")


def test_worker_requirements_become_the_same_qualification_requirements():
    wanted = WorkerRequirements(
        min_approval_rate=95, min_approved_hits=500, locales=("US",), masters=True, excluded="3X"
    )
    requirements = for_workers(wanted, "sandbox")
    assert requirements == qualification_requirements(
        min_approval_rate=95,
        min_approved_hits=500,
        locales=["US"],
        exclude_qualification_id="3X",
        masters=True,
        environment="sandbox",
    )
    assert requires_masters(requirements) and not requires_masters(
        for_workers(WorkerRequirements(), "production")
    )


def test_a_batch_s_hit_cap_hides_its_hits_from_holders_like_the_exclusion():
    requirements = for_workers(WorkerRequirements(excluded="3X", capped="3CAP"), "sandbox")
    assert requirements[-2:] == [
        {
            "QualificationTypeId": type_id,
            "Comparator": "DoesNotExist",
            "ActionsGuarded": "DiscoverPreviewAndAccept",
        }
        for type_id in ("3X", "3CAP")
    ]
    assert for_workers(WorkerRequirements(capped="3CAP"), "sandbox") == requirements[-1:]
