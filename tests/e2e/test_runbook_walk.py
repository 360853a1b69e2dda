"""Walk the runbook with agentctl on a fresh embedded runtime, as an operator on call would.

The incident: the model endpoint answers 500 to every completion. A job's first step is
tried, dead-lettered, re-submitted by the sweep, dead-lettered again. The operator inspects
the dead letter and the logs, fixes the endpoint (restarts the app on a working model),
re-submits, and the job completes. Then the nightly chores: backup, a lost document brought
back by a restore, and the weekly checks. Every operator step is a CLI command.

Also: the runbooks' KQL blocks are the CLI's queries, and every agentctl command they name exists.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer

from shared.observability import kql
from tests.fixtures.app import ROOT, SAMPLES, RuntimeProcess, wait_for
from tests.fixtures.cli import agentctl
from tests.fixtures.scripted_openai import ScriptedOpenAI

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
RUNBOOKS = [ROOT / "docs" / "runbook.md", ROOT / "docs" / "runbook.ja.md"]


def queue_settles(rt: RuntimeProcess, dead_lettered: int) -> None:
    want = {"active": 0, "scheduled": 0, "dead_lettered": dead_lettered}
    with rt.client() as client:  # an operator key: anonymous health says only up or down
        wait_for(lambda: client.get("/api/health").json()["dependencies"]["queue"]["detail"] == want, 30)


@pytest.mark.slow
def test_walk_the_runbook_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "prd"
    settings = {**QUIET_TIMERS, "QUEUE_MAX_DELIVERY_COUNT": "2", "STEP_MAX_RETRIES": "0", "DLQ_MAX_RESUBMISSIONS": "1"}

    def cli(*args: str) -> Any:
        return agentctl(*args, data_dir=data_dir, env=settings)

    model = ScriptedOpenAI().start()
    broken = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "test", "OPENAI_MODEL": "scripted"}
    rt = RuntimeProcess(data_dir, {**settings, **broken}).start()
    try:
        # Daily health check: everything answers (the model lists its models; completions are what fail).
        assert cli("health")["status"] == "ok"
        with rt.client() as client:
            for path in sorted(SAMPLES.glob("*.md")):
                assert (
                    client.post(
                        "/api/documents",
                        params={"filename": path.name},
                        content=path.read_bytes(),
                        headers={"Content-Type": "text/markdown"},
                    ).status_code
                    == 201
                )
            job_id = client.post("/api/jobs", json={"task": "What do I do when the queue backs up?"}).json()["id"]

        # Symptom: the job does not complete. Investigate: the queue, the dead letters, the job.
        queue_settles(rt, dead_lettered=1)
        assert cli("queue", "status")["dead_lettered"] == 1
        assert cli("jobs", "list", "--status", "queued")[0]["id"] == job_id
        # The sweep re-submits a step that failed for a transient cause; the cause persists, so it comes back.
        swept = cli("sweep")
        assert [(a["job_id"], a["action"], a["cause"]) for a in swept["actions"]] == [
            (job_id, "resubmitted", "transient")
        ]
        queue_settles(rt, dead_lettered=1)
        [dead] = cli("dlq", "list")
        assert dead["message_id"] == swept["actions"][0]["new_message_id"]
        shown = cli("dlq", "show", dead["message_id"])
        assert shown["failure"].startswith("TransientModelError") and "500" in shown["failure"]
        assert shown["job"]["resubmissions"] == 1
        errors = cli("logs", "--job-id", job_id, "--level", "ERROR")["records"]
        assert any("dead-letter queue" in r["message"] for r in errors)
    finally:
        rt.stop()
        model.stop()

    # Fix: the model endpoint setting is corrected (here: back to the offline model) and the app restarted.
    rt = RuntimeProcess(data_dir, settings).start()
    try:
        assert cli("health")["status"] == "ok"
        action = cli("dlq", "resubmit", dead["message_id"])
        assert action["action"] == "resubmitted" and action["cause"] == "operator"
        with rt.client() as client:
            job = wait_for(lambda: (j := client.get(f"/api/jobs/{job_id}").json())["status"] == "succeeded" and j, 60)
        shown = cli("jobs", "show", job_id)
        assert shown["job"]["status"] == "succeeded" and shown["has_report"] and shown["citations"] >= 1
        assert cli("dlq", "list") == [] and cli("queue", "status")["dead_lettered"] == 0
        assert any(r.get("event") == "job_finished" for r in cli("logs", "--job-id", job_id)["records"])
        [dev] = [t for t in cli("usage")["tenants"] if t["tenant"] == "dev"]
        assert dev["total_tokens"] == job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"] > 0

        # Backup, then lose a document, then restore it.
        manifest = cli("backup", "run")
        assert [b["id"] for b in cli("backup", "list")] == [manifest["id"]]
        chunks = manifest["chunks"]
        with rt.client() as client:
            doc_id = client.get("/api/search", params={"q": "queue"}).json()[0]["doc_id"]
            assert client.delete(f"/api/documents/{doc_id}").status_code == 200
            assert client.get("/api/search", params={"q": "queue", "doc_id": doc_id}).json() == []
        assert cli("health")["dependencies"]["index"]["detail"]["chunks"] < chunks
        restored = cli("restore", manifest["id"])
        assert restored["verified"] and restored["chunks"] == chunks
        assert cli("health")["dependencies"]["index"]["detail"]["chunks"] == chunks
        with rt.client() as client:
            assert client.get("/api/search", params={"q": "queue", "doc_id": doc_id}).json()

        # The weekly checks see the week as it was.
        report = cli("checks", "run")
        assert report["jobs"]["succeeded"] == 1 and report["jobs"]["failed"] == 0
        assert report["queue"] == {"active": 0, "scheduled": 0, "dead_lettered": 0}
        assert report["latest_backup"] == manifest["id"] and report["stale_jobs"] == []
        assert report["top_jobs"][0]["job_id"] == job_id
    finally:
        rt.stop()


# --- the runbooks and the CLI say the same thing -------------------------------------------------------


def kql_blocks(text: str) -> list[str]:
    # A block inside a list item is indented with it.
    return [textwrap.dedent(block).strip() for block in re.findall(r"```kusto\n(.*?)```", text, flags=re.S)]


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.name)
def test_runbook_kql_is_the_cli_queries(runbook: Path) -> None:
    blocks = kql_blocks(runbook.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    known = set(kql.QUERIES.values()) | {kql.job_query("<job id>")}
    assert [b for b in blocks if b not in known] == []
    assert kql.QUERIES["errors"] in blocks and kql.QUERIES["job_errors"] in blocks  # the original's own two


def command_paths() -> set[str]:
    from shared.cli.main import app

    root: Any = typer.main.get_command(app)
    paths = set()
    for name, command in root.commands.items():
        paths.add(name)
        paths.update(f"{name} {sub}" for sub in getattr(command, "commands", {}))  # a group's subcommands
    return paths


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.name)
def test_every_agentctl_command_in_the_runbook_exists(runbook: Path) -> None:
    paths = command_paths()
    groups = {p.split()[0] for p in paths if " " in p}
    text = runbook.read_text(encoding="utf-8")
    word = r"([a-z]+)(?![\w.-])"  # a command word, not the start of a file name like prd.settings.json
    used = re.findall(rf"agentctl(?: --[a-z-]+(?: [^\s`-][^\s`]*)?)* {word}(?: {word})?", text)
    assert len(used) > 30
    for first, second in used:
        command = f"{first} {second}" if first in groups else first
        assert command in paths, f"{runbook.name} names `agentctl {command}`, which does not exist"
    named = set(re.findall(r"agentctl kql ([a-z_]+)", text))
    assert named and named <= set(kql.QUERIES), named - set(kql.QUERIES)
    for needed in (
        "health",
        "queue status",
        "dlq list",
        "dlq show",
        "dlq resubmit",
        "dlq purge",
        "jobs list",
        "jobs show",
        "jobs cancel",
        "jobs rerun",
        "jobs resubmit",
        "usage",
        "backup run",
        "backup list",
        "restore",
        "checks run",
        "sweep",
        "retention run",
        "logs",
        "kql",
    ):
        assert any(f"{first} {second}".strip() == needed or first == needed for first, second in used), needed
