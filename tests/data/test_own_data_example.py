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


def test_docs_own_data_config_runs_revalidates_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    """The config section (a tensor file by class_path, transforms with a null identity) as
    printed: 2 rounds, then its saved config.yaml re-validates and resumes."""
    import json

    import yaml

    from fedgmi.cli import main

    section = PAGE.read_text()[PAGE.read_text().index("### Your own data from a config"):]
    python, config = (re.search(rf"```{lang}\n(.*?)```", section, re.DOTALL).group(1) for lang in ("python", "yaml"))
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "docs/guide/own-data.md (own data from a config)", "exec"), {})  # noqa: S102
    (tmp_path / "my_data.yaml").write_text(config)
    assert yaml.safe_load(config)["scenario"]["shift"]["init_args"]["transforms"][0] is None
    run = tmp_path / "runs" / "my-data"
    fast = ["--algorithm.init_args.local_epochs", "1", "--algorithm.init_args.warmup_rounds", "1"]
    assert main(["fit", "--config", "my_data.yaml", "--output_dir", str(run), "--federation.rounds", "1", *fast]) == 0
    saved = (run / "config.yaml").read_text()
    assert "Unable to serialize" not in saved and "- null" in saved and "TensorFile" in saved
    capsys.readouterr()
    assert main(["validate", "--config", str(run / "config.yaml")]) == 0
    assert "config OK: FedGMI" in capsys.readouterr().out
    assert main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 "--federation.rounds", "2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["rounds"] == 2
