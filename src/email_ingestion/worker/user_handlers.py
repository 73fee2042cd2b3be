"""Loading the user's own handler (`--handler package.module:fn`, or `:factory()`), checked at
start so that a handler that cannot work stops the worker with exit 2 and one line naming the
spec and the error (issue 19 item 9), not a traceback and exit 1 that systemd restarts in a loop.

Where the code lives: the directories of WORKER_HANDLER_PATH (`--handler-path`, repeatable;
several joined with ':'), searched before the installed packages. The worker's working
directory is not searched: an installed `email-worker` must not import whatever module
happens to sit where it was started.

Checked at start: the module imports (any exception at import, a syntax error included), the
attribute exists, a factory runs with no arguments, and the result can be called as
`handler(payload, ctx)`: a function with another shape, a generator function or a class
whose constructor takes something else is a bad setting.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from email_ingestion.common.errors import SettingsError

Handler = Callable[..., Any]
WHERE = "invalid setting WORKER_HANDLER"


def import_handler(spec: str, handler_path: Sequence[str] = ()) -> Handler:
    """The callable `spec` names, from WORKER_HANDLER_PATH or the installed packages."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SettingsError(f"{WHERE}: {spec!r} is not log, noop, jsonl:PATH, webhook:URL or package.module:callable")
    _extend_path(handler_path)
    target = _attribute(spec, _module(spec, module_name, handler_path), attr.removesuffix("()"))
    handler: Handler = _made(spec, target) if attr.endswith("()") else target
    check_signature(spec, handler)
    logging.getLogger(__name__).debug("loaded handler", extra={"handler": spec})
    return handler


def _extend_path(handler_path: Sequence[str]) -> None:
    for folder in reversed(handler_path):
        if not Path(folder).is_dir():
            raise SettingsError(f"invalid setting WORKER_HANDLER_PATH: {folder} is not a directory")
        absolute = str(Path(folder).resolve())  # a later chdir must not change what is imported
        if absolute not in sys.path:
            sys.path.insert(0, absolute)


def _module(spec: str, name: str, handler_path: Sequence[str]) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            looked = ", ".join(handler_path) if handler_path else "(none)"
            raise SettingsError(f"{WHERE}: cannot load {spec!r}: no module named {exc.name!r} in "
                                f"WORKER_HANDLER_PATH {looked} or the installed packages (set "
                                "WORKER_HANDLER_PATH / --handler-path to the directory that holds it)") from None
        raise SettingsError(f"{WHERE}: cannot load {spec!r}: {_described(exc)}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module runs the user's code at import
        raise SettingsError(f"{WHERE}: cannot load {spec!r}: {_described(exc)}") from None


def _attribute(spec: str, module: Any, name: str) -> Any:
    try:
        return getattr(module, name)
    except AttributeError:
        raise SettingsError(f"{WHERE}: cannot load {spec!r}: module {module.__name__!r} has no {name!r}") from None


def _made(spec: str, factory: Any) -> Any:
    if not callable(factory):
        raise SettingsError(f"{WHERE}: {spec!r}: {type(factory).__name__} is not a factory (not callable)")
    try:
        return factory()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the factory is the user's code
        raise SettingsError(f"{WHERE}: the factory {spec!r} failed: {_described(exc)}") from None


def check_signature(spec: str, handler: Any) -> None:
    """Refuse what cannot be called as handler(payload, ctx) or would not run its body."""
    if not callable(handler):
        raise SettingsError(f"{WHERE}: {spec!r} is a {type(handler).__name__}, not callable")
    call = handler if inspect.isroutine(handler) or inspect.isclass(handler) else type(handler).__call__
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        raise SettingsError(f"{WHERE}: {spec!r} is a generator function (a `yield` in it): calling it "
                            "would not run its body")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check before the first call
    try:
        signature.bind(object(), object())
    except TypeError as exc:
        hint = f" (a class: did you mean {spec}()?)" if inspect.isclass(handler) and not spec.endswith("()") else ""
        raise SettingsError(f"{WHERE}: {spec!r} cannot be called as handler(payload, ctx): {exc}{hint}") from None


def _described(exc: BaseException) -> str:
    """`Type: message` on one line; describing the user's exception must not fail."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ in the user's exception class
        text = "(its message could not be formatted)"
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:500]
