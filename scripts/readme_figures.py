"""Regenerate the README's two landscape images from current runs, and print the figures the
README quotes about them (the demo's wall time, its refined point, its measured gain).

    python scripts/readme_figures.py [--data ../shared/data/steplaw/dense_lr_bs_loss.csv]

1. ``steplaw-opt tune --demo --json`` in a fresh temporary folder, timed (the README's first
   command runs the same): docs/demo-landscape.png from its study.
2. ``steplaw-opt tune --replay GRID --params 214663680 --tokens 1e11 --no-mlflow --seed 0``
   (the released grid as the objective; the README's run tree is of the same command):
   docs/mlflow-landscape.png from its study.

Nothing else in docs/ is touched; the temporary folders are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = REPO.parent / "shared" / "data" / "steplaw" / "dense_lr_bs_loss.csv"


def _tune(folder: Path, *args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "steplaw_opt.cli", "tune", *args, "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"},
        check=False,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"tune {' '.join(args)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return json.loads(run.stdout), seconds


def _landscape(folder: Path, study_name: str, out: Path) -> None:
    import optuna

    from steplaw_opt.plots import landscape_plot
    from steplaw_opt.samplers import sampler_from_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name, storage=f"sqlite:///{folder / 'steplaw-opt.db'}"
    )
    landscape_plot(study, sampler_from_study(study)).save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=GRID, help="the released dense grid CSV")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"readme_figures: no grid at {args.data}; give --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="steplaw-readme-") as tmp:
        demo_dir = Path(tmp) / "demo"
        demo_dir.mkdir()
        doc, seconds = _tune(demo_dir, "--demo")
        _landscape(demo_dir, doc["study_name"], REPO / "docs" / "demo-landscape.png")
        check, opt = doc["demo_check"], doc["refined_optimum"]
        gain = 100 * (1 - check["refined"]["loss"] / check["law"]["loss"])
        print(
            f"demo: {seconds:.0f} s wall; law lr {doc['law_lr']:.3g} vs refined {opt['lr']:.3g} "
            f"({doc['law_lr'] / opt['lr']:.1f}x), refined batch {opt['batch_sequences']:.3g} "
            f"sequences; full target runs: law {check['law']['loss']:.4f}, refined "
            f"{check['refined']['loss']:.4f} ({gain:.1f} % below the law's point)"
        )
        replay_dir = Path(tmp) / "replay"
        replay_dir.mkdir()
        doc, seconds = _tune(replay_dir, "--replay", str(args.data), "--params", "214663680",
                             "--tokens", "1e11", "--no-mlflow", "--seed", "0")  # fmt: skip
        _landscape(replay_dir, doc["study_name"], REPO / "docs" / "mlflow-landscape.png")
        print(f"replay: {seconds:.0f} s wall; refined lr {doc['refined_optimum']['lr']:.3g}")
    print("wrote docs/demo-landscape.png and docs/mlflow-landscape.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
