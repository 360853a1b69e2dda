"""Step engine cost: steps/s, hop latency, single-thread ms/step and cost against the month's volume.

Durability on every side is the same: fsync'd commits (SQLite WAL with synchronous=FULL on our
embedded object store and queue, and on LangGraph's SqliteSaver connection).

Both engines run the same agent-shaped workload: the research agent's own step function
(agents.research.run_step) with the offline model over the samples/ corpus, six steps a job.
Ours: the embedded queue, create-only checkpoints, job projection and ledger, driven by the
runtime's own QueueConsumer. LangGraph: a one-node loop graph whose node is the same step
function, checkpointed by its SQLite saver after every super-step.

Figures:
- steps/s with --workers workers over --jobs jobs, against LangGraph + SqliteSaver;
- hop latency = from the commit of step n to the start of step n+1 of the same job (one job at a time,
  ours and LangGraph's in alternating rounds so that both see the same machine);
- single-thread ms/step (run, commit, settle, complete and claim the next message) against the fsync'd floor: one
  SQLite transaction (synchronous=FULL) that writes a checkpoint of the same size, enqueues and dequeues;
- ms/step and submit ms with --history N prior jobs of the tenant this month, against history 0.

    python bench/steps.py [--jobs 200] [--workers 4] [--hop-rounds 4] [--history 100000] [--sync FULL]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import research  # noqa: E402
from agents.state import AgentState  # noqa: E402
from bench.figures import Figure, save, show  # noqa: E402
from shared.contracts import Policy  # noqa: E402
from shared.services.knowledge import parse_upload  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "How does the sweep handle dead-lettered messages after a crash?"
TENANT = "dev"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def corpus() -> list[Any]:
    return [parse_upload(p.name, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "samples").glob("*.md"))]


def backends_at(data_dir: Path, sync: str) -> Any:
    """Embedded backends over data_dir with the samples/ corpus indexed."""
    from shared.bootstrap import build_backends
    from shared.services.knowledge import index_documents
    from shared.settings import Settings

    b = build_backends(Settings(data_dir=data_dir, log_level="WARNING", embedded_synchronous=sync))
    index_documents(b, corpus())
    return b


# --- ours ----------------------------------------------------------------------------------------


class EngineRig:
    """Ours: the embedded queue, create-only checkpoints, job projection and ledger, driven by QueueConsumer."""

    def __init__(self, data_dir: Path, sync: str, workers: int) -> None:
        from shared.contracts import StepMessage
        from shared.engine.steps import handle_step
        from shared.runtime.functions import QueueFunction

        self.b = b = backends_at(data_dir, sync)
        self.workers = workers
        self.committed: dict[tuple[str, int], float] = {}
        self.started: dict[tuple[str, int], float] = {}
        self.ended = threading.Semaphore(0)
        commit = b.checkpoints.commit

        def timed_commit(cp: Any) -> bool:
            won = commit(cp)
            self.committed[(cp.job_id, cp.step)] = time.perf_counter()
            if won and cp.outcome is not None:
                self.ended.release()  # waited on rather than polling job records (which costs the GIL)
            return won

        b.checkpoints.commit = timed_commit  # type: ignore[method-assign]

        def step_function(msg: Any) -> None:
            body = msg.get_body()
            m = StepMessage.model_validate_json(body)
            self.started[(m.job_id, m.step)] = time.perf_counter()
            handle_step(b, body, msg.delivery_count or 1)

        self.fn = QueueFunction(
            name="agent_step",
            queue=b.queue.name,
            connection="ServiceBusConnection",  # type: ignore[attr-defined]
            run=step_function,
            arg_name="msg",
        )

    def _consumer(self) -> Any:
        from shared.runtime.consumer import QueueConsumer

        return QueueConsumer(self.b.queue, self.fn, concurrency=self.workers, max_lock_renewal_seconds=60)  # type: ignore[arg-type]

    def _run(self, batch: int, before_timing=lambda: None) -> tuple[list[str], float]:  # type: ignore[no-untyped-def]
        from shared.services import jobs as job_service

        ids = [job_service.submit(self.b, TENANT, job_service.JobRequest(task=QUESTION))[0].id for _ in range(batch)]
        before_timing()
        t0 = time.perf_counter()
        for _ in ids:
            self.ended.acquire()
        return ids, time.perf_counter() - t0

    def hops(self, jobs: int) -> list[float]:
        """One job at a time, so a hop is the engine's own overhead, not queueing behind other jobs."""
        self.committed.clear()
        self.started.clear()
        consumer = self._consumer()
        consumer.start()
        for _ in range(jobs):
            self._run(1)
        consumer.stop()
        started = self.started
        return [(started[(j, n + 1)] - t) * 1000 for (j, n), t in self.committed.items() if (j, n + 1) in started]

    def throughput(self, jobs: int) -> dict[str, float]:
        """Every job submitted first, then the workers start and the clock with them."""
        consumer = self._consumer()
        ids, elapsed = self._run(jobs, consumer.start)
        consumer.stop()
        failed = [i for i in ids if self.b.jobs.get(i).status != "succeeded"]  # type: ignore[union-attr]
        assert not failed, f"{len(failed)} jobs did not succeed"
        steps = sum(len(self.b.checkpoints.steps(i)) for i in ids)
        return {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed}

    def close(self) -> None:
        self.b.close()


# --- LangGraph -----------------------------------------------------------------------------------


class GraphState(TypedDict):
    agent: dict[str, Any]
    done: bool


class LangGraphRig:
    """LangGraph: a one-node loop graph whose node is the same step function, checkpointed by SqliteSaver."""

    def __init__(self, data_dir: Path, sync: str, workers: int) -> None:
        from langchain_core.runnables import RunnableConfig
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph

        from shared.adapters.local.offline_model import OfflineModel
        from shared.adapters.local.search import LocalKnowledgeIndex
        from shared.services.knowledge import chunk_document
        from shared.tokens import count_message_tokens

        index = LocalKnowledgeIndex(data_dir / "lg-search.sqlite3")
        for doc in corpus():
            index.upsert(chunk_document(doc))
        self.policy = policy = Policy()
        ctx = research.AgentContext(model=OfflineModel(), index=index, policy=policy, count_tokens=count_message_tokens)
        self.workers = workers
        self.lock = lock = threading.Lock()
        self.ended: dict[tuple[str, int], float] = {}
        self.began: dict[tuple[str, int], float] = {}
        self.threads = 0

        def step(state: GraphState, config: RunnableConfig) -> GraphState:
            thread = config["configurable"]["thread_id"]
            n = len(state["agent"].get("messages", []))
            with lock:
                self.began[(thread, n)] = time.perf_counter()
            result = research.run_step(AgentState.model_validate(state["agent"]), ctx)
            with lock:
                self.ended[(thread, len(result.state.messages))] = time.perf_counter()  # keyed by the next step's n
            return {"agent": result.state.model_dump(mode="json"), "done": result.outcome is not None}

        graph = StateGraph(GraphState)
        graph.add_node("step", step)
        graph.add_edge(START, "step")
        graph.add_conditional_edges("step", lambda s: END if s["done"] else "step")
        conn = sqlite3.connect(data_dir / "langgraph.sqlite3", check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {sync}")  # SqliteSaver itself sets journal_mode=WAL
        self.app = graph.compile(checkpointer=SqliteSaver(conn))

    def _run(self, thread: str) -> int:
        """One job to its end; its super-steps."""
        state = research.start(QUESTION, self.policy, [])
        config = {"configurable": {"thread_id": thread}, "recursion_limit": 100}
        out = self.app.invoke({"agent": state.model_dump(mode="json"), "done": False}, config)  # type: ignore[arg-type]
        assert out["done"]
        with self.lock:
            return sum(1 for k in self.began if k[0] == thread)

    def _threads(self, n: int) -> list[str]:
        self.threads += n
        return [f"job-{i}" for i in range(self.threads - n, self.threads)]

    def hops(self, jobs: int) -> list[float]:
        """One job at a time, as for ours; the hop includes the saver's write after step n, as ours our commit."""
        self.began.clear()
        self.ended.clear()
        for thread in self._threads(jobs):
            self._run(thread)
        return [(self.began[k] - self.ended[k]) * 1000 for k in self.began if k in self.ended]

    def throughput(self, jobs: int) -> dict[str, float]:
        threads = self._threads(jobs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            steps = sum(pool.map(self._run, threads))
        elapsed = time.perf_counter() - t0
        return {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed}

    def close(self) -> None:
        pass


def bench_engines(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Hops in alternating rounds (ours, theirs, theirs, ours, ...) so both see the same machine; then throughput."""
    ours = EngineRig(tmp / "engine", args.sync, args.workers)
    theirs = LangGraphRig(tmp, args.sync, args.workers)
    hops: dict[Any, list[float]] = {ours: [], theirs: []}
    for r in range(args.hop_rounds):
        for rig in (ours, theirs) if r % 2 == 0 else (theirs, ours):
            hops[rig] += rig.hops(args.hop_jobs)
    results = []
    for rig in (ours, theirs):
        figures = rig.throughput(args.jobs)
        figures.update(hop_p50_ms=pct(hops[rig], 0.5), hop_p99_ms=pct(hops[rig], 0.99), hops=len(hops[rig]))
        rig.close()
        results.append(figures)
    return results[0], results[1]


# --- single thread: ms/step against the fsync'd floor, and against the month's volume -------------


def run_step(b: Any, message: Any) -> Any:
    """Handle and complete one step as the runtime's QueueConsumer does: its sends commit with the
    completion, which also claims the next message (returned, or None when none is due)."""
    from shared.engine.steps import handle_step

    with b.queue.collecting_sends() as sends:
        handle_step(b, message.body, message.delivery_count)
    return b.queue.complete_and_receive(message, sends=sends)


def serial(b: Any, jobs: int) -> dict[str, float]:
    """Submit `jobs` jobs, then run every step in this thread: receive, handle, complete."""
    from shared.services import jobs as job_service

    submits, steps, sizes = [], [], []
    ids = []
    for _ in range(jobs):
        t = time.perf_counter()
        ids.append(job_service.submit(b, TENANT, job_service.JobRequest(task=QUESTION))[0].id)
        submits.append((time.perf_counter() - t) * 1000)
    message = next(iter(b.queue.receive(1, wait_seconds=0.0)), None)
    while message is not None:  # each step's time includes claiming the next one, as a worker does
        t = time.perf_counter()
        message = run_step(b, message)
        steps.append((time.perf_counter() - t) * 1000)
    for job_id in ids[:5]:
        sizes += [len(b.objects.get(k).data) for k in b.objects.list(f"checkpoints/{job_id}/")]
    assert all(b.jobs.get(i).status == "succeeded" for i in ids), "a job did not succeed"
    return {
        "submit_ms": statistics.median(submits),
        "step_ms": sum(steps) / len(steps),
        "checkpoint_bytes": statistics.mean(sizes),
    }


def floor_ms(data_dir: Path, checkpoint_bytes: int, sync: str, rounds: int = 200) -> float:
    """One fsync'd SQLite transaction per step: write the checkpoint, enqueue the next step, dequeue this one."""
    (data_dir / "floor.sqlite3").unlink(missing_ok=True)
    conn = sqlite3.connect(data_dir / "floor.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute("CREATE TABLE checkpoints (key TEXT PRIMARY KEY, data BLOB)")
    conn.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, body BLOB)")
    conn.execute("INSERT INTO messages (body) VALUES (?)", (b'{"job_id":"j","step":1}',))
    blob = os.urandom(checkpoint_bytes // 2).hex().encode()
    t0 = time.perf_counter()
    for n in range(rounds):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO checkpoints VALUES (?, ?)", (f"j/{n:06d}", blob))
        conn.execute("INSERT INTO messages (body) VALUES (?)", (b'{"job_id":"j","step":2}',))
        conn.execute("DELETE FROM messages WHERE seq = (SELECT MIN(seq) FROM messages)")
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed / rounds * 1000


def seed_history(b: Any, n: int) -> float:
    """Write n finished jobs of TENANT this month straight into the embedded store; return the seconds taken.

    Each gets what a finished job leaves: its record, its tenant listing marker and its ledger
    entry, plus the month total they add up to. Written directly (one transaction), not run.
    """
    from shared.contracts import Job, Usage
    from shared.engine import layout
    from shared.engine.ledger import month_of
    from shared.engine.repositories import JobStore

    t0 = time.perf_counter()
    month = month_of()
    usage = Usage(prompt_tokens=900, completion_tokens=200)
    template = Job(
        id="job-template", tenant=TENANT, task=QUESTION, policy=Policy(), status="succeeded", usage=usage, step=6
    )
    now = time.time()
    rows = []
    for i in range(n):
        job = template.model_copy(update={"id": f"job-history-{i:07d}"})
        entry = json.dumps({**usage.model_dump(), "step": 6}).encode()
        rows += [
            (layout.job_key(job.id), job.model_dump_json().encode(), os.urandom(12).hex(), now),
            (JobStore._tenant_marker(job), b"", os.urandom(12).hex(), now),
            (layout.ledger_job_key(month, TENANT, job.id), entry, os.urandom(12).hex(), now),
        ]
    total = {f: getattr(usage, f) * n for f in ("prompt_tokens", "completion_tokens", "cached_tokens")}
    record = json.dumps({"total": total, "recent": {}, "legacy": {}}).encode()
    rows.append((layout.ledger_key(month, TENANT), record, os.urandom(12).hex(), now))
    conn = sqlite3.connect(b.objects.path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    # Fold the seed into the database file now, so its WAL checkpoint is not charged to the measured steps.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def bench_volume(history: int, jobs: int, rounds: int, data_dir: Path, sync: str) -> dict[str, dict[str, float]]:
    """Single-thread ms/step and submit ms on a fresh store and on one with `history` prior jobs.

    fsync latency drifts over a run, so the two stores (and the floor) are measured in alternating
    rounds and each figure is the median over rounds.
    """
    stores = {}
    for n in (0, history):
        b = backends_at(data_dir / f"history-{n}", sync)
        # Budget far above the seeded history, so the jobs run rather than stop at the budget.
        b.settings.monthly_token_budget = 10**12
        seeded = seed_history(b, n) if n else 0.0
        serial(b, 3)  # warm up: imports, caches, SQLite page cache
        stores[n] = (b, seeded)
    per_round: dict[int, list[dict[str, float]]] = {n: [] for n in stores}
    floors = []
    for _ in range(rounds):
        for n, (b, _) in stores.items():
            per_round[n].append(serial(b, max(1, jobs // rounds)))
        floors.append(floor_ms(data_dir, int(per_round[0][-1]["checkpoint_bytes"]), sync))
    results = {}
    for n, (b, seeded) in stores.items():
        figures = {k: statistics.median(r[k] for r in per_round[n]) for k in per_round[n][0]}
        results[str(n)] = {**figures, "seed_s": seeded, "floor_ms": statistics.median(floors)}
        b.close()
    return results


# --- job length: storage and per-step time of a 100-step job ----------------------------------------


class LongModel:
    """The offline model, made to research for `turns` turns (search, then read a hit) before it reports."""

    name = "offline-long"
    offline = True

    def __init__(self, turns: int) -> None:
        from shared.adapters.local.offline_model import OfflineModel

        self.turns = turns
        self.inner = OfflineModel()
        # Seconds spent inside complete(): the stand-in model re-reads the whole prompt every turn (a
        # real model's cost, paid on its server), which the engine's per-step figure leaves out.
        self.seconds = 0.0

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        started = time.perf_counter()
        try:
            return self._complete(messages, tools)
        finally:
            self.seconds += time.perf_counter() - started

    def ping(self) -> None:
        return None

    def _complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        from shared.contracts import Usage
        from shared.ports import ModelTurn, ToolCall

        done = sum(1 for m in messages if m.get("role") == "assistant")
        if done >= self.turns:
            return self.inner.complete(messages, tools)
        # Usage as the offline model reckons it: the prompt's characters / 4.
        usage = Usage(prompt_tokens=sum(len(str(m.get("content") or "")) for m in messages) // 4, completion_tokens=20)
        turn = ModelTurn(content=None, tool_calls=[], usage=usage, model=self.name)
        if done % 2 == 0:
            arguments = json.dumps({"query": f"{QUESTION} (angle {done})", "top": 5})
            turn.tool_calls = [ToolCall(id=f"call_{done}_0", name="search_knowledge", arguments=arguments)]
        else:
            last_search = next(
                json.loads(m["content"])
                for m in reversed(messages)
                if m.get("role") == "tool" and '"results"' in m["content"]
            )
            hit = last_search["results"][(done // 2) % len(last_search["results"])]
            arguments = json.dumps({"doc_id": hit["doc_id"], "chunk_id": hit["chunk_id"]})
            turn.tool_calls = [ToolCall(id=f"call_{done}_0", name="read_document", arguments=arguments)]
        return turn


def bench_long_job(data_dir: Path, sync: str, steps: int, jobs: int) -> dict[str, float]:
    """Run `jobs` jobs of about `steps` steps each in one thread; bytes stored per job, ms at each step."""
    from shared.services import jobs as job_service

    b = backends_at(data_dir, sync)
    model = b.model = LongModel(turns=steps // 2 - 1)
    b.settings.policy_defaults = Policy(max_steps=steps + 20, max_tokens=10**9)
    by_step: dict[int, list[float]] = {}
    stored = []
    for _ in range(jobs):
        job = job_service.submit(b, TENANT, job_service.JobRequest(task=QUESTION))[0]
        message = next(iter(b.queue.receive(1, wait_seconds=0.0)), None)
        while message is not None:
            step = json.loads(message.body)["step"]
            t, in_model = time.perf_counter(), model.seconds
            message = run_step(b, message)
            engine = time.perf_counter() - t - (model.seconds - in_model)
            by_step.setdefault(step, []).append(engine * 1000)
        final = b.jobs.get(job.id)
        assert final is not None and final.status == "succeeded", final
        stored.append(sum(len(b.objects.get(k).data) for k in b.objects.list(f"checkpoints/{job.id}/")))
        last_step = final.step
    b.close()

    def around(n: int) -> float:  # median over the jobs and the neighbouring steps, to steady the figure
        return statistics.median(v for k in range(n - 2, n + 3) for v in by_step.get(k, []))

    return {
        "steps": last_step,
        "bytes": statistics.median(stored),
        "ms_late": around(last_step - 3),
        "ms_early": around(6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hop-jobs", type=int, default=25, help="jobs run one at a time per hop round")
    parser.add_argument("--hop-rounds", type=int, default=4, help="alternating hop rounds, ours and LangGraph's")
    parser.add_argument("--history", type=int, default=100_000, help="prior jobs of the tenant this month")
    parser.add_argument("--serial-jobs", type=int, default=40, help="jobs run single-threaded per history size")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of the single-thread figures")
    parser.add_argument("--long-steps", type=int, default=100, help="steps of the long job")
    parser.add_argument("--long-jobs", type=int, default=12, help="long jobs (steps 4-8 are few samples a job)")
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SQLite synchronous, both sides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp:
        ours, theirs = bench_engines(args, Path(tmp))
        volume = bench_volume(args.history, args.serial_jobs, args.rounds, Path(tmp), args.sync)
        fresh, loaded = volume["0"], volume[str(args.history)]
        floor = fresh["floor_ms"]
        long = bench_long_job(Path(tmp) / "long", args.sync, args.long_steps, args.long_jobs)
    durability = (
        "fsync'd commits (SQLite WAL, synchronous=FULL) on both sides"
        if args.sync == "FULL"
        else "synchronous=NORMAL on both sides (no fsync per commit)"
    )
    context = (
        f"{args.jobs} jobs x 6 steps (offline model, samples/ corpus), {args.workers} workers; {durability}; "
        f"hops: {args.hop_rounds} alternating rounds of {args.hop_jobs} jobs one at a time "
        f"({ours['hops']:.0f} and {theirs['hops']:.0f} hops); "
        f"single-thread: {args.serial_jobs} jobs after 0 and {args.history:,} prior jobs of the tenant this month "
        f"(seeded in {loaded['seed_s']:.1f} s), in {args.rounds} alternating rounds, medians"
    )
    print(context)
    print(f"{'':<22}{'steps':>8}{'seconds':>10}{'steps/s':>10}{'hop p50 ms':>12}{'hop p99 ms':>12}")
    for name, r in (("agent-framework", ours), ("langgraph+sqlite", theirs)):
        print(
            f"{name:<22}{r['steps']:>8.0f}{r['seconds']:>10.2f}{r['steps_per_s']:>10.0f}"
            f"{r['hop_p50_ms']:>12.2f}{r['hop_p99_ms']:>12.2f}"
        )
    h = f"{args.history:,}"
    figures = [
        Figure(
            f"steps/s, {args.jobs} jobs, {args.workers} workers",
            ours["steps_per_s"],
            "steps/s",
            ">= 2x LangGraph",
            ours["steps_per_s"] >= 2 * theirs["steps_per_s"],
            "LangGraph + SqliteSaver",
            theirs["steps_per_s"],
        ),
        Figure(
            "single-thread ms/step",
            fresh["step_ms"],
            "ms",
            "<= 2x the fsync'd floor",
            fresh["step_ms"] <= 2 * floor,
            "one fsync'd SQLite txn (checkpoint + enqueue + dequeue)",
            floor,
        ),
        Figure(
            "hop p50",
            ours["hop_p50_ms"],
            "ms",
            "<= 1 ms",
            ours["hop_p50_ms"] <= 1.0,
            "LangGraph hop p50",
            theirs["hop_p50_ms"],
        ),
        Figure(
            "hop p99",
            ours["hop_p99_ms"],
            "ms",
            "<= LangGraph's",
            ours["hop_p99_ms"] <= theirs["hop_p99_ms"],
            "LangGraph hop p99",
            theirs["hop_p99_ms"],
        ),
        Figure(
            f"ms/step after {h} jobs this month",
            loaded["step_ms"],
            "ms",
            "within 10% of history 0",
            loaded["step_ms"] <= 1.1 * fresh["step_ms"],
            "history 0",
            fresh["step_ms"],
        ),
        Figure(
            f"submit ms after {h} jobs this month",
            loaded["submit_ms"],
            "ms",
            "within 10% of history 0",
            loaded["submit_ms"] <= 1.1 * fresh["submit_ms"],
            "history 0",
            fresh["submit_ms"],
        ),
    ]
    n = int(long["steps"])
    figures += [
        Figure(
            f"checkpoint bytes stored for one {n}-step job",
            long["bytes"] / 1e6,
            "MB",
            "< 1 MB",
            long["bytes"] < 1e6,
        ),
        Figure(
            f"engine ms/step near step {n - 3} of a {n}-step job (model time excluded)",
            long["ms_late"],
            "ms",
            "within 1.5x of step 6",
            long["ms_late"] <= 1.5 * long["ms_early"],
            "steps 4-8 of the same jobs",
            long["ms_early"],
        ),
    ]
    show(figures)
    save("steps", figures, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
