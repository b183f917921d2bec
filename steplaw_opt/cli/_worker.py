"""``steplaw-opt worker``: join a study made by ``tune --create-only`` and run its trials."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from steplaw_opt.cli._common import stopped
from steplaw_opt.errors import SteplawInputError


def worker_command(
    storage: Annotated[
        str, typer.Option("--storage", help="The study's Optuna storage URL (PostgreSQL).")
    ],
    study_name: Annotated[str, typer.Option("--study-name", help="The study to join.")],
    heartbeat_interval: Annotated[
        int | None,
        typer.Option(
            "--heartbeat-interval",
            help="Seconds between heartbeats [the study's, set by tune --create-only].",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI [the one the study records]."),
    ] = None,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment name.")
    ] = "steplaw-opt",
    no_mlflow: Annotated[
        bool, typer.Option("--no-mlflow", help="Do not record the trials in MLflow.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="The command template this worker runs: it refuses a study that stores "
            "another one (whoever can write the database chooses what a worker without "
            "--command runs; docs/security.md).",
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="With --command: the model configs (N=ARGS, as given to tune) this worker "
            "runs; it refuses a study that stores others.",
        ),
    ] = None,
) -> None:
    """Take trials from a shared study until its plan is done, then exit 0.

    Start any number of workers on any machine that reaches the storage. A worker that dies
    stops beating; its trial is failed and re-queued with the same lr, batch and scale. SIGTERM
    or Ctrl-C fails the running trial cleanly ("interrupted", run again by another worker). A
    database that restarts is waited for (15 s when the worker starts, 30 s later on).
    """
    if models and command is None:
        raise SteplawInputError("--model applies with --command only (the worker's own command)")
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise SteplawInputError(f"--heartbeat-interval must be >= 1, got {heartbeat_interval}")
    from rich.console import Console

    from steplaw_opt.cli import _render_tune as render
    from steplaw_opt.cli._tune import parse_model_entries
    from steplaw_opt.objectives._command import stored_command, worker_objective
    from steplaw_opt.tracking import ATTR_TRACKING_URI, MlflowTracker
    from steplaw_opt.tune import load_tuned_study, run_worker
    from steplaw_opt.tune._workers import retry_opening, stop_signals

    console = Console(stderr=as_json)

    def opened() -> tuple[Any, Any, str | None, Any]:
        study = load_tuned_study(study_name, storage)  # one-line refusals: missing, foreign
        # Its own command, checked against the study's before anything runs (docs/security.md).
        objective = (
            worker_objective(study, command, parse_model_entries(models))
            if command is not None
            else None
        )
        return study, objective, stored_command(study), study.user_attrs.get(ATTR_TRACKING_URI)

    # a worker started while the database restarts waits for it (up to 15 s)
    _, objective, stored, recorded_uri = retry_opening(opened)
    if objective is None and stored is not None:
        console.print(f"running the study's stored command: {stored}", markup=False)
    uri = tracking_uri or recorded_uri
    if uri is not None and "***" in uri:
        uri = None  # a masked URI cannot be used: MLflow's default / MLFLOW_TRACKING_URI

    def warn(message: str) -> None:
        console.print(f"[yellow]MLflow:[/yellow] {message}", highlight=False)

    tracker = MlflowTracker(uri, experiment, enabled=not no_mlflow, on_warning=warn).open()
    try:
        # SIGTERM (a scheduler's stop), SIGHUP and Ctrl-C stop the job's process group and fail
        # its trial "interrupted", so its slot is free for the next worker.
        with stop_signals(), tracker:
            result = run_worker(
                study_name,
                storage,
                objective=objective,
                heartbeat_interval=heartbeat_interval,
                tracker=tracker,
            )
    except KeyboardInterrupt as exc:
        raise stopped(
            console,
            exc,
            "[yellow]Stopped ({by}).[/yellow] The running trial is marked failed; another "
            "worker (or this one, started again) runs it.",
        ) from None
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=float))
        return
    console.print(
        f"worker done: study {result.study_name} has {result.n_complete} complete and "
        f"{result.n_failed} failed trials"
    )
    render.print_result(console, result)
