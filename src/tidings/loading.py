"""Loading an App from a ``MODULE:ATTRIBUTE`` path given on the command line."""

from __future__ import annotations

import importlib
import os
import sys

from tidings.app import App
from tidings.errors import AppLoadError


def load_app(path: str) -> App:
    """Import ``package.module:app`` (the current directory is importable, as for uvicorn)."""
    app = load_object(path, "APP")
    if not isinstance(app, App):
        raise AppLoadError(f"{path} is a {type(app).__name__}, not a tidings.App")
    return app


def load_object(path: str, what: str) -> object:
    """Import ``package.module:attribute``; ``what`` names the expected kind in errors."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(f"{path!r} is not MODULE:{what}, e.g. `myproject.pipeline:app`")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f"cannot import {module_name!r}: no module {exc.name!r}. Run from the directory"
                " that contains it, or install it into this environment"
            ) from None
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the module's own code: a syntax error, a failing import
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
                           " (--debug shows where)") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
