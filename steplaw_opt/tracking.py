"""The MLflow record of a tuning study: what was tried, and what to train with.

One parent run per study (named after it) and one nested run per trial::

    steplaw-step-law-N215M-D100B           parent: target, law card, prior, budget spent,
    ├── trial-0                                    refined optimum (metrics + tags, updated
    ├── trial-1                                    after every trial), trials table, plots
    └── …                                  nested: lr, batch, scale; loss and its curve

:class:`MlflowTracker` is the project's own Optuna callback (optuna-integration's
``MLflowCallback`` is deprecated). It uses :class:`mlflow.MlflowClient` with explicit run ids
only — no global active run — so a study resumed later, by this process or another, continues
the same parent run: its id is kept in the study's user attributes (``steplaw.mlflow.run_id``).

Tracking never stops a study: every MLflow call is guarded; a tracking server that is down costs
one short request per trial (retries and timeouts are kept low while the tracker talks to it),
gives one warning, and the trials it missed are recorded once it answers again. No run is left
RUNNING: an exception ends the runs FAILED, Ctrl-C ends them KILLED.

``mlflow`` is imported inside this module's functions only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from steplaw_opt._env import env_defaults
from steplaw_opt._records import (
    ATTR_BELIEF,
    ATTR_FAILURE,
    ATTR_INTERRUPTED_BY,
    ATTR_LOST,
    INTERRUPTED,
    mask_url,
    trials_table,
)
from steplaw_opt.errors import SteplawInputError

__all__ = [
    "ATTR_RUN_ID",
    "ATTR_TRACKING_URI",
    "DEFAULT_EXPERIMENT",
    "MlflowTracker",
    "TrackingWarning",
    "mask_url",
    "refined_metrics",
    "storage_label",
    "trial_status",
    "trials_table",
]

DEFAULT_EXPERIMENT = "steplaw-opt"
ATTR_RUN_ID = "steplaw.mlflow.run_id"
ATTR_TRACKING_URI = "steplaw.mlflow.tracking_uri"
ATTR_EXPERIMENT_ID = "steplaw.mlflow.experiment_id"
TAG_TRIAL = "steplaw.trial_number"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
# The parent run's outcome: "refined" (a refined optimum from finished trials) or NO_RESULT
# (no trial finished: the law's point is not a result, and no refined.* value is logged).
TAG_OUTCOME = "steplaw.outcome"
# The refined optimum's notes, a JSON list (dropped with the other refined.* tags).
TAG_REFINED_NOTES = "refined.notes"
NO_RESULT = "no trial finished"
# While the tracker talks to MLflow (and the user has not said otherwise): a dead server costs
# about a second per trial instead of MLflow's default of minutes of retries.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
PLOT_FOLDER = "plots"
# Seconds after a trial's end past which another worker ends a nested run its own worker left
# RUNNING (that worker died between telling the study and telling MLflow).
ORPHAN_AFTER = 30.0
# The URI schemes MLflow has a tracking store for ("" is a local path).
TRACKING_SCHEMES = (
    "", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
    "databricks-uc", "uc",
)  # fmt: skip


class TrackingWarning(UserWarning):
    """MLflow could not be reached or refused a write; the study goes on."""


# ------------------------------------------------------------------------------- helpers
def storage_label(study: Any) -> str:
    """The study's storage as a URL (password masked), or ``in-memory``."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    url = getattr(backend, "url", None)
    return mask_url(str(url)) if url else "in-memory"


def _http_env() -> contextlib.AbstractContextManager[None]:
    return env_defaults(HTTP_ENV)


def _ms(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def trial_status(trial: Any) -> str:
    """The MLflow status a finished Optuna trial ends its run with."""
    state = trial.state.name
    if state == "COMPLETE" and trial.value is not None and math.isfinite(trial.value):
        return "FINISHED"
    if trial.user_attrs.get(ATTR_FAILURE) == INTERRUPTED:
        return "KILLED"
    return "FAILED" if state in ("FAIL", "COMPLETE") else "KILLED"  # PRUNED: stopped early


def refined_metrics(refined: Any) -> dict[str, float]:
    """The refined optimum as flat ``refined.*`` numbers (intervals as ``_lo``/``_hi``)."""
    out: dict[str, float] = {}
    for key, value in refined.to_dict().items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[f"refined.{key}"] = float(value)
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            out[f"refined.{key}_lo"], out[f"refined.{key}_hi"] = map(float, value)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def finished_trials(trials: Any) -> int:
    """How many trials finished with a loss (COMPLETE and finite): a refined optimum needs one."""
    return sum(
        t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)
        for t in trials
    )


def _no_result_note(study_name: str, n_failed: int) -> str:
    """The parent run's description when no trial finished: no optimum to train with."""
    return (
        f"**No trial finished**: {n_failed} run(s) failed and none returned a loss, so there is "
        "**no refined optimum** (the law's point is a prior, not a result). The failure reasons "
        "are on the nested runs (tag `steplaw.failure`); fix the job and run the same command "
        f"again to resume.\n\nStudy `{study_name}`, recorded by steplaw-opt."
    )


def _note(study_name: str, refined: Any, n_done: int) -> str:
    """The parent run's description (MLflow shows it on the run page): what to train with."""
    r = refined
    lo, hi = r.lr_interval_95
    blo, bhi = r.batch_tokens_interval_95
    loss = f"{r.predicted_loss:.4f}" if r.predicted_loss is not None else "—"
    return (
        f"**Train with** lr **{r.lr:.3g}** (95 %: {lo:.3g} – {hi:.3g}; plateau "
        f"{r.plateau_lr[0]:.3g} – {r.plateau_lr[1]:.3g}), batch **{r.batch_sequences_rounded:,.0f}"
        f"** sequences of {r.seq_len} = {r.batch_tokens:,.0f} tokens (95 %: {blo:,.0f} – "
        f"{bhi:,.0f}). Predicted loss {loss}. Law: lr {r.law_lr:.3g}, batch "
        f"{r.law_batch_tokens:,.0f} tokens.\n\nStudy `{study_name}`, {n_done} trials recorded "
        "by steplaw-opt."
    )


def _new_local_store(uri: str) -> Any:
    """For an SQLite tracking URI whose file does not exist yet: the file, created now (empty,
    ``O_EXCL``) so that this process knows it made it (:class:`~steplaw_opt._files.NewFile`);
    ``None`` otherwise (a server, an existing store, a file another process made first)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    from steplaw_opt._files import create_new_file

    try:
        database = make_url(uri).database
    except Exception:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    if path.exists() or not path.parent.is_dir():
        return None
    try:
        return create_new_file(path)
    except OSError:  # a read-only folder: MLflow says so itself
        return None


def _remove_store(new: Any) -> None:
    """Remove an MLflow SQLite store this process created and MLflow then failed to set up,
    with its journals, unless another process has opened it meanwhile."""
    from steplaw_opt._files import remove_new_file

    remove_new_file(new, ("", "-journal", "-wal", "-shm"))


# ------------------------------------------------------------------------------- tracker
class MlflowTracker:
    """Record a tuning study in MLflow: a parent run per study, a nested run per trial.

    Use it around a study (``with MlflowTracker() as tracker: tune(..., tracker=tracker)``), or
    as an Optuna callback for your own loop (``study.optimize(f, callbacks=[tracker])``; the
    parent run starts with the first finished trial; call :meth:`finish` at the end).

    Args:
        tracking_uri: where to record; default ``MLFLOW_TRACKING_URI``, else MLflow's own
            default (``sqlite:///mlflow.db`` in the working folder since MLflow 3.7).
        experiment: the MLflow experiment name (created when missing).
        enabled: ``False`` makes every method a no-op (``--no-mlflow``).
        plots: log the landscape and convergence plots at :meth:`finish`.
        on_warning: called with a one-line message when MLflow fails (default:
            :func:`warnings.warn` with :class:`TrackingWarning`).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        *,
        enabled: bool = True,
        plots: bool = True,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if tracking_uri is not None and not str(tracking_uri).strip():
            raise SteplawInputError("the MLflow tracking URI is empty")
        if not isinstance(experiment, str) or not experiment.strip():
            raise SteplawInputError(f"the MLflow experiment name is empty: {experiment!r}")
        self.enabled = bool(enabled)
        self.experiment = experiment.strip()
        self.plots = plots
        self._uri = tracking_uri
        self._on_warning = on_warning
        self._client: Any = None
        self._study: Any = None
        self._sampler: Any = None
        self._context: dict[str, Any] = {}
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        self._trial_runs: dict[int, str] = {}  # trial number → nested run id
        self._logged: set[int] = set()  # trials whose nested run has ended
        self._own: set[int] = set()  # trials this process ran (many workers: the others' are
        # theirs to record, except those whose worker died)
        self.shared = False  # one of many workers on the study (set by run_worker)
        self._healthy = True
        self._ended = False
        self._closing = False  # this worker ends the study's record (the last one)
        self._missed = 0
        self.seconds = 0.0  # wall time spent in MLflow calls (overhead figures)

    # ---------------------------------------------------------------- public properties
    @property
    def tracking_uri(self) -> str:
        """The resolved tracking URI (MLflow's default when none was given)."""
        if self._uri is None:
            import mlflow

            self._uri = mlflow.get_tracking_uri()
        return str(self._uri)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    def location(self) -> dict[str, Any]:
        """Where the study was recorded (for the CLI's last lines and ``TuneResult``)."""
        if not self.enabled:
            return {"enabled": False}
        uri = mask_url(self.tracking_uri)
        out: dict[str, Any] = {
            "enabled": True,
            "tracking_uri": uri,
            "experiment": self.experiment,
            "experiment_id": self._experiment_id,
            "run_id": self._run_id,
            "nested_runs": len(self._trial_runs),
            "recorded": self._run_id is not None and self._healthy,
        }
        if self._run_id and uri.startswith(("http://", "https://")):
            out["run_url"] = (
                f"{uri.rstrip('/')}/#/experiments/{self._experiment_id}/runs/{self._run_id}"
            )
        elif self._run_id:
            out["ui"] = f"mlflow ui --backend-store-uri {uri}"
        return out

    # ---------------------------------------------------------------- lifecycle
    def open(self) -> MlflowTracker:
        """Check the tracking URI now, without touching it: a scheme MLflow has no store for is
        an input error (raised before any trial runs, leaving nothing behind); a server that is
        down is not (nothing is sent until :meth:`start`)."""
        if not self.enabled:
            return self
        uri = self.tracking_uri
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme.split("+", 1)[0] not in TRACKING_SCHEMES:
            raise SteplawInputError(
                f"MLflow cannot use the tracking URI {mask_url(uri)!r}: unknown scheme "
                f"{scheme!r}; use one of {', '.join(s for s in TRACKING_SCHEMES if s)} "
                "or a local path"
            )
        return self

    def client(self) -> Any:
        """The MLflow client, made on first use (a new SQLite store gets its tables here)."""
        if self._client is not None:
            return self._client
        import logging

        from mlflow import MlflowClient

        self.open()
        quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.WARNING)
        new = _new_local_store(self.tracking_uri)
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        except Exception as exc:
            if new is not None:  # a full disk, say: no half-made mlflow.db is left behind
                _remove_store(new)
            raise SteplawInputError(
                f"MLflow cannot use the tracking URI {mask_url(self.tracking_uri)!r}: {_short(exc)}"
            ) from None
        finally:
            for lg, level in zip(quiet, levels, strict=True):
                lg.setLevel(level)
        return self._client

    def __enter__(self) -> MlflowTracker:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None:
            self.abort(e)
        elif self._run_id is not None and not self._ended:
            self.finish()

    def start(self, study: Any, *, sampler: Any = None, **context: Any) -> None:
        """Open (or resume) the study's parent run and record what is already in the study.

        ``context`` adds facts for the parent run: ``plan`` (a ProxyPlan), ``storage`` (the
        storage URL), ``law`` (a Law), ``budget``, ``objective`` (a name).
        """
        if not self.enabled:
            return
        self.client()
        self._study = study
        self._sampler = sampler if sampler is not None else getattr(study, "sampler", None)
        self._context.update(context)
        self._ended = False
        self._guard("open the parent run", self._ensure_parent)
        self._guard("record the finished trials", self._sync)

    def schedule(self) -> None:
        """The study was created for workers (``tune --create-only``): the parent run waits
        as SCHEDULED; the first worker sets it RUNNING."""
        if self.enabled and self._run_id is not None:
            self._guard("schedule the parent run", self._terminate, self._run_id, "SCHEDULED")
            self._ended = True

    def trial_started(self, study: Any, number: int) -> None:
        """A trial is about to run: open its nested run (RUNNING) with its parameters."""
        if not self.enabled or not self._healthy:
            return
        self._bind(study)
        self._own.add(number)
        self._guard(f"open the run of trial {number}", self._open_trial, number)

    def __call__(self, study: Any, trial: Any) -> None:
        """Optuna callback: ``trial`` finished; end its run and update the parent."""
        if not self.enabled:
            return
        self._bind(study)
        self._guard(f"record trial {trial.number}", self._sync)

    def finish(self, result: Any = None) -> None:
        """The study is done: final refined optimum, trials table, plots; parent FINISHED."""
        if not self.enabled or self._study is None:
            return
        refined = getattr(result, "refined", None)
        timing = (getattr(result, "extras", None) or {}).get("time") or {}
        if timing and self._run_id is not None:
            self._guard("record the time budget's stop", self._time_stop, timing)
        if getattr(result, "n_complete", None) == 0:
            refined = None  # the law's point, not a result: _update_parent says so
        last = not self._others_running()
        self._closing = last  # the last worker ends the runs their workers left RUNNING
        ok = self._guard("record the finished trials", self._sync, refined) is not None
        if ok and self.plots and last and self._has_result():
            self._guard("log the plots", self._log_plots, refined)
        if self._run_id is not None and last:
            self._guard("end the parent run", self._terminate, self._run_id, "FINISHED")
        self._ended = True
        if self._missed:
            self._warn(
                f"{self._missed} MLflow writes failed; run the same command again when MLflow "
                "answers to complete the record"
            )

    def log_demo_check(self, check: dict[str, Any]) -> None:
        """``tune --demo``'s final check on the parent run: the held-out loss of one full
        target run at the law's point and one at the refined optimum, and the gain."""
        if not self.enabled or self._run_id is None:
            return
        law, refined = float(check["law"]["loss"]), float(check["refined"]["loss"])
        metrics = {
            "demo.law_loss": law,
            "demo.refined_loss": refined,
            "demo.gain_pct": 100.0 * (1.0 - refined / law),
        }
        run_id, now = self._run_id, int(time.time() * 1000)

        def log() -> None:  # one write, as the parent's other metrics are logged
            from mlflow.entities import Metric

            batch = [Metric(key, value, now, 0) for key, value in metrics.items()]
            self.client().log_batch(run_id, metrics=batch)

        self._guard("record the demo's final check", log)

    def abort(self, exc: BaseException) -> None:
        """The study stopped on ``exc``: end every open run FAILED (KILLED for Ctrl-C)."""
        if not self.enabled or self._study is None or self._ended:
            return
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        self._ended = True
        self._guard("record the finished trials", self._sync)
        for number, run_id in self._trial_runs.items():
            if number not in self._logged and (not self.shared or number in self._own):
                self._guard("end a trial run", self._terminate, run_id, status)
        if self._run_id is not None and not self._others_running():
            reason = f"{type(exc).__name__}: {_short(exc)}"
            self._guard("end the parent run", self._end_parent, status, reason)

    def _has_result(self) -> bool:
        """Whether a trial of the study finished with a loss (else there is nothing to plot
        and no refined optimum)."""
        try:
            return finished_trials(self._study.get_trials(deepcopy=False)) > 0
        except Exception:
            return False

    def _others_running(self) -> bool:
        """Many workers: does a trial not run by this process still run (or wait)? Then the
        parent run is left to the last worker."""
        if not self.shared or self._study is None:
            return False
        try:
            trials = self._study.get_trials(deepcopy=False)
        except Exception:
            return False
        return any(
            t.state.name in ("RUNNING", "WAITING") and t.number not in self._own for t in trials
        )

    # ---------------------------------------------------------------- guarded calls
    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` against MLflow; on failure warn (once per outage) and carry on."""
        started = time.perf_counter()
        try:
            with _http_env():
                out = fn(*args)
            if not self._healthy:
                self._healthy = True
            return True if out is None else out
        except SteplawInputError:
            raise
        except Exception as exc:
            self._missed += 1
            if self._healthy:
                self._warn(
                    f"MLflow at {mask_url(self.tracking_uri)} failed to {what} "
                    f"({_short(exc)}); the study goes on, missed records are retried after "
                    "each trial"
                )
            self._healthy = False
            return None
        finally:
            self.seconds += time.perf_counter() - started

    def _warn(self, message: str) -> None:
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            warnings.warn(message, TrackingWarning, stacklevel=3)

    def _bind(self, study: Any) -> None:
        if self._study is None:
            self.start(study)

    # ---------------------------------------------------------------- MLflow writes
    def _ensure_parent(self) -> str:
        """The parent run's id: the one in the study's attributes if this tracking store has
        it, else a new run (its id written back to the study)."""
        if self._run_id is not None:
            return self._run_id
        client, study = self._client, self._study
        self._experiment_id = self._experiment()
        known = study.user_attrs.get(ATTR_RUN_ID)
        if known and study.user_attrs.get(ATTR_TRACKING_URI) == mask_url(self.tracking_uri):
            run = self._existing(known)
            if run is not None:
                self._run_id = known
                client.update_run(known, status="RUNNING")
                self._load_children()
                self._log_parent_facts(resumed=True)
                return known
        tags = {
            "steplaw.study_name": study.study_name,
            "optuna.study_name": study.study_name,
            "optuna.storage": self._context.get("storage") or storage_label(study),
        }
        run = client.create_run(self._experiment_id, run_name=study.study_name, tags=tags)
        self._run_id = run.info.run_id
        study.set_user_attr(ATTR_RUN_ID, self._run_id)
        study.set_user_attr(ATTR_TRACKING_URI, mask_url(self.tracking_uri))
        study.set_user_attr(ATTR_EXPERIMENT_ID, self._experiment_id)
        self._log_parent_facts(resumed=False)
        return self._run_id

    def _experiment(self) -> str:
        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return str(client.create_experiment(self.experiment))
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)

    def _existing(self, run_id: str) -> Any:
        try:
            run = self._client.get_run(run_id)
        except Exception as exc:  # not in this store (a new mlflow.db): start a new parent
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return None
            raise
        if run.info.lifecycle_stage == "deleted":
            return None
        return run

    def _load_children(self) -> None:
        """The nested runs already recorded for this parent (resume)."""
        runs = self._client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{self._run_id}'",
            max_results=5000,
        )
        for run in runs:
            number = run.data.tags.get(TAG_TRIAL)
            if number is None:
                continue
            self._trial_runs[int(number)] = run.info.run_id
            if run.info.status != "RUNNING":
                self._logged.add(int(number))

    def _log_parent_facts(self, *, resumed: bool) -> None:
        """Target, law, prior (params; fixed for a study) and the law card (artifact)."""
        from mlflow.entities import Metric, Param, RunTag

        study, sampler = self._study, self._sampler
        attrs = study.user_attrs
        params = {
            "target.N": attrs.get("steplaw.target.N"),
            "target.D": attrs.get("steplaw.target.D"),
            "target.seq_len": attrs.get("steplaw.target.seq_len"),
            "law": attrs.get("steplaw.law"),
            "batch_unit": attrs.get("steplaw.batch_unit"),
            "study_name": study.study_name,
        }
        prior = getattr(sampler, "prior", None)
        if prior is not None:
            params.update(
                {
                    "prior.mean_u": f"{prior.mean[0]:.6g}",
                    "prior.mean_v": f"{prior.mean[1]:.6g}",
                    "prior.sd_u": f"{prior.sd[0]:.6g}",
                    "prior.sd_v": f"{prior.sd[1]:.6g}",
                    "prior.corr_uv": f"{prior.cov[0, 1] / (prior.sd[0] * prior.sd[1]):.6g}",
                }
            )
        target = getattr(sampler, "target", None)
        law = self._context.get("law") or getattr(sampler, "law", None)
        if law is not None and target is not None:
            p = law.predict(target)
            params["law.lr"] = f"{p.lr:.6g}" if p.lr is not None else None
            params["law.batch_tokens"] = (
                f"{p.batch_tokens:.6g}" if p.batch_tokens is not None else None
            )
        if resumed:  # params are immutable in MLflow: only those not yet there
            have = self._client.get_run(self._run_id).data.params
            params = {k: v for k, v in params.items() if k not in have}
        tags = {"steplaw.sampler": type(sampler).__name__ if sampler is not None else "?"}
        if "objective" in self._context:
            tags["steplaw.objective"] = str(self._context["objective"])
        if resumed:
            tags["steplaw.resumed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        now = int(time.time() * 1000)
        metrics = []
        budget = self._context.get("budget", attrs.get("steplaw.budget"))
        if budget is not None:
            metrics.append(Metric("budget", float(budget), now, 0))
        time_budget = self._context.get("time_budget")  # a TimeBudget (steplaw_opt.tune._time)
        if getattr(time_budget, "seconds", None) is not None:
            metrics.append(Metric("time_budget_seconds", float(time_budget.seconds), now, 0))
        if getattr(time_budget, "gpu_hours", None) is not None:
            metrics.append(Metric("gpu_hours_budget", float(time_budget.gpu_hours), now, 0))
        plan = self._context.get("plan")
        if plan is not None:
            metrics.append(Metric("plan.runs", float(plan.total_runs), now, 0))
            metrics.append(Metric("plan.compute", float(plan.compute), now, 0))
        self._client.log_batch(
            self._run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in params.items() if v is not None],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if law is not None and not resumed:
            import tomli_w

            self._client.log_text(self._run_id, tomli_w.dumps(law.to_dict()), "law-card.toml")

    def _open_trial(self, number: int) -> None:
        from mlflow.entities import Param

        study = self._study
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if number in self._trial_runs:
            return
        run = self._client.create_run(
            self._experiment_id,
            start_time=_ms(trial.datetime_start),
            tags=self._trial_tags(trial, "RUNNING"),
            run_name=f"trial-{number}",
        )
        self._trial_runs[number] = run.info.run_id
        params = [Param(k, str(v)) for k, v in self._trial_params(trial).items()]
        self._client.log_batch(run.info.run_id, params=params)

    def _trial_tags(self, trial: Any, state: str) -> dict[str, str]:
        tags = {
            TAG_PARENT: str(self._run_id),
            TAG_TRIAL: str(trial.number),
            "steplaw.trial_state": state,
            "optuna.study_name": self._study.study_name,
            "optuna.storage": self._context.get("storage") or storage_label(self._study),
            "optuna.trial_id": str(trial._trial_id),
        }
        failure = trial.user_attrs.get(ATTR_FAILURE)
        lost = trial.user_attrs.get(ATTR_LOST)  # its process was found gone (tune._workers)
        if failure:
            tags["steplaw.failure"] = str(failure)[:5000]
            stopped_by = trial.user_attrs.get(ATTR_INTERRUPTED_BY)
            if stopped_by:
                tags["steplaw.interrupted_by"] = str(stopped_by)[:200]
        elif state == "FAIL" and lost:
            tags["steplaw.failure"] = f"lost: {lost}; the trial was re-queued"[:5000]
        elif state == "FAIL":  # failed by the heartbeat check: its worker stopped beating
            tags["steplaw.failure"] = "worker died (no heartbeat); the trial was re-queued"
        return tags

    def _trial_params(self, trial: Any) -> dict[str, Any]:
        attrs, study = trial.user_attrs, self._study
        seq_len = int(
            attrs.get("steplaw.seq_len", study.user_attrs.get("steplaw.target.seq_len", 1))
        )
        out: dict[str, Any] = {"trial_number": trial.number}
        for name, value in trial.params.items():
            out[name] = f"{value:.6g}" if isinstance(value, float) else value
        batch = trial.params.get("batch_size")
        if batch is not None:
            unit = study.user_attrs.get("steplaw.batch_unit", "sequences")
            tokens = batch * seq_len if unit == "sequences" else batch
            out["batch_tokens"] = f"{tokens:.6g}"
            out["batch_sequences"] = f"{tokens / seq_len:.6g}"
        for key in ("N", "D"):
            if f"steplaw.{key}" in attrs:
                out[key] = f"{attrs[f'steplaw.{key}']:.6g}"
        out["seq_len"] = seq_len
        return out

    def _end_trial(self, trial: Any) -> None:
        """Loss, loss curve, state and failure of a finished trial; its run ended."""
        from mlflow.entities import Metric, Param, RunTag

        if trial.number not in self._trial_runs:
            self._open_trial(trial.number)
        run_id = self._trial_runs[trial.number]
        end = _ms(trial.datetime_complete) or int(time.time() * 1000)
        metrics = [
            Metric("loss_curve", float(v), end, int(step))
            for step, v in sorted(trial.intermediate_values.items())
            if math.isfinite(v)
        ]
        if trial.value is not None and math.isfinite(trial.value):
            metrics.append(Metric("loss", float(trial.value), end, 0))
        compute = trial.user_attrs.get("steplaw.compute")
        if compute is not None:
            metrics.append(Metric("compute", float(compute), end, 0))
        params = [Param(k, str(v)) for k, v in self._trial_params(trial).items()]
        tags = [RunTag(k, v) for k, v in self._trial_tags(trial, trial.state.name).items()]
        for i in range(0, max(len(metrics), 1), 1000):  # log_batch takes 1,000 metrics at most
            first = i == 0
            self._client.log_batch(
                run_id,
                metrics=metrics[i : i + 1000],
                params=params if first else [],
                tags=tags if first else [],
            )
        self._terminate(run_id, trial_status(trial), end)
        self._logged.add(trial.number)

    def _terminate(self, run_id: str, status: str, end: int | None = None) -> None:
        self._client.set_terminated(run_id, status=status, end_time=end)

    def _time_stop(self, timing: dict[str, Any]) -> None:
        """The time budget stopped the study: why, and how many planned runs it left (a resume
        that ran them all removes the tag again)."""
        from mlflow.entities import Metric, RunTag

        if not timing.get("limited"):
            if "steplaw.time_limited" in self._client.get_run(self._run_id).data.tags:
                self._client.delete_tag(self._run_id, "steplaw.time_limited")
            return
        now = int(time.time() * 1000)
        self._client.log_batch(
            self._run_id,
            metrics=[Metric("time_skipped_runs", float(timing.get("skipped_runs") or 0), now, 0)],
            tags=[RunTag("steplaw.time_limited", str(timing.get("stop"))[:5000])],
        )

    def _end_parent(self, status: str, reason: str) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self._run_id, tags=[RunTag("steplaw.stopped_by", reason[:5000])])
        self._terminate(self._run_id, status)

    def _sync(self, refined: Any = None) -> None:
        """Record every finished trial not yet recorded, then update the parent."""
        self._ensure_parent()
        fresh = [
            t
            for t in self._study.get_trials(deepcopy=False)
            if t.state.is_finished() and t.number not in self._logged and t.params
        ]
        if self.shared:  # other workers record their own trials; a dead worker's, whoever sees
            foreign = [t for t in fresh if t.number not in self._own]
            if foreign:
                self._load_children()
            dead = [
                t
                for t in foreign
                if t.number not in self._logged
                and t.number in self._trial_runs
                and (
                    (t.state.name == "FAIL" and t.user_attrs.get(ATTR_FAILURE) is None)
                    or self._orphaned(t)
                )
            ]
            fresh = [t for t in fresh if t.number in self._own] + dead
        for trial in fresh:
            self._end_trial(trial)
        if fresh or refined is not None:
            self._update_parent(refined)

    def _orphaned(self, trial: Any) -> bool:
        """A finished trial of another worker whose run is still RUNNING: its worker died
        between the trial's end and its record (a SIGKILL). A live one records it within
        seconds of the end, so one left longer, or at the study's end, is anybody's to end."""
        if self._closing:
            return True
        done = trial.datetime_complete
        if done is None:
            return False
        return (datetime.datetime.now() - done).total_seconds() > ORPHAN_AFTER

    def _update_parent(self, refined: Any = None) -> None:
        """Budget spent, trust region and refined optimum (metrics, stepped by the number of
        finished trials, and tags, which MLflow lets change), and the trials table."""
        from mlflow.entities import Metric, RunTag

        study = self._study
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        step, now = len(trials), int(time.time() * 1000)
        values = {
            "n_complete": sum(t.state.name == "COMPLETE" for t in trials),
            "n_failed": sum(t.state.name == "FAIL" for t in trials),
            "compute_spent": sum(
                t.user_attrs.get("steplaw.compute", 0.0)
                for t in trials
                if t.user_attrs.get("steplaw.failure") != "interrupted"
            ),
        }
        values.update(self._time_metrics(trials))
        values.update(self._trust_metrics(trials))
        tags: dict[str, str] = {}
        if finished_trials(trials) == 0:
            # Nothing measured: the "refined optimum" would be the law's point dressed up as a
            # result. Say so plainly, and log no refined.* value (remove any logged before).
            note = _no_result_note(study.study_name, int(values["n_failed"]))
            tags = {TAG_OUTCOME: NO_RESULT, TAG_NOTE: note}
            self._drop_refined_tags()
        else:
            if refined is None:
                refined = self._refined()
            if refined is not None:
                flat = refined_metrics(refined)
                values.update(flat)
                tags = {k: f"{v:.6g}" for k, v in flat.items()}
                # The optimum's notes (on a search bound, a rounding outside its interval), so
                # that `report --run-id` says what tune said; MLflow caps a tag at 8,000 chars.
                notes = [str(n)[:1000] for n in refined.notes][:6]
                tags[TAG_REFINED_NOTES] = json.dumps(notes)
                tags[TAG_NOTE] = _note(study.study_name, refined, step)
                tags[TAG_OUTCOME] = "refined"
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self._client.log_batch(
            self._run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        self._log_table()

    def _time_metrics(self, trials: list[Any]) -> dict[str, float]:
        """The study's wall time spent (what a time budget counts) and its runs' GPU-hours."""
        from steplaw_opt._timing import run_spent, wall_spent

        at = time.time()
        gpus = getattr(self._context.get("time_budget"), "gpus_per_run", 1)
        return {
            "time_spent_seconds": wall_spent(trials, at),
            "gpu_hours_spent": run_spent(trials, at) * gpus / 3600.0,
        }

    def _drop_refined_tags(self) -> None:
        """Remove ``refined.*`` tags an earlier version logged for a study with no result."""
        tags = self._client.get_run(self._run_id).data.tags
        for key in [k for k in tags if k.startswith("refined.")]:
            self._client.delete_tag(self._run_id, key)

    def _trust_metrics(self, trials: list[Any]) -> dict[str, float]:
        """The trust region the sampler used for its latest proposal (system attributes)."""
        for t in reversed(trials):
            belief = t.system_attrs.get(ATTR_BELIEF) or {}
            if "trust_center" in belief:
                out = {
                    "trust.center_u": float(belief["trust_center"][0]),
                    "trust.center_v": float(belief["trust_center"][1]),
                    "trust.radius_sd": float(belief.get("trust_radius_sd", math.nan)),
                }
                return {k: v for k, v in out.items() if math.isfinite(v)}
        return {}

    def _refined(self) -> Any:
        from steplaw_opt.samplers._plateau import PlateauSampler

        if not isinstance(self._sampler, PlateauSampler):
            return None
        from steplaw_opt.samplers import refined_optimum

        return refined_optimum(self._study, sampler=self._sampler, n_draws=500)

    def _log_table(self) -> None:
        import csv
        import io

        rows = trials_table(self._study, self._sampler)
        if not rows:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        self._client.log_text(self._run_id, buf.getvalue(), "trials.csv")

    def _log_plots(self, refined: Any = None) -> None:
        from steplaw_opt import plots

        with tempfile.TemporaryDirectory(prefix="steplaw-plots-") as tmp:
            written = plots.write_plots(
                self._study, Path(tmp), sampler=self._sampler, refined=refined
            )
            for path in written:
                self._client.log_artifact(self._run_id, str(path), PLOT_FOLDER)
