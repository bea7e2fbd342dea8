"""The fan-out's bookkeeping (flows/fanout.py) against a scripted API: what is resubmitted, what is
reported, when a worker counts as dead. The real thing, with a server and workers: test_fanout.py."""

from __future__ import annotations

import datetime as dt
import itertools
from types import SimpleNamespace
from uuid import uuid4

from flows.fanout import Dispatcher


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)


class LiveWorker:
    """A pool worker whose heartbeat is fresh whenever it is read, unless a test sets one: a heartbeat stamped
    when the fake client was made went stale (6 s) on a loaded CI machine before the first poll, and the
    dispatcher rightly crashed and resubmitted the run."""

    def __init__(self, name: str, heartbeat_interval_seconds: float):
        self.name, self.heartbeat_interval_seconds, self._heartbeat = name, heartbeat_interval_seconds, None

    @property
    def last_heartbeat_time(self) -> dt.datetime:
        return self._heartbeat if self._heartbeat is not None else ago(0)

    @last_heartbeat_time.setter
    def last_heartbeat_time(self, value: dt.datetime) -> None:
        self._heartbeat = value


class FakeClient:
    """Flow runs whose state a test sets; workers with a last heartbeat; records forced state changes."""

    def __init__(self):
        self.runs: dict = {}
        self.workers = [LiveWorker("w1", heartbeat_interval_seconds=2)]
        self.forced: list[tuple] = []

    def read_flow_runs(self, flow_run_filter=None, limit=None, **_):
        ids = flow_run_filter.id.any_
        return [self.runs[i] for i in ids]

    def read_workers_for_work_pool(self, pool):
        return self.workers

    def set_flow_run_state(self, run_id, state, force=False):
        self.forced.append((run_id, state.type.value, state.message))
        self.runs[run_id].state = SimpleNamespace(type=state.type, message=state.message)


def dispatcher(client: FakeClient, attempts: int = 2, timeout_s=None) -> Dispatcher:
    from prefect.client.schemas.objects import StateType

    d = Dispatcher.__new__(Dispatcher)
    d.deployment, d.job_variables, d.tags, d.attempts, d.poll_s = "study-cell/one-cell-cpu", {}, [], attempts, 0.0
    d.stale_heartbeats, d.log, d.jobs, d.pool, d._client = 3.0, lambda *_: None, {}, "local-process", client
    d.timeout_s, d._deadline = timeout_s, (None if timeout_s is None else -1.0)

    def launch(job):
        rid = uuid4()
        client.runs[rid] = SimpleNamespace(
            id=rid, labels={}, state=SimpleNamespace(type=StateType.SCHEDULED, message=None)
        )
        job.runs.append(rid)
        job.states.append("SCHEDULED")
        job.workers.append("")
        job.done = False

    d._launch = launch
    return d


def set_state(client, rid, state: str, worker: str = "w1", message: str = ""):
    from prefect.client.schemas.objects import StateType

    client.runs[rid].state = SimpleNamespace(type=StateType(state), message=message)
    client.runs[rid].labels = {"prefect.worker.name": worker}


def test_completed_failed_and_crashed_runs():
    c = FakeClient()
    d = dispatcher(c, attempts=2)
    ok, bad, crash = (d.submit(k, {"k": k}) for k in ("ok", "bad", "crash"))
    set_state(c, ok.run_id, "RUNNING")
    assert d.poll() == [] and ok.workers == ["w1"]
    set_state(c, ok.run_id, "COMPLETED")
    set_state(c, bad.run_id, "FAILED", message="ValueError: unknown model 'nope'")
    set_state(c, crash.run_id, "CRASHED", message="process exited -9")
    done = d.poll()
    assert {j.key for j in done} == {"ok", "bad"} and ok.ok and not bad.ok
    assert bad.message == "ValueError: unknown model 'nope'" and len(bad.runs) == 1  # a failure is not re-run
    assert len(crash.runs) == 2 and not crash.done  # a crash is submitted again...
    set_state(c, crash.run_id, "CRASHED", message="again")
    assert d.poll() == [crash] and crash.states == ["CRASHED", "CRASHED"] and not crash.ok  # ...up to attempts
    assert d.in_flight() == []


def test_a_run_on_a_silent_or_vanished_worker_is_crashed_and_submitted_again():
    c = FakeClient()
    d = dispatcher(c, attempts=3)
    job = d.submit("cell", {})
    set_state(c, job.run_id, "RUNNING", worker="w1")
    c.workers[0].last_heartbeat_time = ago(2)  # one interval ago: alive
    assert d.poll() == [] and c.forced == []
    c.workers[0].last_heartbeat_time = ago(30)  # 15 intervals: dead
    assert d.poll() == [] and len(job.runs) == 2
    assert c.forced[0][1] == "CRASHED" and "worker w1 stopped (no heartbeat for" in c.forced[0][2]
    set_state(c, job.run_id, "PENDING", worker="gone")  # a worker the pool no longer lists
    d.poll()
    assert "it left the pool" in c.forced[1][2] and len(job.runs) == 3
    set_state(c, job.run_id, "COMPLETED", worker="w2")
    assert d.poll() == [job] and job.ok and job.states == ["CRASHED", "CRASHED", "COMPLETED"]


def test_past_the_timeout_what_is_left_is_cancelled_and_reported():
    c = FakeClient()
    d = dispatcher(c, timeout_s=10)
    job = d.submit("cell", {})
    assert d.poll() == [job] and job.done and not job.ok and "timed out" in job.message
    assert c.forced == [(job.runs[0], "CANCELLING", "timed out after 10 s")]


def test_wait_returns_each_final_job_once():
    c = FakeClient()
    d = dispatcher(c)
    jobs = [d.submit(str(i), {}) for i in range(3)]
    seen = []
    for j in itertools.islice(itertools.cycle(jobs), 3):
        set_state(c, j.run_id, "COMPLETED")
        seen += d.wait()
    assert sorted(j.key for j in seen) == ["0", "1", "2"] and d.wait() == []


def test_two_launchers_submitting_the_same_job_get_one_flow_run(prefect_harness):
    """Two launchers of one study (same tags) that submit a cell at the same moment: the server creates one
    run and both follow it; a resubmission after a crash is again one run, whoever submits it."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Crashed

    async def deploy():
        async with get_client() as c:
            await c.create_work_pool(WorkPoolCreate(name="dedupe-pool", type="process"), overwrite=True)
            flow_id = await c.create_flow_from_name("study-cell")
            await c.create_deployment(
                flow_id=flow_id, name="dedupe", work_pool_name="dedupe-pool", entrypoint="flows/study.py:study_cell"
            )

    anyio.run(deploy)
    tags = ["alloynet-study:dedupe"]
    with Dispatcher("study-cell/dedupe", tags=tags) as a, Dispatcher("study-cell/dedupe", tags=tags) as b:
        ja, jb = a.submit("fnn-ce-rho1-s0", {}), b.submit("fnn-ce-rho1-s0", {})
        assert ja.runs == jb.runs and len(ja.runs) == 1
        a._client.set_flow_run_state(ja.run_id, Crashed(message="node lost"), force=True)
        a._launch(ja)
        b._launch(jb)
        assert ja.runs == jb.runs and len(set(ja.runs)) == 2
        other = Dispatcher("study-cell/dedupe", tags=["alloynet-study:another"])
        with other:
            assert other.submit("fnn-ce-rho1-s0", {}).run_id not in ja.runs  # another study: its own run
