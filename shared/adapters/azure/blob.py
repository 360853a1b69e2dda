"""ObjectStore over Azure Blob Storage (or Azurite), through one long-lived BlobServiceClient.

Keys are "container/blob name". ETags are returned without their HTTP quotes, so the same string
works as an ETag from the embedded store and from Azure; they are quoted again on the way out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ExponentialRetry, StorageErrorCode

from shared.errors import DependencyUnavailable
from shared.ports import ObjectWrite, PreconditionFailed, StoredObject
from shared.settings import Settings

T = TypeVar("T")

_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_MAX_BLOB_NAME = 1024
_DEV_STORAGE_RE = re.compile(r"^\s*UseDevelopmentStorage\s*=\s*true\s*;?\s*$", re.IGNORECASE)

# The SDK's default retry waits 15 s before the first retry: a whole agent step. Retry sooner and
# give up sooner; the step engine has its own backoff above this.
_DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 10}


def _default_retry() -> ExponentialRetry:
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1)


def split_key(key: str) -> tuple[str, str]:
    """("container", "blob/name") of a key; ValueError if Azure would reject either part."""
    container, sep, name = key.partition("/")
    if not sep or not _CONTAINER_RE.match(container):
        raise ValueError(f"object key {key!r} must start with a container (3-63 of a-z, 0-9, '-') and '/'")
    if not name or len(name) > _MAX_BLOB_NAME:
        raise ValueError(f"object key {key!r} needs a blob name of 1-{_MAX_BLOB_NAME} characters after the container")
    return container, name


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _quote(etag: str) -> str:
    return f'"{_unquote(etag)}"'


def _error_code(exc: HttpResponseError) -> object:
    """The storage error code the blob SDK sets on its errors (not declared on azure-core's type)."""
    return getattr(exc, "error_code", None)


def _is_container_missing(exc: ResourceNotFoundError) -> bool:
    return bool(_error_code(exc) == StorageErrorCode.CONTAINER_NOT_FOUND)


@contextmanager
def _unavailable_on_transport_errors(what: str) -> Iterator[None]:
    """Turn "could not reach the service" into DependencyUnavailable; let every other error through."""
    try:
        yield
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise DependencyUnavailable(f"blob storage unreachable ({what}): {exc}") from exc
    except HttpResponseError as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            raise DependencyUnavailable(f"blob storage failed ({what}): {exc.status_code} {_error_code(exc)}") from exc
        raise


def _precondition_error(exc: HttpResponseError) -> bool:
    # 409 BlobAlreadyExists (create-only) and 412 ConditionNotMet (If-Match / If-None-Match) mean
    # "someone else's version is there". Lease conflicts (409/412 Lease*) are not: re-reading would
    # not help, so they surface as they are.
    code = str(_error_code(exc) or "")
    return exc.status_code in (409, 412) and not code.startswith("Lease")


class AzureObjectStore:
    """ObjectStore over Blob Storage; thread-safe (the SDK client is)."""

    local_reads = False  # every read is a round trip to the service

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    @classmethod
    def from_connection_string(cls, connection_string: str, **client_options: Any) -> AzureObjectStore:
        """A store from a connection string; "UseDevelopmentStorage=true" means Azurite's defaults."""
        if _DEV_STORAGE_RE.match(connection_string):
            # The SDK knows this form but only in exactly this spelling.
            connection_string = "UseDevelopmentStorage=true"
        options = {**_DEFAULT_CLIENT_OPTIONS, "retry_policy": _default_retry(), **client_options}
        return cls(BlobServiceClient.from_connection_string(connection_string, **options))

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureObjectStore:
        """AzureWebJobsStorage connection string, or AzureWebJobsStorage__blobServiceUri + managed identity."""
        if settings.storage_connection:
            return cls.from_connection_string(settings.storage_connection)
        if settings.storage_blob_uri:
            from azure.identity import DefaultAzureCredential  # only the identity form needs it

            options = {**_DEFAULT_CLIENT_OPTIONS, "retry_policy": _default_retry()}
            return cls(BlobServiceClient(settings.storage_blob_uri, credential=DefaultAzureCredential(), **options))
        raise ValueError(
            "Blob storage is not configured: set AzureWebJobsStorage (a connection string, or "
            "UseDevelopmentStorage=true for Azurite) or AzureWebJobsStorage__blobServiceUri with a managed identity"
        )

    def close(self) -> None:
        self._service.close()

    # --- ObjectStore ----------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        container, name = split_key(key)
        blob = self._service.get_blob_client(container, name)
        with _unavailable_on_transport_errors(f"get {key}"):
            try:
                download = blob.download_blob(max_concurrency=1)
                data = download.readall()
            except ResourceNotFoundError:
                return None
        props = download.properties
        return StoredObject(data=data, etag=_unquote(props.etag), last_modified=props.last_modified)

    def exists(self, key: str) -> bool:
        container, name = split_key(key)
        with _unavailable_on_transport_errors(f"exists {key}"):
            return bool(self._service.get_blob_client(container, name).exists())

    def put(self, key: str, data: bytes, *, if_match: str | None = None, durable: bool = True) -> str:
        # Every Blob Storage write is durable once acknowledged: durable=False changes nothing here.
        container, name = split_key(key)
        blob = self._service.get_blob_client(container, name)
        if if_match is None:
            return self._upload(key, lambda: blob.upload_blob(bytes(data), overwrite=True))
        # A missing container means a missing blob: the If-Match fails, nothing to create.
        return self._upload(
            key,
            lambda: blob.upload_blob(
                bytes(data), overwrite=True, etag=_quote(if_match), match_condition=MatchConditions.IfNotModified
            ),
            create_container=False,
        )

    def put_if_absent(self, key: str, data: bytes) -> str:
        container, name = split_key(key)
        blob = self._service.get_blob_client(container, name)
        # overwrite=False sends If-None-Match: *, which the service checks atomically with the write.
        return self._upload(key, lambda: blob.upload_blob(bytes(data), overwrite=False))

    def put_many(self, writes: Sequence[ObjectWrite]) -> list[str]:
        # No transaction over several blobs: one upload after another, stopping at the first failure.
        return [self.put_if_absent(w.key, w.data) if w.if_absent else self.put(w.key, w.data) for w in writes]

    def delete(self, key: str, *, if_match: str | None = None, durable: bool = True) -> bool:
        # Durable once acknowledged, as every Blob Storage write: durable=False changes nothing here.
        container, name = split_key(key)
        blob = self._service.get_blob_client(container, name)
        conditions: dict[str, Any] = {}
        if if_match is not None:
            conditions = {"etag": _quote(if_match), "match_condition": MatchConditions.IfNotModified}
        with _unavailable_on_transport_errors(f"delete {key}"):
            try:
                blob.delete_blob(**conditions)
            except ResourceNotFoundError:
                return False
            except HttpResponseError as exc:
                if not _precondition_error(exc):
                    raise
                # The service answers 412 for If-Match on a missing blob too; the port says False.
                if not blob.exists():
                    return False
                raise PreconditionFailed(f"{key}: ETag {if_match} no longer current") from exc
        return True

    def list(self, prefix: str) -> Iterator[str]:
        container, sep, name_prefix = prefix.partition("/")
        if sep:
            yield from self._list_container(container, name_prefix)
            return
        # A prefix without "/" can span containers ("check" -> "checkpoints/..."). Rare (tools only),
        # so collect and sort: container order is not key order ("a-b/x" < "a/x").
        with _unavailable_on_transport_errors(f"list containers {prefix!r}"):
            containers = [c.name for c in self._service.list_containers(name_starts_with=prefix)]
        yield from sorted(key for c in containers for key in self._list_container(c, ""))

    def ping(self) -> None:
        with _unavailable_on_transport_errors("ping"):
            next(iter(self._service.list_containers(results_per_page=1).by_page()), None)

    # --- internals ------------------------------------------------------------------------------

    def _list_container(self, container: str, name_prefix: str) -> Iterator[str]:
        if not _CONTAINER_RE.match(container):
            return  # no such container can exist
        client = self._service.get_container_client(container)
        with _unavailable_on_transport_errors(f"list {container}/{name_prefix}"):
            try:
                # The service returns names in lexicographic order, page by page.
                for name in client.list_blob_names(name_starts_with=name_prefix or None):
                    yield f"{container}/{name}"
            except ResourceNotFoundError as exc:
                if not _is_container_missing(exc):
                    raise

    def _upload(self, key: str, upload: Callable[[], dict[str, Any]], *, create_container: bool = True) -> str:
        # Containers are created lazily: write first and create the container only when the service
        # says it is missing. That costs nothing on the hot path, needs no cache of "containers that
        # exist", and heals a container deleted behind our back.
        with _unavailable_on_transport_errors(f"put {key}"):
            try:
                try:
                    result = upload()
                except ResourceNotFoundError as exc:
                    if not _is_container_missing(exc):
                        raise
                    if not create_container:
                        raise PreconditionFailed(f"{key} does not exist") from exc
                    self._create_container(key.partition("/")[0])
                    result = upload()
            except ResourceNotFoundError as exc:
                raise PreconditionFailed(f"{key} does not exist") from exc
            except HttpResponseError as exc:
                if _precondition_error(exc):
                    raise PreconditionFailed(f"{key}: {_error_code(exc) or exc.status_code}") from exc
                raise
        return _unquote(result["etag"])

    def _create_container(self, container: str) -> None:
        try:
            self._service.create_container(container)
        except ResourceExistsError as exc:
            if _error_code(exc) == StorageErrorCode.CONTAINER_BEING_DELETED:
                # Azure keeps a deleted container's name for ~30 s; the write can only succeed later.
                raise DependencyUnavailable(f"container {container} is still being deleted; retry later") from exc
            # Created by a concurrent writer: fine.
