"""Config keys by type: the declared annotation of a dotted key, and an OmegaConf error as a
:class:`~agman.engine.compose.ConfigError` naming the key and what it must hold."""
from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any, Union

from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from agman.engine.compose import ConfigError

Switch = Union[str, bool]  # 'auto' (on for GPU) | true | false


def hints(cls) -> dict[str, Any]:
    """The resolved annotations of a config dataclass."""
    return typing.get_type_hints(cls)


def field_type(root: type, path: list[str]) -> Any:
    """The annotation of the key at ``path`` of the config dataclass ``root`` (``eval.ks[0]``: an element;
    None off the declared keys)."""
    kind: Any = root
    for part in path:
        name, _, index = part.partition("[")
        kind = _strip_optional(kind)
        if typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        elif isinstance(kind, type) and is_dataclass(kind) and name in hints(kind):
            kind = hints(kind)[name]
        else:
            return None
        if index and typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
    return kind


def _strip_optional(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is Union and len(args) == 1 else kind


def _words(kind: Any) -> str:
    optional = typing.get_origin(kind) is Union and type(None) in typing.get_args(kind)
    kind = _strip_optional(kind)
    base = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind)
    if base is None:
        origin = typing.get_origin(kind)
        base = ("a list" if origin is list else "a mapping" if origin is dict or is_dataclass(kind)
                else "'auto', true or false" if kind == Switch else str(kind))
    return base + (" (or null)" if optional else "")


def _known(root: type, path: list[str]) -> str:
    kind = _strip_optional(field_type(root, path)) if path else root
    return ", ".join(f.name for f in fields(kind)) if is_dataclass(kind) else ""


def translate_error(exc: OmegaConfBaseException, where: str, root: type) -> ConfigError:
    """An OmegaConf error as a one-line ConfigError naming the key."""
    key = str(exc.full_key or "")
    path = [p for p in key.split(".") if p]
    if isinstance(exc, ConfigKeyError) and path:
        known = _known(root, path[:-1])
        return ConfigError(f"{where}: unknown key {key} (known keys in {'.'.join(path[:-1])}: {known})")
    kind = field_type(root, path)
    if kind is not None:
        return ConfigError(f"{where}: {key} must be {_words(kind)}, got {exc.value!r}")
    return ConfigError(f"{where}: {key}: {str(exc).splitlines()[0]}")
