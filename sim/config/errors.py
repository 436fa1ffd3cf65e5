"""Input errors as one line: ``file: field.path: problem``.

`ScenarioError` is what every loader of a user's file raises (scenario, capacity plan, trace); `format_error`
turns a pydantic validation error into that line. A message never echoes an unbounded input: values are
shown through `short` (a bounded ``repr``), so a huge string, a list expanded from YAML aliases or a deeply
nested mapping costs a few dozen characters in a message, not its size.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def one_line(msg: str) -> str:
    """``msg`` with every character that could break a line or hide itself (newlines, Unicode line
    separators, control characters) written as its escape: a message stays one line whatever it quotes."""
    if msg.isprintable():
        return msg
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in msg)


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message is one line: ``file: field.path: problem``."""

    def __init__(self, msg: str) -> None:
        super().__init__(one_line(str(msg)))


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 48
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 1
_REPR.maxlong = 24


def short(value: Any) -> str:
    """A ``repr`` of at most 80 characters, whatever the value's size (reprlib walks only what it shows, so
    a structure of a billion shared references costs nothing)."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr of a huge int is slow or refused
        return f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    s = _REPR.repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else short(x)


def describe(err: Any) -> str:
    """One readable phrase for a pydantic error (a dict of ``ValidationError.errors()``)."""
    t, ctx, inp = err["type"], err.get("ctx", {}), err.get("input")
    if t == "greater_than":
        return f"must be > {_num(ctx['gt'])}, got {_num(inp)}"
    if t == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}, got {_num(inp)}"
    if t == "less_than_equal":
        return f"must be <= {_num(ctx['le'])}, got {_num(inp)}"
    if t == "less_than":
        return f"must be < {_num(ctx['lt'])}, got {_num(inp)}"
    if t == "finite_number":
        return f"must be a finite number, got {short(inp)}"
    if t == "missing":
        return "required"
    if t == "extra_forbidden":
        return "unknown key"
    if t == "literal_error":
        return f"must be {ctx.get('expected')}, got {short(inp)}"
    if t == "union_tag_invalid":
        return f"kind must be {ctx.get('expected_tags')}, got {short(ctx.get('tag'))}"
    if t == "union_tag_not_found":
        return f"needs a 'kind' ({ctx.get('discriminator', 'kind')})"
    if t in ("int_parsing", "int_type", "int_from_float", "int_parsing_size"):
        return f"must be an integer, got {short(inp)}"
    if t in ("float_parsing", "float_type"):
        return f"must be a number, got {short(inp)}"
    if t in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {short(inp)}"
    if t in ("string_type",):
        return f"must be a string, got {short(inp)}"
    if t in ("string_too_long",):
        return f"must be at most {ctx.get('max_length')} characters, got {len(inp) if isinstance(inp, str) else '?'}"
    if t in ("string_too_short",):
        return f"must be at least {ctx.get('min_length')} character(s)"
    if t in ("too_short", "too_long"):
        lim = ctx.get("min_length") if t == "too_short" else ctx.get("max_length")
        most = "at least" if t == "too_short" else "at most"
        return f"must have {most} {lim} item(s), got {ctx.get('actual_length')}"
    if t in ("list_type",):
        return f"must be a list, got {short(inp)}"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {short(inp)}"
    if t == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, Union and Annotated)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in getattr(ann, "__args__", ()) or ():
        out += _models_in(a)
    return out


def allowed_keys(model: type[BaseModel], loc: tuple) -> str:
    """The keys allowed where an unknown key was found (walks the model along the error location)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", {})
        if part not in fields:
            return ""
        found = _models_in(fields[part].annotation)
        cur = found[0] if found else None
        if cur is None:
            return ""
    fields = getattr(cur, "model_fields", {})
    return f" (allowed: {', '.join(fields)})" if fields else ""


# union/discriminator tags that pydantic puts into an error's location (dropped from the field path)
TAGS = {"poisson", "gamma", "constant", "batch", "fixed", "uniform", "lognormal", "empirical"}


def field_path(loc: tuple, prefix: str = "") -> str:
    """``workload.arrivals.rate_per_s`` from a pydantic location (tags dropped; keys bounded)."""
    parts = [x for x in loc if not (isinstance(x, str) and ("[" in x or x in TAGS))]
    where = ".".join(str(x) if isinstance(x, int) else (x if 0 < len(x) <= 60 else short(x)) for x in parts)
    return ".".join(filter(None, [prefix, where])) or "(top level)"


def format_error(path: Path, e: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One line for the first validation error: ``file: field.path: problem`` (``root``: the schema the
    file was validated against, for the allowed keys; ``prefix``: where that schema sits in the file)."""
    errs = e.errors()
    err = errs[0]
    where = field_path(tuple(err["loc"]), prefix)
    msg = describe(err)
    if err["type"] == "extra_forbidden":
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in TAGS)))
        msg += allowed_keys(root, loc)
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{path.name}: {where}: {msg}{more}"
