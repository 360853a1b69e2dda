"""The storage layout is complete: everything the app writes lives in a declared container, and
backups carry every container declared as backed up."""

from __future__ import annotations

import json

from shared.engine import layout
from shared.engine.backends import Backends
from shared.maintenance import backup, checks, retention, run_scheduled, sweep
from shared.services import health, jobs
from tests.fixtures.agent_scripts import consume
from tests.fixtures.app import ingest_samples


def test_every_written_key_is_in_a_declared_container_and_backups_keep_the_backed_up_ones(
    backends: Backends,
) -> None:
    b = backends
    ingest_samples(b)
    request = jobs.JobRequest(task="How does the step engine commit a step exactly once?", session_id="s-1")
    first, _ = jobs.submit(b, "dev", request, idempotency_key="key-1")
    consume(b, [first.id])
    health.check(b)
    sweep.sweep_dead_letters(b)
    checks.run_weekly_checks(b)
    retention.apply_retention(b)
    run_scheduled(b, "retention", past_due=False)
    manifest = backup.run_backup(b)

    written = {layout.container_of(key) for key in b.objects.list("")}
    declared = {c.name for c in layout.CONTAINERS}
    assert written - declared == set(), "containers written but not declared in shared/engine/layout.py"
    assert {"checkpoints", "jobs", "tenants", "reports", "ledgers", "idempotency", "memory", "ops"} <= written

    backed_up: set[str] = set()
    for entry in manifest.files:
        if entry.name.startswith("objects/"):
            found = b.objects.get(f"{layout.backup_prefix(manifest.id)}{entry.name}")
            assert found is not None
            backed_up |= {layout.container_of(json.loads(line)["key"]) for line in found.data.splitlines()}
    present = {c for c in written if c in layout.BACKED_UP}
    assert present <= backed_up, f"backed-up containers missing from the backup: {present - backed_up}"
    assert backed_up <= set(layout.BACKED_UP), "the backup holds containers not declared as backed up"


def test_every_container_states_a_retention_rule_naming_real_settings() -> None:
    from shared.settings import Settings

    aliases = {str(f.validation_alias) for f in Settings.model_fields.values()}
    for container in layout.CONTAINERS:
        assert container.retention.strip(), f"{container.name}: state how it stays bounded"
        named = layout.retention_settings(container)
        assert set(named) <= aliases, f"{container.name}: its rule names unknown settings {set(named) - aliases}"
        # Without a setting, the rule must say why the container is bounded anyway.
        assert named or container.retention.startswith("kept"), container.name
