r"""Bayesian refinement of a published law with new runs, and a test of whether they disagree.

Model. Stack the log-space coefficients of both regressions,
:math:`\beta = (\ln c_\mathrm{lr}, e_\mathrm{lr}\ldots, \ln c_B, e_B\ldots)`. The prior is the
card: :math:`\beta \sim \mathcal N(m_0, S_0)` with :math:`m_0` its coefficients and
:math:`S_0` its ``[covariance]`` (lr, batch and their cross block).

Data. Runs of one (N, D) setting share that setting's deviation from the law, so they are not
independent observations of :math:`\beta`. With the random-effects model
:math:`y_{gi} = x_g^\top\beta + u_g + e_{gi}`, :math:`u_g \sim \mathcal N(0, \tau^2)`,
:math:`e_{gi} \sim \mathcal N(0, \sigma_w^2)`, and :math:`x_g` constant within a setting, the
setting mean of the near-optimal runs is a sufficient statistic:

.. math:: \bar y_g = x_g^\top \beta + \varepsilon_g, \qquad
          \varepsilon_g \sim \mathcal N(0,\ \tau^2 + \sigma_w^2 / n_g).

:math:`\sigma_w^2` is the pooled within-setting variance; :math:`\tau^2` the method-of-moments
between-setting variance of the new data when it has at least 3 residual degrees of freedom,
else the prior card's residual scatter (a conservative stand-in); each setting's sd is floored at
:data:`MIN_SETTING_SD`. lr and batch noises are independent.

Posterior (conjugate, :math:`W = \mathrm{diag}(1/\sigma_g^2)`, :math:`X` block diagonal):

.. math:: S_n = (S_0^{-1} + X^\top W X)^{-1}, \qquad
          m_n = S_n (S_0^{-1} m_0 + X^\top W \bar y).

Contradiction test (prior predictive check). If the prior is right,
:math:`r = \bar y - X m_0 \sim \mathcal N(0,\ X S_0 X^\top + \Sigma_\varepsilon)`, so
:math:`Q = r^\top (X S_0 X^\top + \Sigma_\varepsilon)^{-1} r \sim \chi^2_{k}` with
:math:`k` the number of observations (2 per setting). A small upper-tail p-value says the new
settings' optima lie further from the card than its stated uncertainty plus the settings' own
scatter allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._fit import (
    FORMS,
    Runs,
    SettingSummary,
    _settings,
    check_eps,
    coef_names,
    concat_runs,
    design,
    features,
    fit_law,
    law_card,
    near_optimal,
    runs_from_study,
)
from steplaw_opt.priors._law import Law, load_law

#: Floor of a setting's observation sd (ln units): the grids are √2-spaced (0.35 in ln lr), so
#: a setting's optimum is never known better than this.
MIN_SETTING_SD = 0.05
_MIN_MOMENT_DOF = 3
#: p-value thresholds of the verdict.
P_CONTRADICTS, P_TENSION = 0.01, 0.05


@dataclass(frozen=True)
class RefineResult:
    """A prior law refined with new runs: posterior, shifts, and the contradiction test."""

    law: Law
    prior: Law
    lr_vars: tuple[str, ...]
    batch_vars: tuple[str, ...]
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    post_mean: np.ndarray
    post_cov: np.ndarray
    setting_sd: tuple[float, float]  # typical (median) observation sd of a setting, lr / batch
    noise_source: str
    q: float
    dof: int
    p_value: float
    q_parts: tuple[float, float]  # lr and batch parts of Q (their own χ² with G dof each)
    n_settings: int
    settings: tuple[SettingSummary, ...] = field(default=())
    card: dict[str, Any] = field(default_factory=dict)  # the card ``law`` came from

    @property
    def coef_names(self) -> tuple[str, ...]:
        return coef_names(self.lr_vars, self.batch_vars)

    @property
    def moved(self) -> np.ndarray:
        """Shift of each coefficient, in prior standard deviations: (m_n − m_0) / sd_0."""
        return (self.post_mean - self.prior_mean) / np.sqrt(np.diag(self.prior_cov))

    @property
    def shrink(self) -> np.ndarray:
        """Posterior sd over prior sd per coefficient (1 = the data taught nothing)."""
        return np.sqrt(np.diag(self.post_cov) / np.diag(self.prior_cov))

    @property
    def verdict(self) -> str:
        if self.p_value < P_CONTRADICTS:
            return "contradicts the prior"
        if self.p_value < P_TENSION:
            return "in tension with the prior"
        return "consistent with the prior"

    def to_dict(self) -> dict[str, Any]:
        sd0, sdn = np.sqrt(np.diag(self.prior_cov)), np.sqrt(np.diag(self.post_cov))
        return {
            "prior": self.prior.name,
            "coefficients": {
                name: {
                    "prior": float(self.prior_mean[i]),
                    "prior_sd": float(sd0[i]),
                    "refined": float(self.post_mean[i]),
                    "refined_sd": float(sdn[i]),
                    "moved_prior_sd": float(self.moved[i]),
                }
                for i, name in enumerate(self.coef_names)
            },
            "covariance": self.post_cov.tolist(),
            "setting_sd": {"lr": self.setting_sd[0], "batch": self.setting_sd[1]},
            "noise_source": self.noise_source,
            "test": {
                "Q": self.q,
                "dof": self.dof,
                "p_value": self.p_value,
                "Q_lr": self.q_parts[0],
                "Q_batch": self.q_parts[1],
                "verdict": self.verdict,
            },
            "n_settings": self.n_settings,
        }


# --------------------------------------------------------------------------------- χ² tail
def chi2_sf(q: float, k: int) -> float:
    r"""Upper tail :math:`P(\chi^2_k > q) = Q(k/2, q/2)`, the regularised upper incomplete gamma
    function (series below :math:`a + 1`, Lentz's continued fraction above)."""
    if q <= 0:
        return 1.0
    a, x = k / 2.0, q / 2.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


# --------------------------------------------------------------------------------- the prior
def prior_moments(law: Law) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, np.ndarray]:
    """The card as a Gaussian over log-space coefficients (batch intercept in tokens).

    Raises:
        SteplawInputError: the card is marked unusable, is not a power law in both quantities,
            has no ``[covariance]``, or uses variables other than N, D and C = 6ND.
    """
    law.require_usable()  # the coefficients are read directly, not through an evaluation
    lr_f, b_f = law.lr_formula, law.batch_formula
    if lr_f is None or b_f is None or lr_f.form != "power" or b_f.form != "power":
        raise SteplawInputError(
            f"prior {law.name!r} must give power laws for both lr and batch to be refined"
        )
    if law.covariance is None:
        raise SteplawInputError(
            f"prior {law.name!r} has no [covariance]; the refinement needs the coefficients' "
            "uncertainty (fit it with `steplaw-opt fit` to get one)"
        )
    used = set(lr_f.variables) | set(b_f.variables)
    if not used <= {"N", "D", "C"} or ("C" in used and law.compute == "MD"):
        raise SteplawInputError(
            f"prior {law.name!r} uses {sorted(used)}; the refinement handles N, D and C = 6ND"
        )
    shift = math.log(law.batch_seq_len) if law.batch_unit == "sequences" else 0.0
    m0 = np.array(
        [
            math.log(lr_f.coefficient),
            *lr_f.terms.values(),
            math.log(b_f.coefficient) + shift,
            *b_f.terms.values(),
        ]
    )
    return lr_f.variables, b_f.variables, m0, law.covariance.joint()


def form_of(lr_vars: tuple[str, ...], batch_vars: tuple[str, ...]) -> str | None:
    """The :data:`FORMS` name with these regressors, or None."""
    for name, (lv, bv) in FORMS.items():
        if (lv, bv) == (lr_vars, batch_vars):
            return name
    return None


# --------------------------------------------------------------------------------- the data
def _setting_noise(
    y: np.ndarray, x: np.ndarray, n: np.ndarray, var_within: np.ndarray, fallback_sd: float
) -> tuple[np.ndarray, str]:
    """Each setting mean's sd: sqrt(τ² + σ_w² / n_g), floored at :data:`MIN_SETTING_SD`."""
    dof_w = float((n - 1).sum())
    s2w = float(((n - 1) * var_within).sum() / dof_w) if dof_w > 0 else 0.0
    dof = len(y) - x.shape[1]
    if dof >= _MIN_MOMENT_DOF:
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        ms = float(((y - x @ beta) ** 2).sum()) / dof
        tau2 = max(ms - float(np.mean(s2w / n)), 0.0)
        how = f"between-setting scatter from the data ({dof} dof)"
    else:
        tau2 = fallback_sd**2
        how = f"only {dof} residual dof: between-setting scatter from the prior's residual"
    return np.maximum(np.sqrt(tau2 + s2w / n), MIN_SETTING_SD), how


def _runs_rms(runs: Runs, near: np.ndarray, lr_vars, batch_vars, coef: np.ndarray) -> tuple:
    kept = runs.subset(near)
    pa = 1 + len(lr_vars)
    r_lr = np.log(kept.lr) - design(kept, lr_vars) @ coef[:pa]
    r_b = np.log(kept.batch_tokens) - design(kept, batch_vars) @ coef[pa:]
    return float(np.sqrt(np.mean(r_lr**2))), float(np.sqrt(np.mean(r_b**2)))


def refine_law(
    prior: Law | str,
    runs: Runs,
    *,
    eps: float = 0.0025,
    setting_sd: tuple[float, float] | None = None,
    name: str | None = None,
) -> RefineResult:
    r"""Conjugate Bayesian update of ``prior``'s coefficients with ``runs`` (module docstring).

    Args:
        prior: a law (or a shipped name / card path) with power-law lr and batch and a
            ``[covariance]``; its variables set the regressors.
        runs: the new runs; each (N, D) setting contributes the mean ln lr and mean ln batch of
            its runs within ``eps`` of its best loss.
        eps: the near-optimal threshold, as in :func:`fit_law`.
        setting_sd: the sd (ln units) of one setting's mean, (lr, batch); default: estimated.
        name: the refined card's name (default ``<prior>-refined``).

    Works with a single setting (the prior fixes the rest). The refined card keeps the prior's
    citation, widens its validity to cover the new runs, and has the posterior covariance; its
    residual is the RMS of the new near-optimal runs around the refined law.
    """
    prior = load_law(prior)
    eps = check_eps(eps)
    lr_vars, batch_vars, m0, s0 = prior_moments(prior)
    keys, groups, near = near_optimal(runs, eps)
    settings = tuple(_settings(runs, keys, groups, near))
    g = len(settings)
    sn, sd = np.array([s.N for s in settings]), np.array([s.D for s in settings])
    x_lr, x_b = features(sn, sd, lr_vars), features(sn, sd, batch_vars)
    y_lr = np.array([s.mean_ln_lr for s in settings])
    y_b = np.array([s.mean_ln_batch for s in settings])
    n = np.array([s.n_near for s in settings], dtype=float)
    pa = x_lr.shape[1]
    fallback = prior.residual_sd or _runs_rms(runs, near, lr_vars, batch_vars, m0)
    if setting_sd is None:
        sd_lr, how_lr = _setting_noise(
            y_lr, x_lr, n, np.array([s.var_ln_lr for s in settings]), fallback[0]
        )
        sd_b, how_b = _setting_noise(
            y_b, x_b, n, np.array([s.var_ln_batch for s in settings]), fallback[1]
        )
        how = f"lr: {how_lr}; batch: {how_b}"
    else:
        if not all(isinstance(v, (int, float)) and v > 0 for v in setting_sd):
            raise SteplawInputError(f"setting_sd must be two positive numbers, got {setting_sd!r}")
        sd_lr, sd_b = np.full(g, float(setting_sd[0])), np.full(g, float(setting_sd[1]))
        how = "given"
    x = np.zeros((2 * g, m0.size))
    x[:g, :pa], x[g:, pa:] = x_lr, x_b
    y = np.concatenate([y_lr, y_b])
    noise = np.concatenate([sd_lr, sd_b]) ** 2

    prec0 = np.linalg.inv(s0)
    post_cov = np.linalg.inv(prec0 + x.T @ (x / noise[:, None]))
    post_cov = (post_cov + post_cov.T) / 2
    post_mean = post_cov @ (prec0 @ m0 + x.T @ (y / noise))

    r = y - x @ m0
    pred_cov = x @ s0 @ x.T + np.diag(noise)
    q = float(r @ np.linalg.solve(pred_cov, r))
    q_lr = float(r[:g] @ np.linalg.solve(pred_cov[:g, :g], r[:g]))
    q_b = float(r[g:] @ np.linalg.solve(pred_cov[g:, g:], r[g:]))
    p_value = chi2_sf(q, 2 * g)

    name = name or f"{prior.name}-refined"
    validity = _widened_validity(prior, runs, near, (*lr_vars, *batch_vars))
    residual = _runs_rms(runs, near, lr_vars, batch_vars, post_mean)
    result = RefineResult(
        law=prior,  # replaced below
        prior=prior,
        lr_vars=lr_vars,
        batch_vars=batch_vars,
        prior_mean=m0,
        prior_cov=s0,
        post_mean=post_mean,
        post_cov=post_cov,
        setting_sd=(float(np.median(sd_lr)), float(np.median(sd_b))),
        noise_source=how,
        q=q,
        dof=2 * g,
        p_value=p_value,
        q_parts=(q_lr, q_b),
        n_settings=g,
        settings=settings,
    )
    card = _refined_card(result, name, runs, validity, residual, int(near.sum()), eps)
    law = Law.from_dict(card, source=name)
    return RefineResult(**{**result.__dict__, "law": law, "card": card})


def _widened_validity(
    prior: Law, runs: Runs, near: np.ndarray, variables: tuple[str, ...]
) -> dict[str, tuple[float, float]]:
    kept = runs.subset(near)
    out: dict[str, tuple[float, float]] = {}
    for v in dict.fromkeys(("N", "D", *variables)):
        vals = kept.values(v)
        lo, hi = float(vals.min()), float(vals.max())
        if v in prior.validity:
            lo, hi = min(lo, prior.validity[v][0]), max(hi, prior.validity[v][1])
        out[v] = (lo, hi)
    return out


def _refined_card(
    res: RefineResult,
    name: str,
    runs: Runs,
    validity: dict[str, tuple[float, float]],
    residual: tuple[float, float],
    n_near: int,
    eps: float,
) -> dict[str, Any]:
    c = res.prior.citation
    notes = (
        f"Bayesian refinement by steplaw-opt fit of {res.prior.name!r} ({res.prior.title}) with "
        f"{res.n_settings} setting(s) of {runs.source} ({n_near} runs within {eps * 100:g} % "
        "of their setting's best loss): conjugate Gaussian update in log space with the prior "
        "card's covariance, one observation per setting (the mean ln lr and ln batch of its "
        f"near-optimal runs). Prior predictive test: Q = {res.q:.2f} on {res.dof} dof, "
        f"p = {res.p_value:.3g} ({res.verdict}). Covariance: posterior. Residual: RMS of the "
        "new near-optimal runs around the refined law."
    )
    return law_card(
        name=name,
        title=f"{res.prior.title}, refined with {runs.source}",
        notes=notes,
        lr_vars=res.lr_vars,
        batch_vars=res.batch_vars,
        coef=res.post_mean,
        cov=res.post_cov,
        cov_source=f"posterior covariance of the Bayesian refinement of {res.prior.name!r}",
        residual_sd=residual,
        residual_source="RMS of the new near-optimal runs around the refined law (ln units)",
        validity=validity,
        citation={
            "authors": c.authors,
            "title": c.title,
            "venue": c.venue,
            "arxiv": c.arxiv,
            "year": c.year,
            "url": c.url,
        },
        lr_meaning=res.prior.lr_meaning,
    )


# --------------------------------------------------------------------------------- tune hook
def refit_from_study(
    study: Any,
    *,
    prior: Law | str | None = None,
    lr_param: str = "lr",
    batch_param: str = "batch_size",
    batch_unit: Literal["sequences", "tokens"] = "sequences",
    seq_len: int = 2048,
    eps: float = 0.0025,
    form: str = "step",
    n_bootstrap: int = 1000,
    seed: int = 0,
    name: str | None = None,
    extra_studies: tuple[Any, ...] = (),
) -> Law:
    """A law card from an Optuna study's own pooled runs (``tune --refit-law`` calls this).

    With ``prior``, the prior is refined by :func:`refine_law` (works from one scale on);
    without, the law is fitted from scratch by :func:`fit_law` (needs at least two distinct N
    and D among the near-optimal trials). The trials' scale convention is
    :func:`~steplaw_opt.priors._fit.runs_from_study`'s.
    """
    parts = [
        runs_from_study(
            s, lr_param=lr_param, batch_param=batch_param, batch_unit=batch_unit, seq_len=seq_len
        )
        for s in (study, *extra_studies)
    ]
    runs = concat_runs(parts)
    if prior is not None:
        return refine_law(prior, runs, eps=eps, name=name).law
    return fit_law(
        runs, eps=eps, form=form, n_bootstrap=n_bootstrap, seed=seed, name=name or "fit"
    ).law
