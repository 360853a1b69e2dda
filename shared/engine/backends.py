"""The Backends bundle: the ports one process works with, and the repositories built over them.

Built from settings by the composition root (bootstrap.py); passed as a parameter to every service, timer and
step handler below the entry points.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.research import TokenCounter
from shared.engine.ledger import UsageLedger
from shared.engine.memory import SessionMemory
from shared.engine.repositories import CheckpointStore, JobStore, ReportStore
from shared.ports import ChatModel, KnowledgeIndex, ObjectStore, StepQueue
from shared.settings import Settings

__all__ = ["Backends"]


@dataclass
class Backends:
    settings: Settings
    objects: ObjectStore
    queue: StepQueue
    index: KnowledgeIndex
    model: ChatModel
    count_tokens: TokenCounter

    def __post_init__(self) -> None:
        self.jobs = JobStore(self.objects)
        self.checkpoints = CheckpointStore(self.objects)
        self.reports = ReportStore(self.objects)
        self.ledger = UsageLedger(self.objects)
        self.memory = SessionMemory(
            self.objects, ttl_seconds=self.settings.memory_ttl_seconds, max_items=self.settings.memory_max_items
        )

    def close(self) -> None:
        for port in (self.queue, self.index, self.objects):
            close = getattr(port, "close", None)
            if close:
                close()
