"""Job policy: the tenant's limits narrowed by a job's overrides, never widened."""

from __future__ import annotations

from shared.contracts import UNCITED_ORDER, Policy, PolicyOverrides
from shared.errors import InvalidRequest


class PolicyViolation(InvalidRequest):
    kind = "policy"
    fix = "ask for no more than the tenant's policy allows (see the tenant's TENANT_POLICIES entry)"

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"policy.{field}: {why}", errors=[{"field": f"policy.{field}", "message": why}])
        self.field = field
        self.why = why


def tenant_limits(defaults: Policy, tenant: Policy | None) -> Policy:
    """The tenant's limits: the defaults with the fields its policy sets.

    A tenant entry names only what differs ({"max_steps": 8}); a field it leaves out keeps the
    operator's default rather than the code's, so a tenant entry never silently widens a limit
    the defaults narrowed.
    """
    if tenant is None:
        return defaults
    return defaults.model_copy(update=tenant.model_dump(include=tenant.model_fields_set))


def resolve(limits: Policy, overrides: PolicyOverrides | None) -> Policy:
    """The job's policy, or PolicyViolation naming the first override beyond the tenant's limits."""
    if overrides is None:
        return limits
    wanted = overrides.model_dump(exclude_none=True)
    for field in ("max_steps", "max_tokens", "max_report_chars", "max_subquestions"):
        if field in wanted and wanted[field] > getattr(limits, field):
            raise PolicyViolation(field, f"{wanted[field]} exceeds the tenant's limit of {getattr(limits, field)}")
    if "allowed_tools" in wanted:
        extra = sorted(set(wanted["allowed_tools"]) - set(limits.allowed_tools))
        if extra:
            raise PolicyViolation("allowed_tools", f"{', '.join(extra)} not allowed for this tenant")
    if limits.require_citations and wanted.get("require_citations") is False:
        raise PolicyViolation("require_citations", "the tenant requires citations")
    if "min_citations" in wanted and limits.require_citations and wanted["min_citations"] < limits.min_citations:
        raise PolicyViolation("min_citations", f"must be at least the tenant's {limits.min_citations}")
    if limits.approval != "none" and wanted.get("approval", limits.approval) != limits.approval:
        raise PolicyViolation("approval", f"the tenant requires approval {_shown(limits.approval)}")
    if wanted.get("approval_timeout_seconds", 0) > limits.approval_timeout_seconds:
        raise PolicyViolation(
            "approval_timeout_seconds", f"must be at most the tenant's {limits.approval_timeout_seconds}"
        )
    if "uncited" in wanted and UNCITED_ORDER.index(wanted["uncited"]) < UNCITED_ORDER.index(limits.uncited):
        raise PolicyViolation(
            "uncited",
            f"the tenant handles uncited sentences with {limits.uncited!r}; ask for that "
            "or stricter (keep < mark < drop)",
        )
    if overrides.approval is not None:
        wanted["approval"] = overrides.approval  # the model itself, not its dump
    return limits.model_copy(update=wanted)


def _shown(approval: object) -> str:
    return approval if isinstance(approval, str) else f"for tools {', '.join(getattr(approval, 'tools', []))}"
