"""The plateau sampler of a stored study, rebuilt from what the study records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steplaw_opt._records import (
    ATTR_BATCH_UNIT,
    ATTR_LAW,
    BATCH_PARAM,
    LR_PARAM,
    study_target,
)
from steplaw_opt.priors._law import Law, load_law
from steplaw_opt.samplers._plateau import PlateauSampler


def sampler_from_study(study: Any, law: str | Path | Law | None = None) -> PlateauSampler:
    """A :class:`PlateauSampler` for a study made by :func:`steplaw_opt.tune.tune`, rebuilt
    from its user attributes (target, law card, batch unit): for reports and plots of a stored
    study. ``law`` overrides the card the study records (a card moved to another path, say).

    Example:
        >>> import optuna
        >>> from steplaw_opt.samplers import sampler_from_study
        >>> study = optuna.create_study()
        >>> for key, value in {"steplaw.target.N": 1e9, "steplaw.target.D": 1e11,
        ...                    "steplaw.target.seq_len": 2048}.items():
        ...     study.set_user_attr(key, value)
        >>> sampler_from_study(study).target.N
        1000000000.0
    """
    target = study_target(study)
    attrs = study.user_attrs
    return PlateauSampler(
        target,
        law=load_law(law if law is not None else attrs.get(ATTR_LAW, "step-law")),
        lr_param=LR_PARAM,
        batch_param=BATCH_PARAM,
        batch_unit=attrs.get(ATTR_BATCH_UNIT, "sequences"),
        seed=0,
    )
