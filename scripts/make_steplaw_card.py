"""Regenerate priors/cards/step-law.toml from the Step Law authors' 1,000 bootstrap fits.

The published coefficients stay as published (1.79, -0.713, 0.307; 0.58, 0.571); the covariance
of the log-space coefficients comes from the bootstrap fits, and the script checks that the
bootstrap mean reproduces the published coefficients to 3 significant digits.

    python scripts/make_steplaw_card.py \
        --bootstrap ../shared/data/steplaw/1004_fitted_lr_bs_scaling_model_parameters.csv

The CSV is read from a path and never copied into the repository. The residual scatter of the
optimum around the law ([residual]) is kept from the existing card; scripts/fit_landscape.py
estimates it from the released dense runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "priors" / "cards" / "step-law.toml"
DEFAULT_BOOTSTRAP = (
    REPO.parent / "shared" / "data" / "steplaw" / "1004_fitted_lr_bs_scaling_model_parameters.csv"
)
PUBLISHED = {"lr_coef": 1.79, "lr_N": -0.713, "lr_D": 0.307, "bs_coef": 0.58, "bs_D": 0.571}


def bootstrap_summary(path: Path) -> tuple[dict[str, float], np.ndarray]:
    """Mean coefficients (published parameterisation) and the 5×5 log-space covariance of
    (lr intercept, lr ln N, lr ln D, batch intercept, batch ln D)."""
    fits = pd.read_csv(path)
    cols = ["lr_intercept", "lr_coefN", "lr_coefD", "bs_intercept", "bs_coefD"]
    missing = [c for c in cols if c not in fits.columns]
    if missing:
        raise SystemExit(f"{path}: missing columns {missing}")
    values = fits[cols].to_numpy(dtype=float)
    mean = values.mean(axis=0)
    summary = {
        "lr_coef": math.exp(mean[0]),
        "lr_N": mean[1],
        "lr_D": mean[2],
        "bs_coef": math.exp(mean[3]),
        "bs_D": mean[4],
    }
    return summary, np.cov(values, rowvar=False)


def agrees_to_3_digits(value: float, published: float) -> bool:
    """Within one unit of the third significant digit of the published number.

    Rounding alone is too strict: exp(mean lr intercept) is 1.7973, which the paper prints as
    1.79 (truncated), while it rounds -0.71292 to -0.713.
    """
    unit = 10 ** (math.floor(math.log10(abs(published))) - 2)
    return abs(value - published) <= unit


def check_against_published(summary: dict[str, float]) -> None:
    for key, published in PUBLISHED.items():
        if not agrees_to_3_digits(summary[key], published):
            raise SystemExit(
                f"bootstrap mean {key}={summary[key]:.5g} does not reproduce the published "
                f"{published} to 3 significant digits"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=Path, default=DEFAULT_BOOTSTRAP)
    parser.add_argument("--out", type=Path, default=CARD)
    args = parser.parse_args(argv)

    summary, cov = bootstrap_summary(args.bootstrap)
    check_against_published(summary)
    card = tomllib.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    card.update(
        {
            "schema": 1,
            "name": "step-law",
            "title": "Step Law (dense)",
            "lr": {
                "meaning": "peak",
                "form": "power",
                "coefficient": PUBLISHED["lr_coef"],
                "exponents": {"N": PUBLISHED["lr_N"], "D": PUBLISHED["lr_D"]},
            },
            "batch": {
                "unit": "tokens",
                "form": "power",
                "coefficient": PUBLISHED["bs_coef"],
                "exponents": {"D": PUBLISHED["bs_D"]},
            },
            "covariance": {
                "source": "1,000 bootstrap fits released by the authors "
                "(1004_fitted_lr_bs_scaling_model_parameters.csv)",
                "lr_terms": ["intercept", "N", "D"],
                "lr": cov[:3, :3].tolist(),
                "batch_terms": ["intercept", "D"],
                "batch": cov[3:, 3:].tolist(),
                "lr_batch": cov[:3, 3:].tolist(),
            },
        }
    )
    args.out.write_text(tomli_w.dumps(card, multiline_strings=True), encoding="utf-8")
    print(f"wrote {args.out}")
    for key, published in PUBLISHED.items():
        print(f"  {key:8s} published {published:>8}  bootstrap mean {summary[key]:.5g}")


if __name__ == "__main__":
    main()
