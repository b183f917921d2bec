"""The README's Python snippet that shows its output prints that output."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_prediction_snippet_prints_what_the_readme_shows() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    snippet = next(b for b in blocks if "law.predict(" in b)
    shown = [ln[2:] for ln in snippet.splitlines() if ln.startswith("# ")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {})
    assert shown and out.getvalue().splitlines() == shown
