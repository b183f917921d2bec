"""The OptunaHub package in optunahub/samplers/steplaw_plateau/: it loads offline with
``optunahub.load_local_module``, re-exports steplaw-opt's own samplers, runs a study, and its
README front matter, license and example are what the registry asks for."""

from __future__ import annotations

import inspect
import math
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import optuna
import optunahub
import pytest
import yaml

import steplaw_opt.samplers
from steplaw_opt import Scale, load_law

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "optunahub"
PACKAGE = "samplers/steplaw_plateau"
FOLDER = REGISTRY / PACKAGE
FRONT_MATTER_KEYS = {"author", "title", "description", "tags", "optuna_versions", "license"}
TARGET = Scale(N=4.29e8, D=4e10)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection, or to start a process (``load_module`` runs
    ``git fetch``), fails the test: loading locally fetches nothing."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def module(no_network: None) -> ModuleType:
    return optunahub.load_local_module(package=PACKAGE, registry_root=str(REGISTRY))


def test_the_folder_has_the_registry_layout() -> None:
    for name in ("__init__.py", "README.md", "LICENSE", "example.py", "requirements.txt"):
        assert (FOLDER / name).is_file(), f"{PACKAGE} lacks {name}"
    requirements = (FOLDER / "requirements.txt").read_text(encoding="utf-8").split()
    assert "steplaw-opt" in requirements
    # optunahub/ at the repository's root must stay a plain folder: with an __init__.py it would
    # shadow the real optunahub package for anything run from the root.
    assert not (REGISTRY / "__init__.py").exists()
    assert Path(optunahub.__file__).resolve().parent != REGISTRY
    license_text = (FOLDER / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License, Version 2.0" in license_text
    assert "http://www.apache.org/licenses/LICENSE-2.0" in license_text


def test_the_module_re_exports_steplaw_opts_own_classes(module: ModuleType) -> None:
    assert module.__name__ == "optunahub_registry.package.samplers.steplaw_plateau"
    assert module.PlateauSampler is steplaw_opt.samplers.PlateauSampler
    assert module.refined_optimum is steplaw_opt.samplers.refined_optimum
    assert module.Scale is Scale
    assert set(module.__all__) >= {"PlateauSampler", "BoTorchPlateauSampler"}
    # No copy of the sampler code in the package: only the re-exporting __init__.py.
    assert sorted(p.name for p in FOLDER.glob("*.py")) == ["__init__.py", "example.py"]
    with pytest.raises(AttributeError):
        _ = module.NoSuchSampler


@pytest.mark.slow  # end to end: a fresh interpreter in a subprocess
def test_loading_does_not_import_torch_and_botorch_is_the_real_class() -> None:
    code = (
        "import sys, optunahub, steplaw_opt.samplers\n"
        f"m = optunahub.load_local_module(package={PACKAGE!r}, registry_root={str(REGISTRY)!r})\n"
        "assert 'torch' not in sys.modules, 'loading the package imported torch'\n"
        "assert m.BoTorchPlateauSampler is steplaw_opt.samplers.BoTorchPlateauSampler\n"
        "assert 'torch' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_study_with_the_loaded_sampler(module: ModuleType) -> None:
    law = load_law("step-law").predict(TARGET)
    law_batch = law.batch_tokens / TARGET.seq_len
    best_lr, best_batch = 1.4 * law.lr, 0.7 * law_batch  # the bowl's bottom: off the law's point

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        batch = trial.suggest_int("batch_size", 16, 2048, log=True)
        u, v = math.log(lr / best_lr), math.log(batch / best_batch)
        return 2.5 * (1 + 0.01 * u * u + 0.004 * v * v)

    sampler = module.PlateauSampler(module.Scale(N=4.29e8, D=4e10), seed=0)
    study = optuna.create_study(sampler=sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=8)

    trials = study.trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        assert 1e-4 <= t.params["lr"] <= 3e-2
        assert isinstance(t.params["batch_size"], int) and 16 <= t.params["batch_size"] <= 2048
    # Trial 0 is the law's point (inside the bounds, so not clipped; the batch rounded).
    first = trials[0].params
    assert first["lr"] == pytest.approx(law.lr, rel=1e-6)
    assert abs(first["batch_size"] - law_batch) <= 0.5
    # The proposals explore: no repeats, and some away from the law's point.
    points = {(round(t.params["lr"], 12), t.params["batch_size"]) for t in trials}
    assert len(points) == len(trials)
    # The refined optimum moves from the law's point towards the bowl's bottom.
    opt = module.refined_optimum(study, sampler=sampler)

    def distance(lr: float, batch: float) -> float:
        return math.hypot(math.log(lr / best_lr), math.log(batch / best_batch))

    assert distance(opt.lr, opt.batch_sequences) < 0.25 * distance(law.lr, law_batch)


def front_matter() -> tuple[dict, str]:
    text = (FOLDER / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, flags=re.DOTALL)
    assert match, "README.md does not start with a --- front matter block ---"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_the_readme_front_matter_has_the_registrys_fields() -> None:
    meta, body = front_matter()
    assert set(meta) == FRONT_MATTER_KEYS
    for key in ("author", "title", "description", "license"):
        assert isinstance(meta[key], str) and meta[key].strip(), key
    assert isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])
    assert "sampler" in meta["tags"]  # the registry's rule for package/samplers/
    versions = meta["optuna_versions"]
    assert versions and all(re.fullmatch(r"\d+\.\d+\.\d+", str(v)) for v in versions)
    assert all(isinstance(v, str) for v in versions)  # "All columns must be string"
    assert "Apache" in meta["license"]
    assert 'load_module("samplers/steplaw_plateau")' in body


def test_the_readme_names_the_real_arguments() -> None:
    _, body = front_matter()
    documented = re.search(r"`PlateauSampler\((.*?)\)`", body)
    assert documented, "README does not give PlateauSampler's signature"
    names = {a.split("=")[0].strip() for a in documented.group(1).split(",")} - {"*", "..."}
    signature = inspect.signature(steplaw_opt.samplers.PlateauSampler)
    assert names <= set(signature.parameters), names - set(signature.parameters)
    for name in signature.parameters:
        assert f"`{name}`" in body, f"README does not mention the argument {name}"


def test_the_example_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(FOLDER / "example.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # any folder: the example finds its registry from its own path
    )
    assert out.returncode == 0, out.stderr
    assert "refined optimum: lr" in out.stdout
    assert list(tmp_path.iterdir()) == []  # writes nothing where it runs
