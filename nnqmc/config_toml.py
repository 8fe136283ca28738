"""TOML in and out for configs: :func:`to_toml` writes a config document back (the run
directory's config.toml); the helpers read single values (``--set``) and locate parse errors."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["TOMLDecodeError", "loads", "to_toml"]

loads = tomllib.loads
TOMLDecodeError = tomllib.TOMLDecodeError


def to_toml(data: dict) -> str:
    """Serialise a config document (scalars, lists, one level of tables) as TOML."""
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{_toml_key(name)}]")
        for key, value in table.items():
            if isinstance(value, dict):  # an inline table of scalars (element -> name)
                if any(isinstance(v, dict | list) for v in value.values()):
                    raise ValueError(f"nested table {name}.{key} is not supported")
                items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
                lines.append(f"{_toml_key(key)} = {{{items}}}")
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def toml_location(message: str) -> tuple[str, str]:
    """A tomllib error split into (where: "line L, column C", what)."""
    match = re.search(r"\s*\((at line (\d+), column (\d+)|at end of document)\)\s*$", message)
    if not match:
        return "document", message
    text = message[: match.start()]
    if match.group(2):
        return f"line {match.group(2)}, column {match.group(3)}", text
    return "end of document", text


def parse_value(raw: str) -> Any:
    """A ``--set`` value as TOML (``400``, ``true``, ``[1, 2]``), else the bare string."""
    raw = raw.strip()
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except (ValueError, RecursionError):  # also a 5000-digit integer, arrays 1000 deep
        return raw
    if set(parsed) != {"value"}:  # e.g. an embedded newline smuggling in another key
        return raw
    return parsed["value"]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        multiline_safe = not re.search(r'"""|\\|[\x00-\x08\x0b-\x1f\x7f]', value)
        if "\n" in value and multiline_safe:
            return f'"""\n{value}"""'
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")
