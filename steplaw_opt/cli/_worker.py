"""``steplaw-opt worker``: join a study made by ``tune --create-only`` and run its trials."""

from __future__ import annotations

import json
import signal
from typing import Annotated

import typer

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
) -> None:
    """Take trials from a shared study until its plan is done, then exit 0.

    Start any number of workers on any machine that reaches the storage. A worker that dies
    stops beating; its trial is failed and re-queued with the same lr, batch and scale. SIGTERM
    or Ctrl-C fails the running trial cleanly ("interrupted", run again by another worker).
    """
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise SteplawInputError(f"--heartbeat-interval must be >= 1, got {heartbeat_interval}")
    from rich.console import Console

    from steplaw_opt.cli import _render_tune as render
    from steplaw_opt.tracking import ATTR_TRACKING_URI, MlflowTracker
    from steplaw_opt.tune import load_tuned_study, run_worker, sigterm_as_interrupt

    console = Console(stderr=as_json)
    study = load_tuned_study(study_name, storage)  # one-line refusals: missing, foreign
    uri = tracking_uri or study.user_attrs.get(ATTR_TRACKING_URI)
    if uri is not None and "***" in uri:
        uri = None  # a masked URI cannot be used: MLflow's default / MLFLOW_TRACKING_URI

    def warn(message: str) -> None:
        console.print(f"[yellow]MLflow:[/yellow] {message}", highlight=False)

    tracker = MlflowTracker(uri, experiment, enabled=not no_mlflow, on_warning=warn).open()
    previous = sigterm_as_interrupt()
    try:
        with tracker:
            result = run_worker(
                study_name, storage, heartbeat_interval=heartbeat_interval, tracker=tracker
            )
    except KeyboardInterrupt as exc:
        console.print(
            "[yellow]Stopped.[/yellow] The running trial is marked failed; another worker "
            "(or this one, started again) runs it."
        )
        code = 143 if "signal" in str(exc) else 130
        raise typer.Exit(code) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=float))
        return
    console.print(
        f"worker done: study {result.study_name} has {result.n_complete} complete and "
        f"{result.n_failed} failed trials"
    )
    render.print_result(console, result)
