"""Checking a compared policy's ``params`` (and a handler's ``handler_params``) against what its factory
takes, before anything is built: unknown names, wrong types, NaN and infinities are input errors with the
parameter's name, not a ``TypeError`` deep inside a policy.

The schema is read from the factory's signature (its type annotations); a factory that takes ``**params``
names a dataclass of its parameters as ``params_class`` (KunServe does).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from sim.config.errors import describe, field_path

_CACHE: dict[Callable[..., Any], type[BaseModel] | None] = {}


def _resolve(annotation: Any, module: str) -> Any:
    """An annotation (a string under ``from __future__ import annotations``) as a type; Any when it names
    something only a type checker sees."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {**vars(typing), **vars(sys.modules[module])})  # noqa: S307 -- our own source
    except Exception:  # noqa: BLE001 -- e.g. a TYPE_CHECKING-only name: accept any value
        return Any


def _model(factory: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model of ``factory``'s keyword parameters (None: it cannot be derived; not checked)."""
    if factory in _CACHE:
        return _CACHE[factory]
    fields: dict[str, Any] = {}
    target = getattr(factory, "params_class", None)
    if target is not None and dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        for f in dataclasses.fields(target):
            default = f.default if f.default is not dataclasses.MISSING else ...
            fields[f.name] = (hints.get(f.name, Any), default)
    else:
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):
            _CACHE[factory] = None
            return None
        module = getattr(factory, "__module__", "builtins")
        for p in sig.parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                _CACHE[factory] = None
                return None
            fields[p.name] = (_resolve(p.annotation, module), ... if p.default is p.empty else p.default)
    model = create_model(f"{getattr(factory, '__name__', 'factory')}Params",
                         __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)
    _CACHE[factory] = model
    return model


def check_params(factory: Callable[..., Any], params: dict[str, Any], where: str) -> dict[str, Any]:
    """``params`` validated against ``factory``'s parameters, with the values as the factory takes them (a
    YAML ``1e9``, which YAML reads as a string, becomes the number). Raises ValueError with one phrase:
    ``where.name: problem``."""
    model = _model(factory)
    if model is None:
        return dict(params)
    try:
        checked = model.model_validate(params)
    except ValidationError as e:
        # an unknown name or a wrong value says more than a missing parameter (often the misspelt one)
        err = sorted(e.errors(), key=lambda x: x["type"] == "missing")[0]
        allowed = f" (allowed: {', '.join(model.model_fields) or 'none'})" if err["type"] == "extra_forbidden" else ""
        raise ValueError(f"{field_path(tuple(err['loc']), where)}: {describe(err)}{allowed}") from None
    return {k: getattr(checked, k) for k in params}
