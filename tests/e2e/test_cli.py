"""agentctl against a running embedded runtime: every command, as a subprocess, its --json output checked.

Two runtimes per module: a healthy one (offline model) with one finished job, and one whose
model endpoint answers 500 to every completion, so its job's first step ends in the
dead-letter queue for the dlq commands to work on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.observability import kql
from tests.fixtures.app import RuntimeProcess, ingest_over_http, wait_for
from tests.fixtures.cli import agentctl, run_cli
from tests.fixtures.scripted_openai import ScriptedOpenAI

pytestmark = pytest.mark.slow
QUESTION = "How are dead-lettered messages handled?"
# No timer may act behind the test's back: each maintenance task is run through the CLI.
QUIET_TIMERS = {
    name: "0 0 0 1 1 *"
    for name in (
        "BACKUP_SCHEDULE",
        "DLQ_SWEEP_SCHEDULE",
        "WEEKLY_CHECKS_SCHEDULE",
        "RETENTION_SCHEDULE",
        "SCHEDULES_SCHEDULE",
    )
}


def ingest(client: httpx.Client) -> None:
    ingest_over_http(client)


def submit(client: httpx.Client, task: str = QUESTION) -> str:
    r = client.post("/api/jobs", json={"task": task})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@dataclass
class World:
    rt: RuntimeProcess
    env: dict[str, str]
    job_id: str = ""

    def cli(self, *args: str) -> Any:
        return agentctl(*args, data_dir=self.rt.data_dir, env=self.env)

    def fails(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        result = run_cli(*args, data_dir=self.rt.data_dir, env={**self.env, **(env or {})})
        assert result.code != 0, result.stdout
        assert "Traceback" not in result.stderr and "error:" in result.stderr, result.stderr
        return result.code, result.data["error"]

    # Waiting polls the runtime's HTTP API: cheap, and the assertions that follow use the CLI.
    def finished(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        with self.rt.client() as client:
            return wait_for(
                lambda: (
                    (j := client.get(f"/api/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "cancelled")
                    and j
                ),
                timeout,
            )

    def queue_settles(self, dead_lettered: int, timeout: float = 30) -> None:
        """Wait until nothing is active or scheduled and `dead_lettered` messages are dead-lettered."""
        want = {"active": 0, "scheduled": 0, "dead_lettered": dead_lettered}
        with self.rt.client() as client:  # an operator key: anonymous health says only up or down
            wait_for(lambda: client.get("/api/health").json()["dependencies"]["queue"]["detail"] == want, timeout)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {**QUIET_TIMERS}
    rt = RuntimeProcess(tmp_path_factory.mktemp("healthy"), env).start()
    try:
        with rt.client() as client:
            ingest(client)
            world = World(rt, env)
            world.job_id = submit(client)
            wait_for(lambda: client.get(f"/api/jobs/{world.job_id}").json()["status"] == "succeeded", 60)
        yield world
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ScriptedOpenAI().start()  # models list answers (health is ok); every completion is a 500
    env = {
        **QUIET_TIMERS,
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "test",
        "OPENAI_MODEL": "scripted",
        "QUEUE_MAX_DELIVERY_COUNT": "2",
        "STEP_MAX_RETRIES": "0",
    }
    rt = RuntimeProcess(tmp_path_factory.mktemp("broken"), env).start()
    try:
        with rt.client() as client:
            ingest(client)
            world = World(rt, env)
            world.job_id = submit(client)
        world.queue_settles(dead_lettered=1)
        yield world
    finally:
        rt.stop()
        server.stop()


# --- health, queue -----------------------------------------------------------------------------------


def test_health_checks_every_dependency(healthy: World) -> None:
    health = healthy.cli("health")
    assert health["status"] == "ok"
    deps = health["dependencies"]
    assert {name: d["status"] for name, d in deps.items()} == dict.fromkeys(
        ("queue", "storage", "index", "model"), "up"
    )
    assert deps["index"]["detail"]["chunks"] > 0
    assert "offline" in deps["model"]["detail"]


def test_data_dir_option_and_configuration_errors(healthy: World, tmp_path: Path) -> None:
    result = run_cli("--data-dir", str(healthy.rt.data_dir), "jobs", "list", data_dir=tmp_path / "elsewhere")
    assert result.code == 0 and healthy.job_id in [j["id"] for j in result.data]
    code, error = healthy.fails("health", env={"APP_ENV": "production"})
    assert code == 3 and error["kind"] == "configuration"
    assert "AzureWebJobsStorage" in error["problem"]


def test_queue_status_counts(healthy: World, broken_model: World) -> None:
    assert healthy.cli("queue", "status") == {"queue": "agent-jobs", "active": 0, "scheduled": 0, "dead_lettered": 0}
    status = broken_model.cli("queue", "status")
    assert status["dead_lettered"] >= 1


# --- jobs ---------------------------------------------------------------------------------------------


def test_jobs_list_filters(healthy: World) -> None:
    job_id = healthy.job_id
    assert job_id in [j["id"] for j in healthy.cli("jobs", "list")]
    assert job_id in [j["id"] for j in healthy.cli("jobs", "list", "--status", "succeeded", "--tenant", "dev")]
    assert len(healthy.cli("jobs", "list", "--limit", "1")) == 1
    assert healthy.cli("jobs", "list", "--status", "failed") == []
    assert healthy.cli("jobs", "list", "--tenant", "someone-else") == []
    assert healthy.cli("jobs", "list", "--reason", "citations_missing") == []
    code, error = healthy.fails("jobs", "list", "--status", "stuck")
    assert error["kind"] == "invalid" and "succeeded" in error["fix"]


def test_jobs_show_and_errors(healthy: World) -> None:
    shown = healthy.cli("jobs", "show", healthy.job_id)
    job = shown["job"]
    assert job["status"] == "succeeded" and job["tenant"] == "dev"
    assert shown["checkpoints"] == list(range(1, job["step"] + 1))
    assert shown["has_report"] and shown["citations"] >= 1
    code, error = healthy.fails("jobs", "show", "job-that-does-not-exist")
    assert code == 2 and error["kind"] == "not-found" and "jobs list" in error["fix"]
    code, error = healthy.fails("jobs", "cancel", healthy.job_id)
    assert error["kind"] == "job-finished" and "succeeded" in error["problem"]


def test_jobs_rerun_runs_the_task_again_as_a_new_job(healthy: World) -> None:
    new_id = healthy.cli("jobs", "rerun", healthy.job_id)["id"]
    assert new_id != healthy.job_id
    job = healthy.finished(new_id)
    assert job["status"] == "succeeded" and job["task"] == QUESTION
    # The CLI's own actions land in the runtime's log: an audit trail beside the steps they caused.
    events = [r.get("event") for r in healthy.cli("logs", "--job-id", new_id)["records"]]
    assert "job_rerun" in events and "job_finished" in events


# --- dead letters ---------------------------------------------------------------------------------------


def test_dlq_list_show_resubmit_purge(broken_model: World) -> None:
    job_id = broken_model.job_id
    [dead] = broken_model.cli("dlq", "list")
    assert (dead["job_id"], dead["step"], dead["job_status"]) == (job_id, 1, "queued")
    assert dead["reason"] == "MaxDeliveryCountExceeded" and dead["delivery_count"] == 2
    assert dead["failure"].startswith("TransientModelError") and dead["cause"] == "transient"
    shown = broken_model.cli("dlq", "show", dead["message_id"])
    assert shown["message_id"] == dead["message_id"] and shown["job"]["id"] == job_id
    assert shown["job"]["dead_letter"]["step"] == 1
    code, error = broken_model.fails("dlq", "show", "no-such-message")
    assert code == 2 and "dlq list" in error["fix"]

    action = broken_model.cli("dlq", "resubmit", dead["message_id"])
    assert action["action"] == "resubmitted" and action["new_message_id"] != dead["message_id"]
    # The model still answers 500, so the re-submitted step is dead-lettered again after its deliveries.
    broken_model.queue_settles(dead_lettered=1)
    [again] = broken_model.cli("dlq", "list")
    assert again["message_id"] == action["new_message_id"]

    code, error = broken_model.fails("dlq", "purge")  # --json cannot answer a prompt
    assert error["kind"] == "confirm"
    assert broken_model.cli("dlq", "purge", "--yes") == {"purged": 1}
    assert broken_model.cli("dlq", "list") == []


def test_resubmit_cancel_and_sweep_a_stuck_job(broken_model: World) -> None:
    job_id = broken_model.job_id
    assert broken_model.cli("jobs", "show", job_id)["job"]["status"] == "queued"  # stuck: its step is gone
    resubmitted = broken_model.cli("jobs", "resubmit", job_id)
    assert resubmitted["job_id"] == job_id and resubmitted["step"] == 1
    broken_model.queue_settles(dead_lettered=1)
    assert broken_model.cli("jobs", "cancel", job_id)["cancel_requested"]
    # The sweep honours the cancel request instead of re-submitting the step once more.
    swept = broken_model.cli("sweep")
    assert swept["examined"] == 1 and [a["action"] for a in swept["actions"]] == ["cancelled"]
    assert broken_model.cli("jobs", "show", job_id)["job"]["status"] == "cancelled"
    code, error = broken_model.fails("jobs", "resubmit", job_id)
    assert error["kind"] == "job-state" and "re-run" in error["problem"]


def test_sweep_on_an_empty_dead_letter_queue(healthy: World) -> None:
    result = healthy.cli("sweep")
    assert result["examined"] == 0 and result["actions"] == []


# --- usage, logs, kql ------------------------------------------------------------------------------------


def test_usage_against_budget(healthy: World, tmp_path: Path) -> None:
    job = healthy.cli("jobs", "show", healthy.job_id)["job"]
    usage = healthy.cli("usage")
    [dev] = [t for t in usage["tenants"] if t["tenant"] == "dev"]
    assert dev["total_tokens"] >= job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"] > 0
    assert dev["budget"] == 5_000_000 and not dev["warning"]
    # The CLI reads the budget from its settings like the app: a budget the tenant has used 90% of warns.
    tight = {"TENANT_TOKEN_BUDGETS": json.dumps({"dev": int(dev["total_tokens"] / 0.9)})}
    warned = agentctl("usage", data_dir=healthy.rt.data_dir, env={**healthy.env, **tight})
    [dev] = [t for t in warned["tenants"] if t["tenant"] == "dev"]
    assert 89 < dev["percent_used"] < 91 and dev["warning"]
    assert usage["top_jobs"][0]["tenant"] == "dev" and usage["top_jobs"][0]["total_tokens"] > 0
    # The same setting from a local.settings.json-shaped file (--settings), as for an Azure environment.
    settings_file = tmp_path / "prd.settings.json"
    settings_file.write_text(json.dumps({"Values": {"TENANT_TOKEN_BUDGETS": json.dumps({"dev": 1_000_000})}}))
    [dev] = [t for t in healthy.cli("--settings", str(settings_file), "usage")["tenants"] if t["tenant"] == "dev"]
    assert dev["budget"] == 1_000_000
    code, error = healthy.fails("usage", "--month", "January")
    assert error["kind"] == "validation"
    past = healthy.cli("usage", "--month", "2001-01")
    assert past["total_tokens"] == 0 and past["top_jobs"] == []


def test_logs_filter_the_runtime_json_lines(healthy: World) -> None:
    job_id = healthy.job_id
    logs = healthy.cli("logs", "--job-id", job_id)
    assert logs["source"].endswith("runtime.jsonl") and logs["records"]
    assert {r["job_id"] for r in logs["records"]} == {job_id}
    assert any(r.get("event") == "job_finished" for r in logs["records"])
    assert healthy.cli("logs", "--job-id", job_id, "--level", "ERROR")["records"] == []
    recent = healthy.cli("logs", "--since", "1h", "--limit", "3")["records"]
    assert 0 < len(recent) <= 3
    assert healthy.cli("logs", "--since", "2999-01-01T00:00:00Z")["records"] == []
    code, error = healthy.fails("logs", "--since", "yesterday-ish")
    assert error["kind"] == "invalid"


def test_logs_kql_for_application_insights(healthy: World) -> None:
    printed = healthy.cli("logs", "--kql")
    assert printed["source"] == "application-insights"
    assert printed["queries"]["errors"] == kql.QUERIES["errors"]  # the runbook's query, word for word
    assert printed["queries"]["job_errors"] == kql.QUERIES["job_errors"]
    assert 'name == "agent.tokens"' in printed["queries"]["tokens_this_month"]
    one_job = healthy.cli("logs", "--kql", "--job-id", "job-1", "--since", "30m")["queries"]
    assert 'customDimensions.job_id == "job-1"' in one_job["job"]
    assert "ago(30m)" in one_job["errors"]
    # With Application Insights configured, `logs` prints KQL without being asked.
    azure = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"}
    assert (
        agentctl("logs", data_dir=healthy.rt.data_dir, env={**healthy.env, **azure})["source"] == "application-insights"
    )
    assert healthy.cli("kql", "errors") == {"errors": kql.QUERIES["errors"]}
    assert healthy.fails("kql", "nope")[1]["kind"] == "not-found"


# --- backups, checks, retention --------------------------------------------------------------------------


def test_backup_list_restore(healthy: World) -> None:
    manifest = healthy.cli("backup", "run")
    assert manifest["chunks"] > 0 and manifest["objects"] > 0
    assert manifest["id"] in [b["id"] for b in healthy.cli("backup", "list")]
    restored = healthy.cli("restore", manifest["id"])
    assert restored["verified"] and restored["chunks"] == manifest["chunks"]
    code, error = healthy.fails("restore", "20000101T000000Z")
    assert code == 2 and "backup list" in error["fix"]


def test_checks_run_reports_the_week(healthy: World) -> None:
    report = healthy.cli("checks", "run")
    assert report["jobs"]["finished"] >= 1 and report["jobs"]["succeeded"] >= 1
    assert report["queue"]["dead_lettered"] == 0
    assert report["markdown_key"].startswith("ops/reports/")
    assert any(t["tenant"] == "dev" for t in report["top_tenants"])


def test_retention_run(healthy: World) -> None:
    result = healthy.cli("retention", "run")
    assert result["jobs_examined"] >= 1 and result["checkpoints_deleted"] == 0
    # A fresh job is far younger than CHECKPOINT_RETENTION_DAYS: its checkpoints stay.
    assert healthy.cli("jobs", "show", healthy.job_id)["checkpoints"]


def test_human_output_without_json(healthy: World) -> None:
    result = run_cli("jobs", "list", data_dir=healthy.rt.data_dir, env=healthy.env, json_output=False)
    assert result.code == 0 and "succeeded" in result.stdout
    result = run_cli("health", data_dir=healthy.rt.data_dir, env=healthy.env, json_output=False)
    assert result.code == 0 and "health: ok" in result.stdout


def test_usage_with_cost_shows_money_next_to_tokens(healthy: World) -> None:
    prices = {"MODEL_PRICES": json.dumps({"offline-extractive": {"prompt": 2.0, "completion": 8.0}})}
    env = {**healthy.env, **prices, "TENANT_COST_BUDGETS": json.dumps({"dev": 1000})}

    data = agentctl("usage", "--cost", data_dir=healthy.rt.data_dir, env=env)

    [dev] = [t for t in data["tenants"] if t["tenant"] == "dev"]
    assert dev["cost"] == pytest.approx((dev["prompt_tokens"] * 2.0 + dev["completion_tokens"] * 8.0) / 1e6)
    assert dev["cost_budget"] == 1000 and data["currency"] == "USD" and data["priced_model"] == "offline-extractive"
    assert data["top_jobs"][0]["cost"] > 0
    table = run_cli("usage", "--cost", data_dir=healthy.rt.data_dir, env=env, json_output=False)
    assert table.code == 0 and "cost" in table.stdout and "USD at offline-extractive prices" in table.stdout
    unpriced = run_cli("usage", "--cost", data_dir=healthy.rt.data_dir, env=healthy.env, json_output=False)
    assert "no price for this model: set MODEL_PRICES" in unpriced.stdout


def test_jobs_show_prints_a_deep_jobs_tree(healthy: World) -> None:
    with healthy.rt.client() as client:
        r = client.post("/api/jobs", json={"task": "How do backups and alerts work?", "policy": {"mode": "deep"}})
        parent = healthy.finished(r.json()["id"])
    assert parent["status"] == "succeeded" and parent["children"]

    shown = healthy.cli("jobs", "show", parent["id"])

    assert [c["id"] for c in shown["children"]] == parent["children"]
    assert all(c["status"] == "succeeded" and c["tokens"] > 0 for c in shown["children"])
    child = healthy.cli("jobs", "show", parent["children"][0])
    assert child["job"]["parent_id"] == parent["id"]
    wide = {**healthy.env, "COLUMNS": "220"}  # job ids unfolded
    text = run_cli("jobs", "show", parent["id"], data_dir=healthy.rt.data_dir, env=wide, json_output=False)
    assert "sub-questions (deep mode)" in text.stdout and parent["children"][-1] in text.stdout
