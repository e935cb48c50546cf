"""Which object serves? Finding the user's :class:`DataSource` from ``module:attr``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import traceback
from typing import Any

from ..errors import ConfigError
from ..wire.bodies import OPERATIONS
from .datasource import DataSource, overridden
from .models import ModelNames

__all__ = ["handler_problems", "import_module", "load_handler"]


def load_handler(spec: str) -> DataSource:
    """Import ``module:attr`` and return a :class:`DataSource` instance.

    ``attr`` may name a subclass (instantiated with no arguments), an
    instance, or a factory function returning one. The current directory is
    importable, as with ``uvicorn``. Every way this can go wrong is a
    :class:`ConfigError` of one line naming the file and line at fault.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"handler {spec!r} must look like 'package.module:ClassName'")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        dotted = module_name.removesuffix(".py").strip("./").replace("/", ".").replace(os.sep, ".")
        raise ConfigError(
            f"handler {spec!r} names a file; give its module instead, e.g. "
            f"'{dotted}:{attr_path}' (run from the folder that holds it, or set PYTHONPATH)"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: Any = import_module(module_name)
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if callable(target) and not isinstance(target, DataSource):
        try:
            target = target()
        except Exception as error:
            raise ConfigError(
                f"handler {spec!r} failed to start: {type(error).__name__}: {error}{_where(error)}"
            ) from None
    if not isinstance(target, DataSource):
        raise ConfigError(
            f"handler {spec!r} is a {type(target).__name__}, not a connector.DataSource"
        )
    return target


def import_module(module_name: str, *, kind: str = "handler module") -> Any:
    """Import the user's module; every way it fails is a one-line ConfigError
    naming the ``kind`` of module, and the file and line at fault."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"cannot import {kind} {module_name!r}: no module named {missing!r} "
                "(is it on PYTHONPATH, or run from the folder that holds it?)"
            ) from None
        raise ConfigError(
            f"{kind} {module_name!r} imports {missing!r}, which is not installed{_where(error)}"
        ) from None
    except SyntaxError as error:
        raise ConfigError(
            f"{kind} {module_name!r} has a syntax error at {error.filename}, "
            f"line {error.lineno}: {error.msg}"
        ) from None
    except Exception as error:
        raise ConfigError(
            f"{kind} {module_name!r} failed while importing: "
            f"{type(error).__name__}: {error}{_where(error)}"
        ) from None


def _where(error: BaseException) -> str:
    """`` (at FILE, line N)``: the innermost frame outside the import machinery."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen")
        and "importlib" not in frame.filename
        and not frame.filename.endswith(os.path.join("serve", "loader.py"))
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {frame.filename}, line {frame.lineno})"


# What the dispatcher passes each method, to check a handler before it serves.
_CALLS: dict[str, tuple[str, ...]] = {
    "load": ("model", "id", "ctx"),
    "list": ("model", "query", "ctx"),
    "commit": ("commit", "ctx"),
    "events": ("cursor", "limit", "ctx"),
    "authorize": ("ctx",),
    "scopes": ("ctx",),
    "probe": (),
    "served_models": (),
}


def handler_problems(source: DataSource) -> list[str]:
    """What would keep ``source`` from serving, each with its fix; empty when none.

    Catches a handler that overrides no operation, a method whose name is a
    near miss of one (``lod``), a method that cannot take the arguments
    the dispatcher passes it, and declared models that share a name.
    """
    problems = []
    implemented = [op for op in OPERATIONS if overridden(source, op)]
    if not implemented:
        problems.append(
            f"{type(source).__name__} overrides none of {', '.join(OPERATIONS)}: every request "
            "would answer 404; define at least one of them"
        )
    own = {
        name
        for klass in type(source).__mro__
        if klass not in (DataSource, object)
        for name in vars(klass)
        if not name.startswith("_") and callable(getattr(source, name, None))
    }
    for name in sorted(own - set(_CALLS)):
        close = difflib.get_close_matches(
            name, [op for op in OPERATIONS if op not in implemented], 1, 0.6
        )
        if close:
            problems.append(
                f"method {name!r} matches no operation; did you mean {close[0]!r}? "
                f"(the dispatcher only calls {', '.join(OPERATIONS)})"
            )
    for name, arguments in _CALLS.items():
        if not overridden(source, name):
            continue
        method = getattr(source, name)
        try:
            inspect.signature(method).bind(*arguments)
        except TypeError:
            problems.append(
                f"{name}{inspect.signature(method)} cannot be called as "
                f"{name}({', '.join(arguments)}): give it exactly those parameters"
            )
        except ValueError:  # no signature to inspect (a builtin): let it be
            pass
    if source.model_names is not None:
        try:
            ModelNames.of(source.model_names, origin=f"{type(source).__name__}.model_names")
        except ConfigError as error:
            problems.append(str(error))
    return problems
