"""Names that point at code: ``"module:attribute"`` strings, resolved only when used (no registry filled by
import side effects). Shipped models, tasks and plug-ins sit in plain dictionaries of such strings or
classes; a user's own is named directly by its ``module:attribute`` string."""

from __future__ import annotations

import importlib
from typing import Any

from wtal.errors import WtalInputError


def is_reference(name: str) -> bool:
    """``module:attribute`` with both parts present."""
    return name.count(":") == 1 and all(name.split(":"))


def resolve(name: str, shipped: dict[str, Any], *, what: str) -> Any:
    """``shipped[name]`` (a ``module:attribute`` string is imported), else ``name`` itself as a reference;
    an unknown name or a failed import is a :class:`WtalInputError` listing the shipped names."""
    target = shipped.get(name, name if is_reference(name) else None)
    if target is None:
        raise WtalInputError(f"unknown {what} {name!r}",
                             fix=f"use one of {', '.join(sorted(shipped))}, or a 'module:attribute' string")
    if not isinstance(target, str):
        return target
    module_name, attr = target.split(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise WtalInputError(f"{what} {name!r} cannot be imported ({exc})",
                             fix=f"put its module on PYTHONPATH, or use one of {', '.join(sorted(shipped))}") from exc
