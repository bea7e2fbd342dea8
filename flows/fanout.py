"""Fan-out over a work pool: one flow run of a deployment per job, followed to the end by the flow that
submitted them. The study runs one job per cell, the hyperparameter search one per trial.

What happens to a job:

- ``COMPLETED``: done.
- ``FAILED`` (the flow raised, after its own ``retries``) or ``CANCELLED``: reported, not resubmitted;
  the caller lists it (the study's tables name the cell and the reason).
- ``CRASHED`` (its process died: killed, out of memory) and *orphaned* runs: resubmitted, up to
  ``attempts`` runs per job. A run is orphaned when it is PENDING or RUNNING on a worker that has left
  the pool or stopped sending heartbeats for ``stale_heartbeats`` of its intervals (the rule Prefect's
  own foreman uses to mark workers offline): the machine died with the run on it, and nothing else would
  ever end it. It is set to CRASHED (with the reason) before its job is resubmitted.

Resuming: ``Dispatcher.active_runs(tag)`` finds runs a previous (dead) parent submitted and that are
still scheduled or running, so a re-run adopts them instead of starting the same work twice.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WORKER_LABEL = "prefect.worker.name"


@dataclass
class Job:
    key: str
    parameters: dict[str, Any]
    runs: list[UUID] = field(default_factory=list)  # every flow run submitted for it, oldest first
    states: list[str] = field(default_factory=list)  # the last state type seen of each run
    workers: list[str] = field(default_factory=list)  # the worker each run went to ("" before one took it)
    message: str = ""  # the final state's message (why it failed)
    done: bool = False

    @property
    def ok(self) -> bool:
        return self.done and bool(self.states) and self.states[-1] == "COMPLETED"

    @property
    def run_id(self) -> UUID:
        return self.runs[-1]


class Dispatcher:
    """Submits flow runs of ``deployment`` and follows them (call from inside a flow: they become its
    subflows in the UI, or from plain code)."""

    def __init__(
        self,
        deployment: str,
        *,
        job_variables: dict | None = None,
        tags: Iterable[str] = (),
        attempts: int = 2,
        poll_s: float = 2.0,
        stale_heartbeats: float = 3.0,
        timeout_s: float | None = None,
        log: Callable[[str], None] = print,
    ):
        from prefect.client.orchestration import get_client

        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.deployment, self.job_variables, self.tags = deployment, job_variables or {}, list(tags)
        self.attempts, self.poll_s, self.stale_heartbeats, self.log = attempts, poll_s, stale_heartbeats, log
        self.jobs: dict[str, Job] = {}
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        from prefect.exceptions import ObjectNotFound

        self._client = get_client(sync_client=True)
        self._client.__enter__()
        try:
            dep = self._client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            self.close()
            raise LookupError(
                f"deployment {deployment!r} is not on the Prefect server: deploy it from the repository "
                f"root (python -m infra.stack deploy, or prefect deploy --name {deployment})"
            ) from None
        self._deployment_id, self.pool = dep.id, dep.work_pool_name

    def close(self) -> None:
        self._client.__exit__(None, None, None)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # submitting -----------------------------------------------------------------------------------------
    def submit(self, key: str, parameters: dict[str, Any]) -> Job:
        job = self.jobs.get(key) or Job(key, parameters)
        self.jobs[key] = job
        self._launch(job)
        return job

    def adopt(self, key: str, parameters: dict[str, Any], run_id: UUID) -> Job:
        """Follow a run submitted earlier (by a parent that died) instead of submitting the job again."""
        job = Job(key, parameters, runs=[UUID(str(run_id))], states=["SCHEDULED"], workers=[""])
        self.jobs[key] = job
        return job

    def _launch(self, job: Job) -> None:
        from prefect.deployments import run_deployment

        fr = run_deployment(
            self.deployment,
            parameters=job.parameters,
            timeout=0,
            flow_run_name=job.key,
            tags=self.tags,
            job_variables=self.job_variables or None,
            idempotency_key=self._idempotency_key(job.key),
        )
        job.runs.append(fr.id)
        job.states.append("SCHEDULED")
        job.workers.append("")
        job.done = False

    def _idempotency_key(self, key: str) -> str | None:
        """The same key for the same attempt of a job from every launcher with the same tags, so the server
        creates one flow run and hands it to each launcher that submits the job (two launchers of one study,
        or the same resubmission of a crashed run). The attempt is the number of the job's runs that ended:
        a crashed run's resubmission gets a new key, and so does a re-run of a study whose run of it failed."""
        if not self.tags:
            return None
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterName,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.objects import StateType

        ended = self._client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self._deployment_id])),
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[key]),
                tags=FlowRunFilterTags(all_=self.tags),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in sorted(FINAL)])),
            ),
        )
        return f"{'|'.join(sorted(self.tags))}/{key}/{len(ended)}"

    def active_runs(self, tag: str) -> dict[str, UUID]:
        """Runs of this deployment tagged ``tag`` that are not final yet, by flow run name (the job key)."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.objects import StateType

        runs = self._client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self._deployment_id])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING])
                ),
            ),
        )
        return {r.name: r.id for r in runs}

    # following -------------------------------------------------------------------------------------------
    @property
    def timed_out(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def in_flight(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.done]

    def wait(self, timeout: float | None = None) -> list[Job]:
        """Block until at least one job has its final outcome (or ``timeout`` s pass); returns those jobs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.in_flight():
            finished = self.poll()
            if finished:
                return finished
            if deadline is not None and time.monotonic() > deadline:
                return []
            time.sleep(self.poll_s)
        return []

    def poll(self) -> list[Job]:
        """One look at every job in flight: record states, crash orphans, resubmit crashed runs."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        live = {j.run_id: j for j in self.in_flight()}
        if not live:
            return []
        if self.timed_out:
            return self._give_up(list(live.values()))
        runs = self._client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(live))), limit=len(live)
        )
        why = (
            self._why_stopped() if any(r.state and r.state.type.value in ("PENDING", "RUNNING") for r in runs) else None
        )
        finished = []
        for r in runs:
            job = live[r.id]
            state = r.state.type.value if r.state else "SCHEDULED"
            job.workers[-1] = (r.labels or {}).get(WORKER_LABEL, job.workers[-1]) or ""
            message = (r.state.message or "") if r.state else ""
            stopped = why(job.workers[-1]) if why and state in ("PENDING", "RUNNING") and job.workers[-1] else None
            if stopped:
                message = f"worker {job.workers[-1]} stopped ({stopped}) while running it"
                self._crash(r.id, message)
                state = "CRASHED"
            job.states[-1] = state
            if state not in FINAL:
                continue
            job.message = message
            if state == "CRASHED" and len(job.runs) < self.attempts:
                self.log(
                    f"{job.key}: run {r.id} crashed ({message}); submitting it again "
                    f"(attempt {len(job.runs) + 1} of {self.attempts})"
                )
                self._launch(job)
                continue
            job.done = True
            finished.append(job)
        return finished

    def _give_up(self, jobs: list[Job]) -> list[Job]:
        """Past ``timeout_s``: cancel what is still scheduled or running (the worker stops its process)."""
        from prefect.states import Cancelling

        for job in jobs:
            self._client.set_flow_run_state(
                job.run_id, Cancelling(message=f"timed out after {self.timeout_s:.0f} s"), force=True
            )
            job.states[-1], job.message, job.done = "CANCELLED", f"timed out after {self.timeout_s:.0f} s", True
        return jobs

    def _crash(self, run_id: UUID, message: str) -> None:
        from prefect.states import Crashed

        self._client.set_flow_run_state(run_id, Crashed(message=message), force=True)

    def _why_stopped(self) -> Callable[[str], str | None]:
        """A verdict on a worker of the pool, by name: why it has stopped (gone from the pool, or silent for
        ``stale_heartbeats`` heartbeat intervals), or None while it is alive."""
        workers = {w.name: w for w in self._client.read_workers_for_work_pool(self.pool)}
        now = dt.datetime.now(dt.timezone.utc)

        def why(name: str) -> str | None:
            w = workers.get(name)
            if w is None:
                return "it left the pool"
            silent = (now - w.last_heartbeat_time).total_seconds() if w.last_heartbeat_time else 0.0
            if silent > self.stale_heartbeats * (w.heartbeat_interval_seconds or 30):
                return f"no heartbeat for {silent:.0f} s"
            return None

        return why
