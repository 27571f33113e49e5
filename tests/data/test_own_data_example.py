"""The bring-your-own-data example of the docs (docs/guide/own-data.md, moved there from the
README) runs as written (copied from the page)."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "own-data.md"


def test_docs_bring_your_own_data_example_runs(capsys) -> None:
    text = PAGE.read_text()
    section = text[text.index("## Bring your own data"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(code, "docs/guide/own-data.md (bring your own data)", "exec"), {"__name__": "own_data_example"})  # noqa: S102  (our own docs)
    out = capsys.readouterr().out
    assert "components: K=3 (clean, inverted, blurred), Transformed" in out
    assert "'assignment_accuracy':" in out
