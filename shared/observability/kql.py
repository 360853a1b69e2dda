"""The runbook's Application Insights queries (KQL), in one place for the CLI and the runbook.

`agentctl kql NAME` prints one; `agentctl logs --kql` prints the log-review set. The runbook's
KQL blocks are these texts (tests/test_runbook_walk.py keeps them in step). The first two are the
operations runbook's own queries, word for word.
"""

from __future__ import annotations

import json

# Application Insights severityLevel: 0 verbose, 1 information, 2 warning, 3 error, 4 critical.
SEVERITY = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}

QUERIES: dict[str, str] = {
    "errors": """traces
| where timestamp > ago(1h)
| where severityLevel >= 3
| order by timestamp desc""",
    "job_errors": """traces
| where customDimensions.job_id != ""
| where severityLevel == 3
| project timestamp, message, customDimensions.job_id""",
    "tokens_this_month": """customMetrics
| where name == "agent.tokens"
| where timestamp >= startofmonth(now())
| summarize tokens = sum(valueSum) by tenant = tostring(customDimensions.tenant), kind = tostring(customDimensions.kind)
| order by tokens desc""",
    "top_token_jobs": """traces
| where timestamp >= startofmonth(now())
| where customDimensions.event == "tokens"
| summarize tokens = sum(toint(customDimensions.tokens)) by job_id = tostring(customDimensions.job_id),
    tenant = tostring(customDimensions.tenant)
| top 20 by tokens desc""",
    "requests_overview": """requests
| where timestamp > ago(1h)
| summarize requests = count(), failed = countif(success == false), p95_ms = percentile(duration, 95)
    by bin(timestamp, 5m)
| extend failure_percent = round(100.0 * failed / requests, 2)
| order by timestamp desc""",
    "failures": """requests
| where timestamp > ago(15m)
| where success == false
| summarize count() by name, resultCode
| order by count_ desc""",
    "exceptions": """exceptions
| where timestamp > ago(15m)
| summarize count(), any(outerMessage) by type, operation_Name
| order by count_ desc""",
    "slow_requests": """requests
| where timestamp > ago(1h)
| summarize requests = count(), p95_ms = percentile(duration, 95), over_5s = countif(duration > 5000) by name
| order by p95_ms desc""",
    "slow_dependencies": """dependencies
| where timestamp > ago(1h)
| summarize calls = count(), p95_ms = percentile(duration, 95), failed = countif(success == false)
    by type, target, name
| order by p95_ms desc""",
    "memory": """performanceCounters
| where timestamp > ago(1h)
| where name in ("Private Bytes", "Available Bytes")
| summarize max_mb = max(value) / 1048576 by name, cloud_RoleInstance, bin(timestamp, 5m)
| order by timestamp desc""",
    "step_outcomes": """customMetrics
| where timestamp > ago(1d)
| where name == "agent.steps"
| summarize steps = sum(valueSum) by kind = tostring(customDimensions.kind),
    outcome = tostring(customDimensions.outcome)""",
    "job_outcomes": """customMetrics
| where timestamp > ago(7d)
| where name == "agent.jobs"
| summarize jobs = sum(valueSum) by status = tostring(customDimensions.status),
    reason = tostring(customDimensions.reason)""",
    "missing_citations": """traces
| where timestamp > ago(7d)
| where customDimensions.event == "job_finished" and customDimensions.reason == "citations_missing"
| project timestamp, job_id = tostring(customDimensions.job_id), tenant = tostring(customDimensions.tenant), message""",
    "access_review": """requests
| where timestamp > ago(7d)
| where resultCode in ("401", "403", "429")
| summarize attempts = count(), routes = make_set(name, 10) by resultCode, client_IP
| order by attempts desc""",
}

LOG_REVIEW = ("errors", "job_errors", "tokens_this_month", "slow_requests")


def _since(since: str | None) -> str:
    """A KQL time expression: ago(1h) for durations like 30m/1h/7d, else a datetime literal."""
    if since is None:
        return "ago(1h)"
    value = since.strip()
    if value[:-1].isdigit() and value[-1:] in ("s", "m", "h", "d"):
        return f"ago({value})"
    return f"datetime({value})"


def log_review(job_id: str | None = None, level: str | None = None, since: str | None = None) -> dict[str, str]:
    """The log-review queries with --since/--level applied, plus one for a job when job_id is given."""
    queries = {name: QUERIES[name] for name in LOG_REVIEW}
    if since is not None or level is not None:
        severity = SEVERITY[level] if level else 3
        queries["errors"] = (
            f"traces\n| where timestamp > {_since(since)}\n| where severityLevel >= {severity}\n"
            "| order by timestamp desc"
        )
        queries["slow_requests"] = QUERIES["slow_requests"].replace("ago(1h)", _since(since))
    if job_id:
        queries["job"] = job_query(job_id, level)
    return queries


def job_query(job_id: str, level: str | None = None) -> str:
    return (
        "union traces, exceptions\n"
        f"| where customDimensions.job_id == {json.dumps(job_id)}\n"
        + (f"| where severityLevel >= {SEVERITY[level]}\n" if level else "")
        + "| order by timestamp asc\n"
        "| project timestamp, severityLevel, message, outerMessage, step = customDimensions.step, "
        "tenant = customDimensions.tenant"
    )
