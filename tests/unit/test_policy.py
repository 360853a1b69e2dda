"""policy.tenant_limits and policy.resolve: a job may narrow its tenant's limits, never widen them."""

from __future__ import annotations

from typing import Any

import pytest

from agents.policy import PolicyViolation, resolve, tenant_limits
from shared.contracts import Policy, PolicyOverrides
from shared.errors import InvalidRequest

LIMITS = Policy(
    max_steps=20,
    max_tokens=50_000,
    max_report_chars=4_000,
    min_citations=2,
    allowed_tools=["search_knowledge", "read_document", "write_report"],
)


def test_a_tenant_entry_changes_only_the_fields_it_names() -> None:
    defaults = Policy(max_steps=12, max_tokens=8_000)

    limits = tenant_limits(defaults, Policy(max_steps=8))

    assert limits.max_steps == 8
    # The operator's default, not the code's 200_000: leaving a field out never widens it.
    assert limits.max_tokens == 8_000
    assert tenant_limits(defaults, None) == defaults


def test_no_overrides_means_the_tenants_limits() -> None:
    assert resolve(LIMITS, None) == LIMITS
    assert resolve(LIMITS, PolicyOverrides()) == LIMITS


def test_narrowing_overrides_apply() -> None:
    overrides = PolicyOverrides(
        max_steps=5,
        max_tokens=1_000,
        allowed_tools=["read_document", "write_report"],
        min_citations=3,
        max_report_chars=500,
        language="ja",
    )

    policy = resolve(LIMITS, overrides)

    assert (policy.max_steps, policy.max_tokens, policy.min_citations, policy.max_report_chars) == (5, 1_000, 3, 500)
    assert policy.allowed_tools == ["read_document", "write_report"]
    assert policy.language == "ja"
    assert policy.require_citations is True


def test_overrides_equal_to_the_limits_are_allowed() -> None:
    policy = resolve(LIMITS, PolicyOverrides(max_steps=20, max_tokens=50_000, max_report_chars=4_000))

    assert policy == LIMITS


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("max_steps", 21, 20),
        ("max_tokens", 50_001, 50_000),
        ("max_report_chars", 10_000, 4_000),
    ],
)
def test_widening_a_limit_is_a_violation_naming_the_field(field: str, value: int, limit: int) -> None:
    with pytest.raises(PolicyViolation) as caught:
        resolve(LIMITS, PolicyOverrides(**{field: value}))

    violation = caught.value
    assert isinstance(violation, InvalidRequest)  # the API answers 422, not 500
    assert violation.field == field
    assert str(violation) == f"policy.{field}: {value} exceeds the tenant's limit of {limit}"
    assert violation.extra["errors"] == [{"field": f"policy.{field}", "message": violation.why}]


def test_asking_for_a_tool_the_tenant_does_not_allow_names_it() -> None:
    with pytest.raises(PolicyViolation) as caught:
        resolve(LIMITS, PolicyOverrides(allowed_tools=["save_note", "read_document", "run_shell"]))

    assert caught.value.field == "allowed_tools"
    assert caught.value.why == "run_shell, save_note not allowed for this tenant"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"require_citations": False}, "require_citations"),
        ({"min_citations": 1}, "min_citations"),
    ],
)
def test_loosening_required_citations_is_a_violation(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyViolation) as caught:
        resolve(LIMITS, PolicyOverrides(**overrides))

    assert caught.value.field == field


def test_a_tenant_without_required_citations_lets_a_job_drop_them() -> None:
    relaxed = LIMITS.model_copy(update={"require_citations": False})

    policy = resolve(relaxed, PolicyOverrides(require_citations=False, min_citations=0))

    assert (policy.require_citations, policy.min_citations) == (False, 0)


def test_the_first_violation_is_reported() -> None:
    with pytest.raises(PolicyViolation) as caught:
        resolve(LIMITS, PolicyOverrides(max_tokens=10**6, max_steps=100))

    assert caught.value.field == "max_steps"
