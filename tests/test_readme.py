"""Every Python example in the README runs, in a fresh namespace and a fresh store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
# Examples that need an Actor are run by tests/test_apify.py, not here.
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    if "from apify import" not in block
]


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESUMABLE_DIR", str(tmp_path / ".resumable"))
    namespace: dict[str, object] = {"__name__": f"readme_{abs(hash(code))}"}
    exec(compile(code, str(README), "exec"), namespace)
