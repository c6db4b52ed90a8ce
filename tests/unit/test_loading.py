"""Loading MODULE:APP for the CLI: every way it can fail is an AppLoadError saying which."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.errors import AppLoadError
from tidings.loading import load_app


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("broken_syntax", "failing_import", "not_an_app"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(("name", "source", "error"), [
    ("broken_syntax", "app = (", "SyntaxError"),
    ("failing_import", "raise RuntimeError('no config')", "RuntimeError: no config"),
])
def test_a_module_whose_own_code_fails_is_named_with_what_failed(
    modules: Path, name: str, source: str, error: str
) -> None:
    (modules / f"{name}.py").write_text(source)

    with pytest.raises(AppLoadError, match=f"importing '{name}' failed: .*{error}"):
        load_app(f"{name}:app")


def test_an_attribute_that_is_not_an_app_is_named(modules: Path) -> None:
    (modules / "not_an_app.py").write_text("app = 42\n")

    with pytest.raises(AppLoadError, match=r"not_an_app:app is a int, not a tidings\.App"):
        load_app("not_an_app:app")
