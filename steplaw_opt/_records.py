"""What a tuning study records, under which names, and how to read it back.

The study is the whole state of a tuning run (any worker, any machine): the workflow
(:mod:`steplaw_opt.tune`) writes these attributes, the samplers, the MLflow record
(:mod:`steplaw_opt.tracking`) and the figures (:mod:`steplaw_opt.plots`) read them. They all
import the names from here, so none of them needs to import the others.

Study user attributes: the target (``steplaw.target.N``/``.D``/``.seq_len``), the law card
(``steplaw.law``), the batch unit, the budget and the settings a worker rebuilds the study from
(``steplaw.config``, JSON), what it tunes (``steplaw.objective``) and its time budget, time spent
and why it stopped starting runs (``steplaw.time_*``). Trial user attributes: the scale the run
was made at (``steplaw.N``, ``steplaw.D``, ``steplaw.seq_len``; the target when absent), its
place in the plan (``steplaw.slot``), the values it really ran with where they differ from its
parameters (``steplaw.ran_with``), its compute in target-run equivalents, its wall time and
start (``steplaw.seconds``, ``steplaw.started_at``), for a failed run the reason, and the
process running it (``steplaw.owner``), what stopped it (``steplaw.interrupted_by``) or why it
was found lost (``steplaw.lost``).
Trial system attributes (written by the samplers): what the sampler believed when it proposed
the trial.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale

# Parameter names of the studies that `tune` makes.
LR_PARAM, BATCH_PARAM = "lr", "batch_size"

# Study user attributes.
TARGET_ATTRS = ("steplaw.target.N", "steplaw.target.D", "steplaw.target.seq_len")
ATTR_LAW = "steplaw.law"
ATTR_BATCH_UNIT = "steplaw.batch_unit"
ATTR_BUDGET = "steplaw.budget"
ATTR_CONFIG = "steplaw.config"  # everything a worker needs to join the study (JSON)
ATTR_OBJECTIVE = "steplaw.objective"  # what the study tunes (kind, description, key)
ATTR_DEMO_CHECK = "steplaw.demo_check"  # tune --demo: the full runs at the law / refined point
# The time budget (steplaw_opt.tune._time): the one in force (JSON: seconds, gpu_hours,
# gpus_per_run; the last tune's), the wall seconds spent, why runs stopped being started ("": no)
ATTR_TIME_BUDGET = "steplaw.time_budget"
ATTR_TIME_SPENT = "steplaw.time_spent"
ATTR_TIME_STOP = "steplaw.time_stop"

# Trial user attributes.
SCALE_ATTRS = {"N": "steplaw.N", "D": "steplaw.D", "seq_len": "steplaw.seq_len"}
ATTR_FAILURE = "steplaw.failure"
ATTR_COMPUTE = "steplaw.compute"
# The values a run was really made with where they differ from the trial's parameters (a
# rounded batch, a grid replay's cell): {parameter name: value}; the samplers' model uses them.
ATTR_RAN_WITH = "steplaw.ran_with"
ATTR_SECONDS = "steplaw.seconds"  # the run's wall time, as the tuner measured it
ATTR_STARTED = "steplaw.started_at"  # when the run started, seconds since the epoch
ATTR_SLOT = "steplaw.slot"  # the trial's place in the plan (-1: none was left)
NOTE_PREFIX = "steplaw.note."  # what an objective noted about its run (grid point, …)
INTERRUPTED = "interrupted"  # the failure reason of a run stopped by Ctrl-C / SIGTERM
NO_SLOT = "no slot left"
# Written by the many-process machinery (steplaw_opt.tune._workers):
ATTR_OWNER = "steplaw.owner"  # the process running the trial (host, boot, pid, start, trial)
ATTR_INTERRUPTED_BY = "steplaw.interrupted_by"  # what stopped an "interrupted" trial: SIGTERM…
ATTR_LOST = "steplaw.lost"  # why a RUNNING trial was found dead and re-queued

# Trial system attributes the samplers write: what they believed when they proposed the trial.
ATTR_PROPOSAL = "steplaw:proposal"
ATTR_BELIEF = "steplaw:belief"


# Query parameters that carry a secret (libpq and drivers accept ``?password=…``).
_SECRET_PARAM = re.compile(
    r"([?&;](?:password|passwd|pwd|sslpassword|secret|token|api_key|access_token)=)[^&;#]*",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (storage URLs end up in the record and in
    messages): the password of ``scheme://user:password@host`` — up to the last ``@`` before
    the query, so a password with ``/``, ``?`` or ``@`` typed unencoded is hidden whole — and
    ``?password=…`` style query parameters."""
    text = str(url)
    head, sep, rest = text.partition("://")
    if sep and not rest.startswith("/"):  # sqlite:////abs/path has no user part
        query = rest.find("?")
        at = rest.rfind("@", 0, query if query >= 0 else len(rest))
        if at < 0 and query >= 0:  # "user:pa?ss@host": the "?" was the password's, not a query
            at = rest.rfind("@")
        if at >= 0:
            user, colon, _password = rest[:at].partition(":")
            if colon:
                rest = f"{user}:***{rest[at:]}"
        text = f"{head}{sep}{rest}"
    return _SECRET_PARAM.sub(r"\1***", text)


def mask_secrets(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with ``url``'s password hidden wherever it
    appears, as typed or URL-decoded, and ``password=…`` parameters masked."""
    from urllib.parse import unquote

    secrets: set[str] = set()
    _, sep, rest = str(url).partition("://")
    if sep:
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            secrets.add(rest[:at].partition(":")[2])
    secrets |= {m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(str(url))}
    out = str(text)
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, unquote(secret)}:
            if len(form) >= 2:  # a one-character password would blank out the message
                out = out.replace(form, "***")
    return _SECRET_PARAM.sub(r"\1***", out)


def ran_with(trial: Any, lr_param: str, batch_param: str) -> tuple[float, float]:
    """The (lr, batch) the trial's run was made with: the values its objective recorded in the
    ``steplaw.ran_with`` user attribute (a dict keyed by parameter name) where it could not
    run at the proposal — a trainer that rounds the batch to a multiple of its micro-batch, a
    grid replay that runs the nearest cell — else the trial's parameters. A recorded value that
    is not a positive finite number is ignored."""
    values = {name: float(trial.params[name]) for name in (lr_param, batch_param)}
    ran = trial.user_attrs.get(ATTR_RAN_WITH)
    if isinstance(ran, dict):
        for name in values:
            x = ran.get(name)
            if isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf:
                values[name] = float(x)
    return values[lr_param], values[batch_param]


def trial_scale(trial: Any, target: Scale) -> Scale:
    """The scale a trial ran at: the target, overridden by ``steplaw.N``/``steplaw.D``/
    ``steplaw.seq_len`` user attributes (set by the proxy-run planner)."""
    attrs = trial.user_attrs
    changes: dict[str, Any] = {}
    for name, key in SCALE_ATTRS.items():
        if key in attrs:
            changes[name] = int(attrs[key]) if name == "seq_len" else float(attrs[key])
    if not changes:
        return target

    # A proxy of the same model keeps its shape only when N is unchanged.
    if "N" in changes and changes["N"] != target.N:
        return Scale(
            N=changes["N"],
            D=changes.get("D", target.D),
            seq_len=changes.get("seq_len", target.seq_len),
        )
    return dataclasses.replace(target, **changes)


def study_target(study: Any) -> Scale:
    """The target scale a study made by ``tune`` records; one line if it records none."""
    attrs = study.user_attrs
    missing = [k for k in TARGET_ATTRS if k not in attrs]
    if missing:
        raise SteplawInputError(
            f"study {study.study_name!r} was not made by steplaw-opt tune (no {missing[0]})"
        )
    return Scale(
        N=float(attrs["steplaw.target.N"]),
        D=float(attrs["steplaw.target.D"]),
        seq_len=int(attrs["steplaw.target.seq_len"]),
    )


def trials_table(study: Any, sampler: Any = None) -> list[dict[str, Any]]:
    """One row per trial: its scale, parameters, loss, gap to the best at its scale, (u, v)
    when the plateau sampler is given, compute and failure reason."""
    unit = study.user_attrs.get(ATTR_BATCH_UNIT, "sequences")
    best: dict[tuple[float, float], float] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value):
            key = (t.user_attrs.get("steplaw.N", 0.0), t.user_attrs.get("steplaw.D", 0.0))
            best[key] = min(best.get(key, math.inf), t.value)
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        seq_len = int(
            attrs.get("steplaw.seq_len", study.user_attrs.get("steplaw.target.seq_len", 1))
        )
        lr, batch = t.params.get(LR_PARAM), t.params.get(BATCH_PARAM)
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "N": attrs.get("steplaw.N"),
            "D": attrs.get("steplaw.D"),
            "seq_len": seq_len,
            "lr": lr,
            "batch_size": batch,
            "batch_tokens": None
            if batch is None
            else batch * (seq_len if unit == "sequences" else 1),
            "loss": t.value,
            "gap": None,
            "u": None,
            "v": None,
            "compute": attrs.get(ATTR_COMPUTE),
            "proposal": (t.system_attrs.get(ATTR_PROPOSAL) or {}).get("kind"),
            "failure": attrs.get(ATTR_FAILURE),
        }
        key = (attrs.get("steplaw.N", 0.0), attrs.get("steplaw.D", 0.0))
        if t.value is not None and key in best and math.isfinite(t.value):
            row["gap"] = t.value / best[key] - 1.0
        if sampler is not None and lr and batch:
            target = getattr(sampler, "target", None)
            if target is not None:
                u, v = sampler.space.to_uv(float(lr), float(batch), trial_scale(t, target))
                row["u"], row["v"] = float(u), float(v)
        rows.append(row)
    return rows
