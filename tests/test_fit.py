"""`steplaw-opt fit`: fit_law (vectorised bootstrap), refine_law (Bayesian), studies, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt.cli import main
from steplaw_opt.priors import (
    Law,
    fit_law,
    fit_law_ols,
    load_law,
    read_runs_csv,
    refine_law,
    refit_from_study,
    runs_from_frame,
    runs_from_study,
)
from steplaw_opt.priors._refine import chi2_sf

TRUE = {"lr": (2.0, -0.7, 0.3), "batch": (0.5, 0.55)}  # coefficient, exponents (N, D) / (D)
SEQ = 2048
NS, DS = (2e8, 5e8, 1e9), (4e9, 1e10, 3e10, 1e11)


def law_values(n: float, d: float, truth: dict = TRUE) -> tuple[float, float]:
    c, en, ed = truth["lr"]
    cb, eb = truth["batch"]
    return c * n**en * d**ed, cb * d**eb


def synthetic(
    noise: float = 0.05, per: int = 6, seed: int = 0, far: bool = True, truth: dict = TRUE
) -> pd.DataFrame:
    """Runs at a 3 × 4 (N, D) design: ``per`` near-optimal runs per setting scattered (ln sd =
    noise) around the true law, plus one far-off run 20 % worse that the 0.25 % rule drops."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in NS:
        for d in DS:
            lr, b = law_values(n, d, truth)
            best = 2.0 + 1e-12 * n
            for _ in range(per):
                rows.append(
                    {
                        "N": n,
                        "D": d,
                        "lr": lr * math.exp(noise * rng.normal()),
                        "bs": b * math.exp(noise * rng.normal()) / SEQ,
                        "smooth loss": best * (1 + 0.001 * rng.random()),
                    }
                )
            if far:
                rows.append({"N": n, "D": d, "lr": lr * 8, "bs": b / 8 / SEQ, "smooth loss": 2.5})
    return pd.DataFrame(rows)


def runs_of(frame: pd.DataFrame):
    return runs_from_frame(frame, source="synthetic")


# --------------------------------------------------------------------------------- fit_law
def test_fit_recovers_known_coefficients() -> None:
    fit = fit_law(runs_of(synthetic(noise=0.01)), n_bootstrap=200)
    law = fit.law
    assert law.lr_formula.coefficient == pytest.approx(TRUE["lr"][0], rel=0.2)
    assert law.lr_formula.terms == pytest.approx({"N": -0.7, "D": 0.3}, abs=0.01)
    assert law.batch_formula.coefficient == pytest.approx(TRUE["batch"][0], rel=0.2)
    assert law.batch_formula.terms["D"] == pytest.approx(0.55, abs=0.01)
    assert fit.n_near == 72 and fit.n_runs == 84 and len(fit.settings) == 12
    assert law.covariance is not None and law.covariance.lr_batch.shape == (3, 2)
    assert law.validity == {"N": (2e8, 1e9), "D": (4e9, 1e11)}


def test_other_forms() -> None:
    frame = synthetic(noise=0.01)
    on_n = fit_law(runs_of(frame), form="batch-on-N", n_bootstrap=0).law
    assert on_n.batch_formula.terms == pytest.approx({"N": 0.0, "D": 0.55}, abs=0.02)
    # compute form: lr ∝ C^a exactly when the truth has equal N and D exponents
    truth = {"lr": (2.0, -0.2, -0.2), "batch": (0.5, 0.55)}
    rng = np.random.default_rng(1)
    frame = synthetic(noise=0.0, truth=truth)
    frame["bs"] = (0.01 * (6 * frame["N"] * frame["D"]) ** 0.3) * np.exp(
        0.01 * rng.normal(size=len(frame))
    )
    compute = fit_law(runs_of(frame), form="compute", n_bootstrap=0).law
    assert compute.compute == "6ND"
    assert compute.lr_formula.terms["C"] == pytest.approx(-0.2, abs=1e-9)
    assert compute.batch_formula.terms["C"] == pytest.approx(0.3, abs=0.01)
    assert "C" in compute.validity
    assert compute.predict(Scale(N=5e8, D=1e10)).lr == pytest.approx(
        2.0 * (5e8 * 1e10) ** -0.2, rel=1e-6
    )


def test_bootstrap_covariance_matches_analytic_ols() -> None:
    # i.i.d. homoscedastic noise: the pairs bootstrap covariance ≈ σ²(XᵀX)⁻¹.
    fit = fit_law(runs_of(synthetic(noise=0.3, per=300, far=False)), n_bootstrap=4000, seed=3)
    ratio = np.sqrt(np.diag(fit.cov_boot) / np.diag(fit.cov_ols))
    assert ratio == pytest.approx(np.ones(5), abs=0.1)
    corr_boot = fit.cov_boot[:3, :3] / np.outer(*[np.sqrt(np.diag(fit.cov_boot[:3, :3]))] * 2)
    corr_ols = fit.cov_ols[:3, :3] / np.outer(*[np.sqrt(np.diag(fit.cov_ols[:3, :3]))] * 2)
    assert corr_boot == pytest.approx(corr_ols, abs=0.06)
    assert fit.boot.mean(axis=0) == pytest.approx(fit.coef, abs=0.02)
    # lr and batch noises are independent here: the cross block is ≈ 0 in correlation
    cross = fit.cov_boot[:3, 3:] / np.outer(
        np.sqrt(np.diag(fit.cov_boot)[:3]), np.sqrt(np.diag(fit.cov_boot)[3:])
    )
    assert np.abs(cross).max() < 0.1


def test_ols_matches_scipy_and_fit_law_ols() -> None:
    stats = pytest.importorskip("scipy.stats")
    frame = synthetic(noise=0.2, seed=4, far=False)
    fit = fit_law(runs_of(frame), n_bootstrap=0)
    ref = stats.linregress(np.log(frame["D"]), np.log(frame["bs"] * SEQ))
    assert fit.coef[4] == pytest.approx(ref.slope)
    assert fit.cov_ols[4, 4] == pytest.approx(ref.stderr**2, rel=1e-9)
    assert fit.law.covariance.joint() == pytest.approx(fit.cov_ols)  # no bootstrap: analytic
    old = fit_law_ols(frame)
    assert fit.law.lr_formula.terms == pytest.approx(old.lr_formula.terms, rel=1e-12)
    assert fit.residual_sd == pytest.approx(old.residual_sd, rel=1e-12)


def test_bootstrap_is_seeded_and_settings_resampling_is_wider() -> None:
    runs = runs_of(synthetic(noise=0.1))
    a, b = fit_law(runs, seed=5), fit_law(runs, seed=5)
    assert np.array_equal(a.boot, b.boot) and a.boot.shape == (1000, 5)
    assert not np.array_equal(a.boot, fit_law(runs, seed=6).boot)
    clustered = fit_law(runs, resample="settings", seed=5)
    assert clustered.bootstrap_degenerate >= 0 and len(clustered.boot) > 900


def test_diverged_runs_are_kept_out_and_reported() -> None:
    frame = synthetic(noise=0.01).astype({"smooth loss": object})
    frame.loc[3, "smooth loss"] = np.nan
    frame.loc[5, "smooth loss"] = "inf"
    fit = fit_law(runs_of(frame), n_bootstrap=0)
    assert fit.excluded == ("row 5", "row 7")
    assert fit.n_runs == 84


def test_released_dense_runs(steplaw_data: Path) -> None:
    runs = read_runs_csv(steplaw_data / "dense_lr_bs_loss.csv")
    assert len(runs) == 1911
    fit = fit_law(runs)
    lr, batch = fit.law.lr_formula.terms, fit.law.batch_formula.terms
    assert lr["N"] == pytest.approx(-0.766, abs=0.005)
    assert lr["D"] == pytest.approx(0.197, abs=0.005)
    assert batch["D"] == pytest.approx(0.613, abs=0.005)
    assert fit.n_near == 129 and len(fit.settings) == 17
    assert fit.bootstrap_seconds < 1.0
    assert fit.boot.mean(axis=0) == pytest.approx(fit.coef, abs=0.1)


def test_bootstrap_of_1000_is_fast(steplaw_data: Path) -> None:
    runs = read_runs_csv(steplaw_data / "dense_lr_bs_loss.csv")
    t0 = time.perf_counter()
    fit_law(runs, n_bootstrap=1000)
    assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------------- refine_law
def _prior(truth: dict = TRUE, sd: float = 0.05, name: str = "synthetic-prior") -> Law:
    c, en, ed = truth["lr"]
    cb, eb = truth["batch"]
    cov = np.diag([sd * 10, sd, sd, sd * 10, sd]) ** 2
    return Law.from_dict(
        {
            "name": name,
            "citation": {"authors": "Test", "title": "t", "year": 2025},
            "lr": {"coefficient": c, "exponents": {"N": en, "D": ed}},
            "batch": {"unit": "tokens", "coefficient": cb, "exponents": {"D": eb}},
            "validity": {"N": [2e8, 1e9], "D": [4e9, 1e11]},
            "covariance": {
                "lr_terms": ["intercept", "N", "D"],
                "lr": cov[:3, :3].tolist(),
                "batch_terms": ["intercept", "D"],
                "batch": cov[3:, 3:].tolist(),
                "lr_batch": cov[:3, 3:].tolist(),
            },
            "residual": {"lr_sd": 0.3, "batch_sd": 0.3},
        }
    )


def test_chi2_sf_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for q, k in [(0.3, 1), (2.0, 2), (30.0, 34), (100.0, 34), (7.0, 10), (1e-3, 4), (500, 6)]:
        assert chi2_sf(q, k) == pytest.approx(stats.chi2.sf(q, k), rel=1e-9, abs=1e-300)


def test_refinement_agrees_with_the_truth_and_moves_little_when_consistent() -> None:
    res = refine_law(_prior(), runs_of(synthetic(noise=0.05)))
    assert res.verdict == "consistent with the prior" and res.p_value > 0.05
    assert np.abs(res.moved).max() < 1.0
    assert np.all(res.shrink < 1.0)
    assert res.law.lr_formula.terms["N"] == pytest.approx(-0.7, abs=0.02)
    assert res.dof == 24 and res.n_settings == 12
    assert res.law.name == "synthetic-prior-refined"


def test_contradicting_data_is_flagged_and_pulls_the_law() -> None:
    other = {"lr": (2.0, -0.5, 0.3), "batch": (0.5, 0.55)}  # a different N exponent
    res = refine_law(_prior(sd=0.01), runs_of(synthetic(noise=0.05, truth=other)))
    assert res.verdict == "contradicts the prior" and res.p_value < 1e-6
    assert res.q_parts[0] > res.q_parts[1]  # the lr part carries the disagreement
    # a vague prior lets the data decide
    vague = refine_law(_prior(sd=1.0), runs_of(synthetic(noise=0.05, truth=other)))
    assert vague.law.lr_formula.terms["N"] == pytest.approx(-0.5, abs=0.03)


def test_posterior_is_the_conjugate_formula() -> None:
    prior = _prior(sd=0.2)
    res = refine_law(prior, runs_of(synthetic(noise=0.05)), setting_sd=(0.1, 0.2))
    s0, m0 = res.prior_cov, res.prior_mean
    x_lr = np.array([[1, math.log(s.N), math.log(s.D)] for s in res.settings])
    x_b = x_lr[:, [0, 2]]
    x = np.block([[x_lr, np.zeros((12, 2))], [np.zeros((12, 3)), x_b]])
    y = np.array([s.mean_ln_lr for s in res.settings] + [s.mean_ln_batch for s in res.settings])
    w = np.diag([1 / 0.01] * 12 + [1 / 0.04] * 12)
    post = np.linalg.inv(np.linalg.inv(s0) + x.T @ w @ x)
    assert res.post_cov == pytest.approx(post, rel=1e-6)
    assert res.post_mean == pytest.approx(post @ (np.linalg.inv(s0) @ m0 + x.T @ w @ y), rel=1e-6)


def test_a_single_setting_refines_but_cannot_be_fitted() -> None:
    frame = synthetic(noise=0.05)
    one = frame[(frame["N"] == 5e8) & (frame["D"] == 1e10)]
    res = refine_law(_prior(), runs_of(one))
    assert res.n_settings == 1 and "prior's residual" in res.noise_source
    with pytest.raises(SteplawInputError, match="2 distinct N"):
        fit_law(runs_of(one))


def test_refine_needs_a_card_with_covariance() -> None:
    with pytest.raises(SteplawInputError, match="no \\[covariance\\]"):
        refine_law(load_law("deepseek-2024"), runs_of(synthetic()))


def test_refined_released_law(steplaw_data: Path) -> None:
    res = refine_law("step-law", read_runs_csv(steplaw_data / "dense_lr_bs_loss.csv"))
    assert res.p_value > 0.01
    assert res.law.lr_formula.terms["N"] == pytest.approx(-0.721, abs=0.01)
    assert np.abs(res.moved).max() < 2


# --------------------------------------------------------------------------------- studies
def _study(per_trial_scale: bool = True):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s")
    frame = synthetic(noise=0.05, far=False)
    if not per_trial_scale:
        frame = frame[(frame["N"] == 5e8) & (frame["D"] == 1e10)]
        study.set_user_attr("steplaw.target.N", 5e8)
        study.set_user_attr("steplaw.target.D", 1e10)
    dist = {
        "lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
        "batch_size": optuna.distributions.FloatDistribution(1.0, 1e5, log=True),
    }
    for row in frame.itertuples():
        attrs = {"steplaw.N": row.N, "steplaw.D": row.D} if per_trial_scale else {}
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": row.lr, "batch_size": row.bs},
                distributions=dist,
                value=row._5,
                user_attrs=attrs,
            )
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def test_refit_from_study_fits_and_refines() -> None:
    study = _study()
    runs = runs_from_study(study)
    assert len(runs) == 72 and runs.notes == ("skipped 1 fail trial(s)",)
    law = refit_from_study(study, n_bootstrap=100)
    assert law.lr_formula.terms["N"] == pytest.approx(-0.7, abs=0.05)
    refined = refit_from_study(study, prior=_prior(), name="mine")
    assert refined.name == "mine" and refined.covariance is not None


def test_study_scale_from_study_attributes() -> None:
    study = _study(per_trial_scale=False)
    runs = runs_from_study(study)
    assert set(runs.N) == {5e8} and set(runs.D) == {1e10}
    assert runs.batch_tokens == pytest.approx(
        np.array([t.params["batch_size"] * SEQ for t in study.trials if t.params])
    )
    law = refit_from_study(study, prior=_prior())
    assert law.covariance is not None


def test_study_errors() -> None:
    optuna = pytest.importorskip("optuna")
    study = _study()
    with pytest.raises(SteplawInputError, match="no param 'batch'"):
        runs_from_study(study, batch_param="batch")
    bare = optuna.create_study(study_name="bare")
    bare.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3, "batch_size": 64.0},
            distributions={
                "lr": optuna.distributions.FloatDistribution(1e-6, 1.0),
                "batch_size": optuna.distributions.FloatDistribution(1.0, 1e4),
            },
            value=2.0,
        )
    )
    with pytest.raises(SteplawInputError, match="scale is unknown"):
        runs_from_study(bare)
    with pytest.raises(SteplawInputError, match="no completed trials"):
        runs_from_study(optuna.create_study(study_name="empty"))
    with pytest.raises(SteplawInputError, match="multi-objective"):
        runs_from_study(optuna.create_study(directions=["minimize", "minimize"]))


# --------------------------------------------------------------------------------- the CLI
def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code), out, err


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "runs.csv"
    synthetic(noise=0.05).to_csv(path, index=False)
    return path


def test_cli_writes_a_card_that_predict_reads(capsys, csv: Path, tmp_path: Path) -> None:
    card, png = tmp_path / "card.toml", tmp_path / "fit.png"
    code, out, _ = cli(capsys, "fit", str(csv), "--out", str(card), "--plot", str(png))
    assert code == 0, out
    assert "exponent of N" in out and "Bootstrap: 1,000 resamples" in out and str(card) in out
    assert png.stat().st_size > 10_000
    law = load_law(str(card))
    assert law.lr_formula.terms["N"] == pytest.approx(-0.7, abs=0.05)
    code, out, _ = cli(capsys, "predict", "--params", "1B", "--tokens", "20B", "--law", str(card))
    assert code == 0 and "learning rate" in out
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_cli_refine_json(capsys, csv: Path, tmp_path: Path) -> None:
    prior = tmp_path / "prior.toml"
    import tomli_w

    prior.write_text(tomli_w.dumps(_prior().to_dict()))
    card = tmp_path / "refined.toml"
    code, out, _ = cli(
        capsys,
        "fit",
        str(csv),
        "--prior",
        str(prior),
        "--out",
        str(card),
        "--json",
        "--bootstrap",
        "50",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["refine"]["test"]["verdict"] == "consistent with the prior"
    assert doc["fit"]["bootstrap"]["requested"] == 50
    assert load_law(str(card)).name == "synthetic-prior-refined"


def test_cli_reads_a_study(capsys, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.copy_study(from_study_name="s", from_storage=_study()._storage, to_storage=url)
    code, out, err = cli(capsys, "fit", "--storage", url, "--study", "s", "--bootstrap", "100")
    assert code == 0, err
    assert "Kept 72 of 72 runs" in out and "skipped 1 fail" in out
    code, _, err = cli(capsys, "fit", "--storage", url, "--study", "nope")
    assert code == 2 and "no study 'nope'" in err and "'s'" in err


def _bad_csv(tmp_path: Path, edit) -> Path:
    frame = synthetic(noise=0.05)
    frame = edit(frame)
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def _set(col: str, row: int, value):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame[col] = frame[col].astype(object)
        frame.loc[row, col] = value
        return frame

    return edit


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (None, ["missing.csv"], "no such file: 'missing.csv'"),
        (lambda f: f.drop(columns="N"), [], "no column 'N' (--n-col)"),
        (None, ["--lr-col", "learning_rate"], "no column 'learning_rate'"),
        (_set("lr", 16, "abc"), [], "row 18: 'lr' is 'abc'"),
        (_set("bs", 3, -64), [], "row 5: 'bs' is -64"),
        (_set("N", 0, 0), [], "row 2: 'N' is 0"),
        (_set("D", 9, ""), [], "row 11: 'D' is ''"),
        (_set("smooth loss", 7, "oops"), [], "row 9: 'smooth loss' is 'oops'"),
        (lambda f: f.assign(N=1e9), [], "2 distinct N"),
        (lambda f: f.assign(D=1e10), [], "2 distinct D"),
        (None, ["--eps", "0.9"], "--eps"),
        (None, ["--eps", "-0.1"], "--eps"),
        (None, ["--form", "cubic"], "unknown form 'cubic'"),
        (None, ["--bootstrap", "1"], "bootstrap count"),
        (None, ["--batch-unit", "bytes"], "--batch-unit"),
        (None, ["--resample", "rows"], "--resample"),
        (None, ["--prior", "nope.toml"], "nope.toml"),
        (None, ["--prior", "deepseek-2024"], "no [covariance]"),
        (None, ["--prior", "step-law", "--form", "compute"], "does not match"),
        (None, ["--mlflow-experiment", "x"], "no MLflow store"),
        (None, ["--study", "s"], "--study needs --storage"),
        (None, ["--out", "no/such/dir/card.toml"], "does not exist"),
        (None, ["--plot", "fit.xyz"], "unknown image format"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    capsys, tmp_path: Path, monkeypatch, edit, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    csv_args = (
        [] if args[:1] == ["missing.csv"] else [str(_bad_csv(tmp_path, edit or (lambda f: f)))]
    )
    out_card = tmp_path / "out.toml"
    out_card.write_text("# the user's previous card\n")
    extra = [] if "--out" in args else ["--out", str(out_card)]
    code, out, err = cli(capsys, "fit", *csv_args, *args, *extra)
    assert code == 2, out
    assert message in err and len(err.strip().splitlines()) == 1
    assert out_card.read_text() == "# the user's previous card\n"  # untouched
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "fit.xyz").exists()
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


def test_bad_prior_card_file(capsys, csv: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    code, _, err = cli(capsys, "fit", str(csv), "--prior", str(bad))
    assert code == 2 and "bad.toml" in err and "not valid TOML" in err


def test_no_input_is_an_error(capsys) -> None:
    code, _, err = cli(capsys, "fit")
    assert code == 2 and "give a CSV" in err


def test_fit_command_module_is_light() -> None:
    code = (
        "import sys, steplaw_opt.cli._fit, steplaw_opt.priors;"
        "print(','.join(m for m in ('matplotlib', 'optuna', 'pandas', 'torch', 'mlflow')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_leave_one_n_out_script(steplaw_data: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "leave_one_n_out.py"
    out = subprocess.run(
        [sys.executable, str(script), str(steplaw_data / "dense_lr_bs_loss.csv"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert len(rows) == 17 * 3
    published = [r["gap"] for r in rows if r["method"] == "published"]
    assert np.mean(published) == pytest.approx(0.00096, abs=0.0001)  # the README's 0.096 %


@pytest.mark.slow  # end to end: two tracked tune studies in a real MLflow store
def test_fit_reads_an_mlflow_experiment_written_by_tune(tmp_path):
    """Two tracked tune studies (two N, three D each) in one MLflow experiment: fitting the
    experiment gives the same runs, and the same law, as fitting the two Optuna studies."""
    import math as _math

    from steplaw_opt import Scale, load_law
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.priors import fit_law, runs_from_study
    from steplaw_opt.priors._fit import concat_runs, runs_from_mlflow
    from steplaw_opt.tracking import MlflowTracker
    from steplaw_opt.tune import tune

    law = load_law("step-law")

    def bowl(lr, batch_size, scale):
        u = _math.log(lr / law.lr_at(scale)) - 0.2
        v = _math.log(batch_size * scale.seq_len / law.batch_tokens_at(scale)) + 0.1
        return 2.5 * _math.exp(0.006 * u * u + 0.006 * v * v)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/studies.db"
    names = []
    for n in (2e8, 8e8):
        with MlflowTracker(uri, experiment="fit-me", plots=False) as tracker:
            result = tune(
                Scale(N=n, D=4e10),
                CallableObjective(bowl),
                storage=storage,
                seed=0,
                tracker=tracker,
                budget=1.0,
            )
        names.append(result.study_name)
    from_mlflow = runs_from_mlflow("fit-me", tracking_uri=uri)
    import optuna

    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    from_optuna = concat_runs([runs_from_study(s) for s in studies])
    assert len(from_mlflow.lr) == len(from_optuna.lr) == 20
    # MLflow params are logged to 6 significant digits.
    np.testing.assert_allclose(np.sort(from_mlflow.lr), np.sort(from_optuna.lr), rtol=1e-5)
    np.testing.assert_allclose(np.sort(from_mlflow.D), np.sort(from_optuna.D), rtol=1e-5)
    a, b = fit_law(from_mlflow, n_bootstrap=50), fit_law(from_optuna, n_bootstrap=50)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-3, atol=1e-4)
    with pytest.raises(SteplawInputError, match="no MLflow experiment 'nope'"):
        runs_from_mlflow("nope", tracking_uri=uri)
