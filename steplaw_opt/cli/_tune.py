"""``steplaw-opt tune``: tune a real training job with a few short runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from steplaw_opt.cli._common import (
    ActiveOpt,
    DFfOpt,
    DModelOpt,
    NHeadsOpt,
    NLayersOpt,
    ParamsOpt,
    PlainFfnOpt,
    SeqLenOpt,
    VocabOpt,
    build_scale,
    parse_rounding,
    stopped,
)
from steplaw_opt.errors import SteplawInputError

# The demo's target: a model the built-in trainer runs in seconds on 2 CPU cores. Its proxy runs
# (1/16, 1/8, 1/4 of the tokens) and the study finish in under 5 minutes.
DEMO_PARAMS = "100k"
DEMO_TOKENS = "1M"
DEMO_SEQ_LEN = 128
DEMO_LR_BOUNDS = (1e-4, 0.3)
DEMO_BATCH_BOUNDS = (2.0, 64.0)  # batch 1 would make a CPU run several times slower
DEMO_STUDY = "steplaw-demo"
# Proxies at half and a quarter of the target's model, on tokens in proportion: a ladder across
# model size, as labs tune (N/2 costs 1/4 of the target, N/4 costs 1/16).
DEMO_LADDER = "2,4"


def tune_command(
    params: ParamsOpt = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", help="Training tokens D of the target run.")
    ] = None,
    seq_len: SeqLenOpt = 2048,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="Training command template: {lr} {batch_size} {batch_tokens} {tokens} {params} "
            "{seq_len} {steps} {warmup_steps} {decay_steps} {trial_number} {trial_dir} "
            "{metrics_file} {model_args}; it prints its loss as a last JSON line, or see "
            "--loss-pattern and --metrics-format (docs/commands.md).",
        ),
    ] = None,
    loss_pattern: Annotated[
        str | None,
        typer.Option(
            "--loss-pattern",
            help="Regular expression with a named group loss (and step) searched in the "
            "command's stdout and stderr lines; the last match is the final loss. Example: "
            "'loss=(?P<loss>[0-9.e+-]+)'; recipes for nanoGPT, Hugging Face and Lightning "
            "logs: docs/commands.md.",
        ),
    ] = None,
    progress_pattern: Annotated[
        str | None,
        typer.Option(
            "--progress-pattern",
            help="Pattern of the intermediate losses, with groups loss and step [--loss-pattern].",
        ),
    ] = None,
    metrics_format: Annotated[
        str,
        typer.Option(
            "--metrics-format",
            help="How {metrics_file} is read: json (read at the end), jsonl or csv (followed "
            "while the job runs; the last row with a loss is the final loss).",
        ),
    ] = "json",
    loss_key: Annotated[
        str,
        typer.Option(
            "--loss-key", help="Key (JSON lines, metrics file) or CSV column of the loss."
        ),
    ] = "loss",
    step_key: Annotated[
        str,
        typer.Option("--step-key", help="Key or CSV column of the step."),
    ] = "step",
    warmup_fraction: Annotated[
        float,
        typer.Option(
            "--warmup-fraction",
            help="{warmup_steps} = this fraction of {steps}, rounded (at least 1 if positive).",
        ),
    ] = 0.1,
    decay_fraction: Annotated[
        float,
        typer.Option(
            "--decay-fraction",
            help="{decay_steps} = this fraction of {steps} (1.0: decay ends at the last step; "
            "0.2: a WSD cooldown).",
        ),
    ] = 1.0,
    builtin: Annotated[
        bool, typer.Option("--builtin", help="Use the built-in nanoGPT-style proxy trainer.")
    ] = False,
    replay: Annotated[
        str | None,
        typer.Option("--replay", help="Replay a released grid CSV (try a workflow on real data)."),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="The whole loop on the built-in trainer at a tiny target."),
    ] = False,
    corpus: Annotated[
        str | None, typer.Option("--corpus", help="Text file or folder for the built-in trainer.")
    ] = None,
    budget: Annotated[
        float, typer.Option("--budget", help="Proxy compute in target-run equivalents.")
    ] = 1.0,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Cap on runs.")] = None,
    time_budget: Annotated[
        str | None,
        typer.Option(
            "--time-budget",
            help="Wall time for the study (45m, 1.5h, 1h30m, or seconds): no run starts once "
            "the time spent plus its predicted time would pass it.",
        ),
    ] = None,
    gpu_hours: Annotated[
        str | None,
        typer.Option(
            "--gpu-hours",
            help="GPU-hours for the study's runs (their wall hours × --gpus-per-run), kept "
            "the same way.",
        ),
    ] = None,
    gpus_per_run: Annotated[
        int, typer.Option("--gpus-per-run", help="Devices one run uses (for --gpu-hours).")
    ] = 1,
    sampler: Annotated[str, typer.Option("--sampler", help="plateau or botorch.")] = "plateau",
    law: Annotated[str, typer.Option("--law", help="Law name or card path.")] = "step-law",
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Optuna storage URL [sqlite:///steplaw-opt.db]."),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            help="The study's name; the same name resumes it [steplaw-<law>-N<size>-D<size>].",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="The sampler's random seed [none: a different run each time]."),
    ] = None,
    timeout_per_trial: Annotated[
        float | None, typer.Option("--timeout-per-trial", help="Seconds per run.")
    ] = None,
    batch_unit: Annotated[
        str, typer.Option("--batch-unit", help="Unit of {batch_size}: sequences or tokens.")
    ] = "sequences",
    batch_multiple: Annotated[
        int | None,
        typer.Option("--batch-multiple", help="Batch must be a multiple of this (hardware)."),
    ] = None,
    round_batch: Annotated[
        str, typer.Option("--round-batch", help="Round the recommended batch: none, pow2 or k.")
    ] = "none",
    smaller_n: Annotated[
        bool, typer.Option("--smaller-n", help="Allow proxy runs at a quarter of N.")
    ] = False,
    ladder: Annotated[
        str | None,
        typer.Option(
            "--ladder",
            help="Proxy models smaller by these factors, tokens in proportion: 4,16 runs "
            "proxies at N/4 on D/4 and N/16 on D/16 (costed by N·D; factors up to 1000). The "
            "command gets each size through {params}, or {model_args} with --model.",
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="A model the study may train, as N=ARGS (repeatable): its non-embedding size "
            "and the arguments that build it, which {model_args} becomes (e.g. "
            "--model '25M=--n_layer=6 --n_embd=384'). Sizes below --params are the ladder.",
        ),
    ] = None,
    drift: Annotated[
        bool,
        typer.Option(
            "--drift/--no-drift",
            help="Let the law's error move with scale: proxies at several scales that agree on "
            "a trend carry it to the target (within a prior on the law's exponents). "
            "--no-drift: one offset shared by every scale.",
        ),
    ] = True,
    lr_min: Annotated[float | None, typer.Option("--lr-min", help="Hard lower lr bound.")] = None,
    lr_max: Annotated[float | None, typer.Option("--lr-max", help="Hard upper lr bound.")] = None,
    batch_min: Annotated[
        float | None, typer.Option("--batch-min", help="Hard lower batch bound (batch unit).")
    ] = None,
    batch_max: Annotated[
        float | None, typer.Option("--batch-max", help="Hard upper batch bound (batch unit).")
    ] = None,
    target_runs: Annotated[
        int, typer.Option("--target-runs", help="Full runs at the target scale in the plan.")
    ] = 0,
    create_only: Annotated[
        bool,
        typer.Option(
            "--create-only",
            help="Create the study in --storage and exit; `steplaw-opt worker` runs the trials.",
        ),
    ] = False,
    refit_law: Annotated[
        str | None,
        typer.Option(
            "--refit-law",
            help="At the end, refine the law with this study's runs and write the card here "
            "(.toml), for --law in the next, larger study.",
        ),
    ] = None,
    heartbeat_interval: Annotated[
        int | None,
        typer.Option(
            "--heartbeat-interval",
            help="Seconds between heartbeats of a running trial (SQL storages); a trial whose "
            "worker stops beating is failed and re-queued [10 with --create-only, else off].",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI [MLFLOW_TRACKING_URI, else MLflow's default: "
            "sqlite:///mlflow.db in the working folder].",
        ),
    ] = None,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment name.")
    ] = "steplaw-opt",
    no_mlflow: Annotated[
        bool, typer.Option("--no-mlflow", help="Do not record the study in MLflow.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    d_model: DModelOpt = None,
    d_ff: DFfOpt = None,
    n_layers: NLayersOpt = None,
    n_heads: NHeadsOpt = None,
    vocab: VocabOpt = None,
    plain_ffn: PlainFfnOpt = False,
    active_params: ActiveOpt = None,
) -> None:
    """Tune lr and batch size for a target run with short proxy runs; print the refined optimum.

    Running the same command again resumes the study (and its MLflow run). Ctrl-C stops cleanly.
    The study is recorded in MLflow (a parent run, one nested run per trial, plots) unless
    --no-mlflow.
    """
    sources = [x for x in (command is not None, builtin, replay is not None, demo) if x]
    if len(sources) != 1:
        raise SteplawInputError("give exactly one of --command, --builtin, --replay or --demo")
    if demo:
        params = params or DEMO_PARAMS
        tokens = tokens or DEMO_TOKENS
        seq_len = DEMO_SEQ_LEN if seq_len == 2048 else seq_len
        builtin = True
        seed = 0 if seed is None else seed
        study_name = study_name or DEMO_STUDY
        lr_min, lr_max = lr_min or DEMO_LR_BOUNDS[0], lr_max or DEMO_LR_BOUNDS[1]
        batch_min = batch_min or DEMO_BATCH_BOUNDS[0]
        batch_max = batch_max or DEMO_BATCH_BOUNDS[1]
        # --model is for --command only: leave it to say so instead of clashing with the ladder
        if ladder is None and not smaller_n and not models:
            ladder = DEMO_LADDER
    from steplaw_opt.tune import _time

    # checked before anything else: a bad value is one line, exit 2, nothing made
    time_seconds = None if time_budget is None else _time.parse_duration(time_budget)
    gpu_h = None if gpu_hours is None else _time.parse_gpu_hours(gpu_hours)
    gpus = _time.check_gpus(gpus_per_run)
    lr_bounds = _bounds("lr", lr_min, lr_max)
    batch_bounds = _bounds("batch", batch_min, batch_max)
    if tokens is None:
        raise SteplawInputError("--tokens is required (the target run's training tokens)")
    target = build_scale(
        params,
        tokens,
        seq_len,
        d_model,
        d_ff,
        n_layers,
        n_heads,
        vocab,
        plain_ffn,
        active_params,
        None,
    )
    rounding = parse_rounding(round_batch)
    if refit_law is not None:
        from steplaw_opt.tune import check_card_path

        check_card_path(refit_law)  # before any run is spent
    reading = {
        "loss_pattern": loss_pattern,
        "progress_pattern": progress_pattern,
        "metrics_format": metrics_format,
        "loss_key": loss_key,
        "step_key": step_key,
        "warmup_fraction": warmup_fraction,
        "decay_fraction": decay_fraction,
    }
    model_configs = parse_model_entries(models)
    rungs = _ladder(ladder, model_configs, float(target.N or 0))
    objective = _objective(
        command, builtin, replay, corpus, batch_unit, timeout_per_trial, reading, model_configs
    )

    from rich.console import Console

    from steplaw_opt.cli import _render_tune as render
    from steplaw_opt.tune import DEFAULT_HEARTBEAT, TuneConfig, default_study_name

    config = TuneConfig(
        law=law,
        budget=budget,
        n_trials=n_trials,
        target_runs=target_runs,
        sampler=sampler,  # type: ignore[arg-type]
        seed=seed,
        batch_unit=batch_unit,  # type: ignore[arg-type]
        lr_bounds=lr_bounds,
        batch_bounds=batch_bounds,
        batch_multiple=batch_multiple,
        round_batch=rounding,
        smaller_n=smaller_n,
        ladder=rungs,
        drift=drift,
        timeout_per_trial=timeout_per_trial,
        # a shared study needs heartbeats, so a trial whose worker dies is run again
        heartbeat_interval=(heartbeat_interval or DEFAULT_HEARTBEAT)
        if create_only
        else heartbeat_interval,
        objective_spec=objective.to_spec()
        if command is not None
        else _objective_spec(command, builtin, replay, corpus),
        time_budget=time_seconds,
        gpu_hours=gpu_h,
        gpus_per_run=gpus,
    )
    console = Console(stderr=as_json)
    law_obj = config.law_card
    plan = config.plan(target, objective.allowed_tokens(target), objective.allowed_scales(target))
    objective.check_scales(plan.schedule())
    render.print_header(console, target, law_obj, plan, objective.name)
    if objective.name == "builtin":
        from steplaw_opt.trainer import default_device

        device = objective.device or default_device()
        render.print_wall_time(console, plan, target, device, final_runs=2 if demo else 0)
    timing = _time.time_plan(
        plan.schedule(),
        target,
        config.time,
        _study_trials(storage, study_name or default_study_name(target, law_obj), config.time),
        objective.expected_seconds,
    )
    render.print_time_plan(console, timing, builtin=objective.name == "builtin")
    if dry_run:
        if as_json:
            print(json.dumps({"plan": plan.to_dict(), "time": timing}, indent=2))
        return
    from steplaw_opt._records import mask_url
    from steplaw_opt.tune import tune

    if create_only and storage in (None, ":memory:"):
        raise SteplawInputError(
            "--create-only needs a --storage that workers can share (postgresql://… for "
            "many machines, sqlite:///file.db for one), not "
            f"{storage or 'the default'!r}"
        )
    from steplaw_opt.tune._workers import stop_signals

    tracker = _tracker(tracking_uri, experiment, not no_mlflow, console)
    display = render.TrialDisplay(
        console,
        plan.total_runs,
        enabled=not as_json,
        show_n=any(s.N != target.N for s in plan.schedule()),
    )
    try:
        # Ctrl-C, SIGTERM and SIGHUP all stop the job's process group and fail its trial.
        with stop_signals(), tracker, display:
            result = tune(
                target,
                objective,
                config=config,
                storage=storage,
                study_name=study_name,
                on_trial=trial_printer(display, console),
                tracker=tracker,
                create_only=create_only,
                refit_law=refit_law,
            )
    except KeyboardInterrupt as exc:
        raise stopped(
            console,
            exc,
            "[yellow]Interrupted ({by}).[/yellow] The running trial is marked failed; run "
            "the same command again to resume.",
        ) from None
    if result is None:  # --create-only
        name = study_name or default_study_name(target, law_obj)
        doc = {"study_name": name, "storage": mask_url(storage or ""), "planned": plan.total_runs}
        if as_json:
            print(json.dumps(doc, indent=2))
        else:
            console.print(
                f"Created study [bold]{name}[/bold] ({plan.total_runs} planned runs). Start "
                "workers with:",
                highlight=False,
            )
            console.print(  # one line to copy, never wrapped
                f"  steplaw-opt worker --storage '{doc['storage']}' --study-name '{name}'",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        return
    if result.n_complete == 0:  # nothing measured: the "refined optimum" is the law's point
        import sys

        print(
            f"steplaw-opt: error: every run failed ({result.n_failed} failed, none finished), "
            "so there is no refined optimum; fix the job (the reasons are in the table above "
            "and in the study) and run the same command again",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    check = None
    if demo and (result.extras.get("time") or {}).get("limited"):
        console.print(  # two full target runs would spend far past the time budget
            "the demo's final check (two full target runs) is skipped: the time budget is spent"
        )
    elif demo:
        check = _demo_check(console, result, target, not as_json, storage)
        tracker.log_demo_check(check)
    if as_json:
        doc = result.to_dict()
        if check is not None:
            doc["demo_check"] = check
        print(json.dumps(doc, indent=2, default=float))
        return
    render.print_result(console, result)
    refit = result.extras.get("refit_law")
    if refit is not None:
        console.print(
            f"Refined law card written to {refit['path']} (at the target: lr {refit['lr']:.3g}, "
            f"batch {refit['batch_tokens']:.4g} tokens); use it with --law {refit['path']}"
        )
    if check is not None:
        render.print_demo_check(console, check)


def _study_trials(storage: str | None, name: str, budget: Any) -> list[Any]:
    """The trials of the study this command resumes, read without creating anything (for the
    plan's time spent and the measured time of its runs): an SQLite file that exists, or with a
    time budget any other storage; ``[]`` when there is none or it cannot be read (``tune``
    itself then says why, in one line)."""
    from steplaw_opt.tune._study import DEFAULT_STORAGE

    url = storage or DEFAULT_STORAGE
    if url == ":memory:":
        return []
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path or not Path(path.split("?", 1)[0]).is_file():
            return []
    elif not budget.limited:
        return []
    try:
        import optuna

        from steplaw_opt.tune._study import open_existing_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        backend = open_existing_storage(optuna, url)
        if name not in optuna.study.get_all_study_names(storage=backend):
            return []
        return list(optuna.load_study(study_name=name, storage=backend).get_trials(deepcopy=False))
    except Exception:
        return []


def _bounds(name: str, low: float | None, high: float | None) -> tuple[float, float] | None:
    """Both bounds or neither (the default bounds hold every planned scale's trust region)."""
    if low is None and high is None:
        return None
    if low is None or high is None:
        raise SteplawInputError(f"give both --{name}-min and --{name}-max, or neither")
    if not (0 < low < high):
        raise SteplawInputError(f"{name} bounds must satisfy 0 < min < max, got [{low}, {high}]")
    return (low, high)


def _demo_check(
    console: Any, result: Any, target: Any, show: bool, storage: str | None
) -> dict[str, Any]:
    """The demo's proof: one full target run at the law's point and one at the refined
    optimum (the built-in trainer, same seed), so the gain is measured, not predicted. The
    check is recorded in the study (``steplaw.demo_check``); a repeated ``--demo`` whose points
    are the recorded ones reuses it instead of training again."""
    import optuna

    from steplaw_opt._records import ATTR_DEMO_CHECK
    from steplaw_opt.trainer import train
    from steplaw_opt.tune._study import DEFAULT_STORAGE

    seq = target.seq_len
    points = {
        name: (float(lr), max(2, round(batch)))
        for name, (lr, batch) in {
            "law": (result.law_lr, result.law_batch_tokens / seq),
            "refined": (result.refined.lr, result.refined.batch_sequences),
        }.items()
    }
    study = optuna.load_study(study_name=result.study_name, storage=storage or DEFAULT_STORAGE)
    recorded = study.user_attrs.get(ATTR_DEMO_CHECK)
    if isinstance(recorded, str):
        old = json.loads(recorded)
        if all(
            (old.get(name, {}).get("lr"), old.get(name, {}).get("batch_size")) == point
            for name, point in points.items()
        ):
            if show:
                console.print("the final check at these two points is in the study: reused")
            return old
    out: dict[str, Any] = {}
    for name, (lr, batch_int) in points.items():
        if show:
            console.print(
                f"training the target at the {name} point: lr {lr:.3g}, batch {batch_int}"
            )
        run = train(lr, batch_int, target, seed=0)
        out[name] = {"lr": lr, "batch_size": batch_int, "loss": run.loss, "seconds": run.seconds}
    study.set_user_attr(ATTR_DEMO_CHECK, json.dumps(out))
    return out


def _tracker(uri: str | None, experiment: str, enabled: bool, console: Any) -> Any:
    """The MLflow tracker, opened now so that a tracking URI MLflow cannot use stops the
    command before any run (a server that is down only warns, later)."""
    from steplaw_opt.tracking import MlflowTracker

    def warn(message: str) -> None:
        console.print(f"[yellow]MLflow:[/yellow] {message}", highlight=False)

    return MlflowTracker(uri, experiment, enabled=enabled, on_warning=warn).open()


def _objective(
    command: str | None,
    builtin: bool,
    replay: str | None,
    corpus: str | None,
    batch_unit: str,
    timeout: float | None,
    reading: dict[str, Any],
    models: dict[float, str] | None = None,
) -> Any:
    from steplaw_opt import objectives
    from steplaw_opt.objectives._command import COMMAND_DEFAULTS

    if command is not None:
        return objectives.CommandObjective(
            command, batch_unit=batch_unit, timeout=timeout, models=models, **reading
        )
    if models:
        raise SteplawInputError(
            "--model applies to --command only (the built-in trainer builds any size itself)"
        )
    changed = [k for k, v in reading.items() if v != COMMAND_DEFAULTS[k]]
    if changed:
        raise SteplawInputError(
            f"--{changed[0].replace('_', '-')} applies to --command only (how a command's "
            "loss is read, and its schedule placeholders)"
        )
    if replay is not None:
        if not Path(replay).exists():
            raise SteplawInputError(f"grid file not found: {replay!r}")
        return objectives.GridReplayObjective(replay, batch_unit=batch_unit)
    if batch_unit != "sequences":
        raise SteplawInputError("the built-in trainer takes its batch in sequences")
    if corpus is not None and not Path(corpus).exists():
        raise SteplawInputError(f"corpus not found: {corpus!r}")
    return objectives.BuiltinTrainerObjective(corpus=corpus)


def parse_model_entries(entries: list[str] | None) -> dict[float, str] | None:
    """``--model N=ARGS`` entries as size → arguments (the objective checks the rest)."""
    if not entries:
        return None
    from steplaw_opt.sizes import parse_size

    out: dict[float, str] = {}
    for entry in entries:
        size, sep, args = entry.partition("=")
        if not sep or not size.strip():
            raise SteplawInputError(
                f"--model must be N=ARGS (a size, '=', the arguments that build it), got {entry!r}"
            )
        n = parse_size(size.strip(), "--model size")
        if n in out:
            raise SteplawInputError(f"--model size {size.strip()} is given twice")
        out[n] = args
    return out


def _ladder(
    ladder: str | None, models: dict[float, str] | None, n_target: float
) -> tuple[float, ...] | None:
    """The ladder's sizes: ``--ladder`` factors of the target's N, or the ``--model`` sizes
    below it."""
    if ladder is not None and models:
        raise SteplawInputError(
            "give --ladder or --model, not both (the --model sizes below --params are the ladder)"
        )
    if models:
        below = tuple(n for n in models if n < n_target * (1 - 1e-9))
        if not below:
            raise SteplawInputError(
                f"no --model is smaller than the target's N={n_target:.4g}: a ladder needs one"
            )
        return below
    if ladder is None:
        return None
    factors = []
    for part in ladder.split(","):
        try:
            factor = float(part)
        except ValueError:
            factor = math.nan
        if not (math.isfinite(factor) and factor > 1):
            raise SteplawInputError(
                f"--ladder takes factors greater than 1 (4,16: N/4 and N/16), got {part.strip()!r}"
            )
        factors.append(factor)
    return tuple(n_target / f for f in factors)


def _objective_spec(
    command: str | None, builtin: bool, replay: str | None, corpus: str | None
) -> dict[str, Any]:
    """How `steplaw-opt worker` rebuilds the objective (stored in the study)."""
    if command is not None:
        return {"kind": "command", "command": command}
    if replay is not None:
        return {"kind": "replay", "grid": str(Path(replay).resolve())}
    return {"kind": "builtin", "corpus": str(Path(corpus).resolve()) if corpus else None}


# A finished trial's line without its loss (trial, scale, lr, batch, best, compute, seconds),
# and the width of its loss column, where a failure reason that fits stands.
TRIAL_LINE_WITHOUT_LOSS = 67
LOSS_COLUMN = 9


def shown_event(event: Any, width: int) -> tuple[Any, str | None]:
    """``event`` as the trial lines show it, and the line under it, if any: a failure reason as
    one line, the exception's of a traceback (:func:`~steplaw_opt.cli._render.failure_line`),
    not read as markup; in the loss column when the trial's line still fits ``width`` with it,
    else ``failed`` there and the reason on the next line, cut to ``width``. The study keeps
    the whole reason."""
    import dataclasses

    from rich.markup import escape

    from steplaw_opt.cli._render import failure_line

    if event.phase != "end" or not event.failure:
        return event, None
    room = max(width - TRIAL_LINE_WITHOUT_LOSS, LOSS_COLUMN)
    line = failure_line(event.failure, width)
    if len(line) <= room:
        return dataclasses.replace(event, failure=escape(line)), None
    below = failure_line(event.failure, width - len(UNDER))
    return dataclasses.replace(event, failure="failed"), f"{UNDER}{below}"


UNDER = "      ↳ "  # the reason under its trial's line


def trial_printer(display: Any, console: Any) -> Any:
    """The ``on_trial`` callback of ``tune``: the display's line for each event, a failed
    trial's reason under its line (:func:`shown_event`)."""

    def on_trial(event: Any) -> None:
        shown, below = shown_event(event, console.width)
        display.update(shown)
        if below is not None and display.enabled:
            console.print(below, style="red", highlight=False, markup=False, soft_wrap=True)

    return on_trial
