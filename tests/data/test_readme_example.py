"""The bring-your-own-data example in the README runs as written (copied from the README)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_bring_your_own_data_example_runs(capsys) -> None:
    text = README.read_text()
    section = text[text.index("### Bring your own data"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(code, "README.md (bring your own data)", "exec"), {"__name__": "readme_example"})  # noqa: S102  (our own README)
    out = capsys.readouterr().out
    assert "components: K=3 (clean, inverted, blurred), Transformed" in out
    assert "'assignment_accuracy':" in out
