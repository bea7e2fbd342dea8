"""Hyperparameter search (Optuna, TPE) over lr, weight decay, the loss parameters (gamma, beta) and,
optionally, the optimiser.

The library part is pure: ``suggest`` turns an Optuna trial into TrainConfig overrides and ``trial_score``
trains one trial and returns its validation score. The Prefect flow ``flows/search.py`` uses Optuna's
ask/tell interface: the sampler stays in the flow, which asks for trials; each trial runs as a task, or as
a flow run on a work pool (``run_trial`` on the worker reads its parameters from the study's storage and
tells the result back to it). ``run_search`` runs the same loop in-process. The test split is never
looked at during the search.

Storage: ``storage`` is an Optuna RDB URL. SQLite (``sqlite:///runs/search/optuna.db``) is the one-machine
default of the flow; several workers on several machines share one study in PostgreSQL
(``postgresql://user:password@host:port/optuna``, see infra/postgres.py). ``env:NAME`` reads the URL from
the environment variable NAME wherever it is used, so a password never travels as a flow parameter.

Several launchers on one study (the same search started twice, or on two machines): ``SharedBudget``
hands out the budget's slots. A slot is taken under a lock held in the study's own database (a row of
``alloynet_search_locks``, taken by a compare-and-set UPDATE, so it works on SQLite and PostgreSQL alike,
and kept for as long as its holder's heartbeat runs); each running trial records the launcher that owns
it, and each launcher refreshes a heartbeat row (``alloynet_search_launchers``). A launcher asks for a new
trial only while complete trials plus the trials running under live launchers stay below the budget, and
re-runs only the trials whose launcher stopped beating, so neither the budget nor a trial is ever run
twice. Each launcher's sampler gets its own seed (the first keeps ``seed``), so two launchers never draw
the same parameters.

Two things Optuna's RDB storage leaves to its user, and ``SharedBudget`` does: Optuna's first use of an
empty database (its tables, its version row, alembic's stamp) is not safe against a second process doing
the same at once (optuna/optuna#4621), so a launcher opens the study under the lock; and a storage built
from a bare URL gives SQLite's default busy timeout of 5 s, which a loaded machine outlasts while the other
launcher writes, so every storage here is opened by ``open_storage`` with a longer one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# How long a SQLite connection waits for another process's write before "database is locked": the other
# launcher or a worker may hold the file while the machine is busy (sqlite3's own default is 5 s).
SQLITE_BUSY_S = 120.0


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = Field(..., description="capture store with manifest.csv (train/val splits are used)")
    out_dir: str = "runs/search"
    architecture: str = "profile_cnn"
    loss: str = Field("cb_focal", description="loss name; gamma/beta are searched when the loss takes them")
    trials: int = Field(12, ge=1)
    parallel: int = Field(2, ge=1, description="trials per batch (concurrent tasks in the flow)")
    seed: int = 0
    metric: str = "balanced_accuracy"
    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    gamma: tuple[float, float] = (0.0, 4.0)
    beta: list[float] = Field(default_factory=lambda: [0.9, 0.99, 0.999, 0.9999])
    optimizers: list[str] = Field(default_factory=list, description="optimisers to choose from (empty: the arch's)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for every trial")
    storage: str | None = Field(None, description="Optuna storage URL or env:NAME; None: in memory")
    study_name: str | None = Field(None, description="default: derived from the search space")


def resolve_storage(storage: str | None) -> str | None:
    """The storage URL itself: ``env:NAME`` is read from the environment (on whichever process uses it)."""
    if storage and storage.startswith("env:"):
        name = storage[4:]
        if not os.environ.get(name):
            raise ValueError(
                f"storage {storage!r}: environment variable {name} is not set on this machine "
                f"(expected an Optuna storage URL such as postgresql://user:password@host:port/optuna)"
            )
        return os.environ[name]
    return storage


def study_name(cfg: SearchConfig) -> str:
    """The study's name in its storage: given, or one per search space, so re-running the same search
    resumes it (its budget counts the trials already complete) and a changed one starts afresh."""
    if cfg.study_name:
        return cfg.study_name
    space = cfg.model_dump_json(exclude={"trials", "parallel", "storage", "study_name", "out_dir"})
    return f"{cfg.architecture}-{cfg.loss}-{hashlib.sha256(space.encode()).hexdigest()[:10]}"


def loss_params(loss: str) -> set[str]:
    """Which of gamma/beta the registered loss accepts (read from its factory's signature)."""
    import inspect

    from alloynet import losses

    if loss not in losses.list_losses():
        raise ValueError(f"unknown loss {loss!r}; expected one of {losses.list_losses()}")
    factory = losses._LOSSES[loss]  # the registry maps names to factories; their keywords are the knobs
    return {"gamma", "beta"} & set(inspect.signature(factory).parameters)


def suggest(trial, cfg: SearchConfig) -> dict[str, Any]:
    """TrainConfig overrides for one Optuna trial."""
    kw: dict[str, Any] = {}
    params = loss_params(cfg.loss)
    if "gamma" in params:
        kw["gamma"] = trial.suggest_float("gamma", *cfg.gamma)
    if "beta" in params:
        kw["beta"] = trial.suggest_categorical("beta", cfg.beta)
    out = {
        "optim.lr": trial.suggest_float("lr", *cfg.lr, log=True),
        "optim.weight_decay": trial.suggest_float("weight_decay", *cfg.weight_decay, log=True),
        "loss.name": cfg.loss,
        "loss.kwargs": kw,
    }
    if cfg.optimizers:
        out["optim.name"] = trial.suggest_categorical("optimizer", cfg.optimizers)
    return out


def trial_score(cfg: SearchConfig, number: int, overrides: dict[str, Any]) -> float:
    """Train one trial; its score is the best validation ``metric`` (never the test split). On a machine
    with several GPUs the trial trains on all of them (DDP, alloynet.train.launch)."""
    from alloynet.train import load_config
    from alloynet.train.launch import local_processes, train_processes

    base = {
        **cfg.train,
        "model.name": cfg.architecture,
        "data.store": cfg.store,
        "seed": cfg.seed,
        "out_dir": str(Path(cfg.out_dir) / f"trial-{number:03d}"),
        "progress": False,
    }
    train_cfg = load_config(None, {**base, **overrides})
    result = train_processes(train_cfg, local_processes(train_cfg.device))
    return float(result.metrics[cfg.metric])


def launcher_seed(seed: int, launcher: int) -> int:
    """The sampler seed of the ``launcher``-th launcher of a study: the first keeps ``seed`` (a lone search
    is reproducible), the others get distinct seeds derived from it."""
    if launcher == 0:
        return seed
    return int(hashlib.sha256(f"{seed}/{launcher}".encode()).hexdigest()[:8], 16)


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a study's database: SQLite waits ``SQLITE_BUSY_S`` for a writer;
    a server's pooled connections are checked before use (a search outlives idle connections)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
    return {"pool_pre_ping": True}


def open_storage(url: str):
    """Optuna's RDB storage for ``url`` with ``engine_options``, as every process of a search opens it."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs=engine_options(url))


def new_study(cfg: SearchConfig, launcher: int = 0):
    """Create the study, or load it from ``cfg.storage`` when it exists (a resumed or shared search).
    ``launcher``: this launcher's number among the study's launchers (``SharedBudget.launcher``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # constant_liar: TPE treats trials still running as bad, so concurrent trials spread out
    sampler = optuna.samplers.TPESampler(seed=launcher_seed(cfg.seed, launcher), constant_liar=True)
    url = resolve_storage(cfg.storage)
    return optuna.create_study(
        direction="maximize",
        sampler=sampler,
        storage=open_storage(url) if url else None,
        study_name=study_name(cfg),
        load_if_exists=True,
    )


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def ask(study, cfg: SearchConfig):
    """A new trial with its parameters drawn (and so recorded in the storage, where workers read them)."""
    trial = study.ask()
    suggest(trial, cfg)
    return trial


def drawn(trial, cfg: SearchConfig) -> bool:
    """Whether every parameter of the search space has been drawn for ``trial`` (a FrozenTrial)."""
    from optuna.trial import FixedTrial

    try:
        suggest(FixedTrial(trial.params, trial.number), cfg)
    except ValueError:
        return False
    return True


def run_trial(cfg: SearchConfig, number: int) -> float:
    """Run trial ``number`` of the study in ``cfg.storage`` and tell its score to the storage (what a worker
    does). Its parameters come from the storage, so the flow run carries only the trial's number. A trial
    already complete (its run was submitted again after a crash) returns its value without training."""
    import optuna
    from optuna.trial import FixedTrial, TrialState

    if not cfg.storage:
        raise ValueError("run_trial needs the study's storage (SearchConfig.storage)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(resolve_storage(cfg.storage)))
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        raise ValueError(f"study {study.study_name!r} has no trial {number}")
    if trial.state == TrialState.COMPLETE:
        return float(trial.value)
    if trial.state != TrialState.RUNNING:
        raise RuntimeError(f"trial {number} of {study.study_name!r} is {trial.state.name}, not RUNNING")
    value = trial_score(cfg, number, suggest(FixedTrial(trial.params, number), cfg))
    study.tell(number, value, skip_if_finished=True)
    return value


@dataclass(frozen=True)
class Slot:
    """A budget slot: trial ``number``, new or ``adopted`` from a launcher that stopped."""

    number: int
    adopted: bool


_TABLES: dict[str, Any] = {}


def _tables():
    """The two bookkeeping tables SharedBudget keeps next to Optuna's in the study's database."""
    if not _TABLES:
        import sqlalchemy as sa

        meta = sa.MetaData()
        _TABLES["meta"] = meta
        _TABLES["locks"] = sa.Table(
            "alloynet_search_locks",
            meta,
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("holder", sa.String(64), nullable=True),
            sa.Column("expires", sa.Float, nullable=False),
        )
        _TABLES["launchers"] = sa.Table(
            "alloynet_search_launchers",
            meta,
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("launcher", sa.String(64), primary_key=True),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("seen", sa.Float, nullable=False),
        )
    return _TABLES


class SharedBudget:
    """This launcher's share of a study's budget of ``cfg.trials`` complete trials (see the module's
    docstring). Use as a context manager: it registers the launcher (``launcher``: its number, which
    seeds its sampler), opens the study, and keeps its heartbeat until exit. Without a storage (an
    in-memory study) there is only this launcher, and no lock is needed.

    ``lease_s``: how long a launcher may go without a heartbeat before its running trials (and the lock,
    if it held it) count as abandoned and another launcher takes them; its heartbeat is refreshed every
    ``lease_s / 4``.
    """

    LOCK_WAIT_S = 600.0  # how long to wait for the lock before giving up with an error

    def __init__(self, cfg: SearchConfig, lease_s: float = 120.0):
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.cfg, self.lease_s = cfg, lease_s
        self.id = uuid.uuid4().hex
        self.launcher = 0
        self.study: Any = None
        self._engine: Any = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._local = threading.Lock()
        self._holding = threading.Event()  # set while this launcher holds the study's lock

    def __enter__(self) -> SharedBudget:
        url = resolve_storage(self.cfg.storage)
        if not url:
            self.study = new_study(self.cfg, self.launcher)
            return self
        self._connect(url)
        # beating before the lock is taken, so a slow first use of the database never loses it
        self._beat = threading.Thread(target=self._heartbeat, name="search-launcher-heartbeat", daemon=True)
        self._beat.start()
        try:
            with self._locked():
                self.launcher = self._register()
                self.study = new_study(self.cfg, self.launcher)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._engine is not None:
            import sqlalchemy as sa

            try:
                # gone at once: a launcher started after this one may re-run what it left running
                self._touch(0.0)
            except sa.exc.SQLAlchemyError as e:
                log.warning(
                    "study %s: launcher %d's exit not recorded (its lease runs out): %s", self.name, self.launcher, e
                )
            self._engine.dispose()

    def _connect(self, url: str) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(url, **engine_options(url))
        t = _tables()
        for attempt in range(3):
            # two launchers creating the tables at once: the second's CREATE fails ("already exists" on
            # SQLite, a unique violation on PostgreSQL's catalog) and, tried again, finds them
            try:
                t["meta"].create_all(self._engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        try:
            with self._engine.begin() as c:
                c.execute(sa.insert(t["locks"]).values(study_name=self.name, holder=None, expires=0.0))
        except sa.exc.IntegrityError:
            pass  # the study's lock row exists (another launcher, or an earlier run)

    @property
    def name(self) -> str:
        return study_name(self.cfg)

    def _locked(self):
        """The study's lock: a compare-and-set on its row (free, expired, or already ours). Its expiry is
        pushed on by this launcher's heartbeat while held, so it lasts as long as the holder lives, however
        long a slow database keeps it."""
        import contextlib

        import sqlalchemy as sa

        locks = _tables()["locks"]

        @contextlib.contextmanager
        def held():
            deadline = time.monotonic() + self.LOCK_WAIT_S
            while True:
                now = time.time()
                with self._engine.begin() as c:
                    got = (
                        c.execute(
                            sa.update(locks)
                            .where(
                                locks.c.study_name == self.name,
                                sa.or_(locks.c.holder.is_(None), locks.c.expires < now, locks.c.holder == self.id),
                            )
                            .values(holder=self.id, expires=now + self.lease_s)
                        ).rowcount
                        == 1
                    )
                if got:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"study {self.name!r}: its lock (table alloynet_search_locks) stayed taken by a live "
                        f"launcher for {self.LOCK_WAIT_S:.0f} s"
                    )
                time.sleep(0.05)
            self._holding.set()
            try:
                yield
            finally:
                self._holding.clear()
                with self._engine.begin() as c:
                    c.execute(
                        sa.update(locks)
                        .where(locks.c.study_name == self.name, locks.c.holder == self.id)
                        .values(holder=None, expires=0.0)
                    )

        return held()

    def _register(self) -> int:
        import sqlalchemy as sa

        launchers = _tables()["launchers"]
        with self._engine.begin() as c:
            seq = c.execute(
                sa.select(sa.func.count()).select_from(launchers).where(launchers.c.study_name == self.name)
            ).scalar_one()
            c.execute(sa.insert(launchers).values(study_name=self.name, launcher=self.id, seq=seq, seen=time.time()))
        return int(seq)

    def _touch(self, when: float) -> None:
        import sqlalchemy as sa

        t = _tables()
        with self._engine.begin() as c:
            c.execute(
                sa.update(t["launchers"])
                .where(t["launchers"].c.study_name == self.name, t["launchers"].c.launcher == self.id)
                .values(seen=when)
            )
            if self._holding.is_set() and when > 0:
                c.execute(
                    sa.update(t["locks"])
                    .where(t["locks"].c.study_name == self.name, t["locks"].c.holder == self.id)
                    .values(expires=when + self.lease_s)
                )

    def _heartbeat(self) -> None:
        import sqlalchemy as sa

        while not self._stop.wait(self.lease_s / 4):
            try:
                self._touch(time.time())
            except sa.exc.SQLAlchemyError as e:
                # a missed beat is not fatal (the lease is four beats long); a dead thread would be, since
                # another launcher would then re-run this one's trials while they still train
                log.warning("study %s: heartbeat of launcher %d not recorded: %s", self.name, self.launcher, e)

    def _live(self) -> set[str]:
        import sqlalchemy as sa

        launchers = _tables()["launchers"]
        with self._engine.begin() as c:
            rows = c.execute(
                sa.select(launchers.c.launcher).where(
                    launchers.c.study_name == self.name, launchers.c.seen >= time.time() - self.lease_s
                )
            ).all()
        return {r[0] for r in rows} | {self.id}

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute of trial ``number`` (running), whichever process asked for it."""
        trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        # Optuna has no public setter for a trial it did not hand to this process
        self.study._storage.set_trial_user_attr(trial._trial_id, key, value)

    def reserve(self) -> Slot | None:
        """A slot of the budget for this launcher, or None while complete trials plus those running under
        live launchers fill it (wait and ask again: one of them may fail, or its launcher stop)."""
        with self._local:  # one ask at a time from this launcher's threads, too
            if self._engine is None:
                return self._reserve(live={self.id})
            with self._locked():
                return self._reserve(self._live())

    def _reserve(self, live: set[str]) -> Slot | None:
        from optuna.trial import TrialState

        study = self.study
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        owned = [t for t in running if t.user_attrs.get("launcher") in live]
        if complete + len(owned) >= self.cfg.trials:
            return None
        for orphan in (t for t in running if t.user_attrs.get("launcher") not in live):
            if not drawn(orphan, self.cfg):
                # its launcher stopped between asking for it and drawing its parameters: it was never
                # trained and cannot be, so it leaves the budget and a new trial takes its place
                study.tell(orphan.number, state=TrialState.FAIL, skip_if_finished=True)
                log.warning("study %s: trial %d was left without its parameters; failed", self.name, orphan.number)
                continue
            self.set_user_attr(orphan.number, "launcher", self.id)
            return Slot(orphan.number, adopted=True)
        trial = ask(study, self.cfg)
        trial.set_user_attr("launcher", self.id)
        return Slot(trial.number, adopted=False)


def run_search(
    cfg: SearchConfig,
    score: Callable[[SearchConfig, int, dict], float] | None = None,
    lease_s: float = 120.0,
    poll_s: float = 0.5,
) -> dict:
    """In-process search (the flow does the same with tasks or flow runs); returns the best trial.
    The budget is ``cfg.trials`` complete trials, those of a resumed study and of other launchers on the
    same storage included. A trial whose score raised is marked FAIL and another one is asked for, up to
    ``cfg.trials`` failures."""
    from optuna.trial import FixedTrial, TrialState

    score = score or trial_score
    failed = 0
    with SharedBudget(cfg, lease_s) as budget:
        study = budget.study
        while len(complete_trials(study)) < cfg.trials and failed < cfg.trials:
            batch = [s for s in (budget.reserve() for _ in range(cfg.parallel)) if s is not None]
            if not batch:
                time.sleep(poll_s)  # the rest of the budget is running under other launchers
                continue
            for slot in batch:
                trial = next(t for t in study.get_trials(deepcopy=False) if t.number == slot.number)
                try:
                    value = score(cfg, slot.number, suggest(FixedTrial(trial.params, slot.number), cfg))
                except Exception:
                    failed += 1
                    study.tell(slot.number, state=TrialState.FAIL, skip_if_finished=True)
                    continue
                study.tell(slot.number, value, skip_if_finished=True)
        return summarise(study)


def summarise(study) -> dict:
    """The best complete trial and every trial (failed ones with their state, so none goes missing)."""
    best = study.best_trial
    out = {
        "best_value": best.value,
        "best_params": best.params,
        "best_trial": best.number,
        "trials": [{"number": t.number, "value": t.value, **t.params} for t in complete_trials(study)],
    }
    failed = [
        {"number": t.number, "state": t.state.name, **t.params}
        for t in study.get_trials(deepcopy=False)
        if t.state.name != "COMPLETE"
    ]
    if failed:
        out["not_complete"] = failed
    return out
