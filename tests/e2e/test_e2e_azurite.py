"""The full job with Blob Storage on Azurite (embedded queue and index): the Azure storage path."""

from __future__ import annotations

import pytest

from shared.adapters.azure.blob import AzureObjectStore
from shared.engine.repositories import CheckpointStore
from tests.e2e.test_e2e_runtime import finished, ingest
from tests.fixtures.app import wait_for
from tests.fixtures.azurite import empty_account

pytestmark = pytest.mark.slow


def test_job_runs_end_to_end_with_checkpoints_in_azurite(runtime, azurite_blob: str) -> None:  # type: ignore[no-untyped-def]
    empty_account(azurite_blob)
    rt = runtime({"AzureWebJobsStorage": azurite_blob})
    with rt.client() as client:
        health = client.get("/api/health").json()
        assert health["dependencies"]["storage"]["status"] == "up"
        ingest(client)
        job_id = client.post("/api/jobs", json={"task": "How are dead-lettered messages handled?"}).json()["id"]
        job = wait_for(lambda: finished(client, job_id), timeout=60)
        assert job["status"] == "succeeded", job
        report = client.get(f"/api/jobs/{job_id}/report").json()
        assert report["citations"]
    store = AzureObjectStore.from_connection_string(azurite_blob)
    assert CheckpointStore(store).steps(job_id) == list(range(1, job["step"] + 1))
    assert store.get(f"jobs/{job_id}.json") is not None and store.get(f"reports/{job_id}.json") is not None
    assert not (rt.data_dir / "blobs").exists()  # nothing fell back to local disk
