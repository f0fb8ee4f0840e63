"""Typed fields of ibjax's frozen config dataclasses: one coercion, one validation style, dict round
trips and dotted overrides.

Every config (:class:`~ibjax.study.config.StudyConfig` and its sections, :class:`~ibjax.mi.MIConfig`
and its parts, the trigger parameters) derives from :class:`Config`:

- At construction each field is coerced to its annotation by :func:`coerce`, the one function that
  turns text (a command-line value, a candidate's ``FIELD=VALUE``, an attack option) or a JSON value
  into a field's type: Literal choices are checked, lists become tuples (so configs hash by value, as
  static arguments of jitted functions must), a bad boolean is an error rather than False.
- :meth:`Config.validate` checks every nested section and then the ranges and relations of its own fields,
  raising one ValueError that names the field by its dotted path and says what to do.

:func:`to_dict` / :func:`from_dict` are the JSON boundary (config files, ``config.json``);
:func:`override` changes fields by dotted path (``"mi.xt.optimiser.lr"``) or, where a leaf name is
unique in the tree, by that name (``lr``), coercing the value the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import typing
from typing import Any, Callable, Literal, Mapping, Optional, Union

import numpy as np

__all__ = ["Config", "ConfigError", "coerce", "describe", "to_dict", "from_dict", "field_paths", "resolve_path", "override",
           "parse_assignments", "format_value"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

Rule = Callable[[Any, str], Any]
"""A coercion rule of a type that :func:`coerce` does not know (value, where) -> typed value."""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray) or type(value).__name__ == "ArrayImpl":
        return f"<array shape={tuple(value.shape)} dtype={value.dtype}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(hint: Any) -> str:
    """What a value of annotation ``hint`` looks like, in words (for error messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in inner) + (", or None" if len(inner) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each {describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if isinstance(hint, type) and hasattr(hint, "describe"):
        return hint.describe()
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} (an object of its fields)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _text_list(text: str) -> list:
    """A list written as JSON (``[64, 64]``), in parentheses, or comma-separated (``64,64``)."""
    t = text.strip()
    if t.startswith("["):
        try:
            out = json.loads(t)
        except json.JSONDecodeError:
            out = None
        if isinstance(out, list):
            return out
    t = t.strip("()[]")
    return [part.strip() for part in t.split(",") if part.strip()]


def coerce(value: Any, hint: Any, where: str, rules: Optional[Mapping[Any, Rule]] = None) -> Any:
    """``value`` as the annotation ``hint`` asks, or a one-line ValueError ``where = value: expected ...``.

    ``value`` may be the typed value itself (returned unchanged, so coercion is idempotent), a JSON
    value (a number, a list, an object for a dataclass) or text (``"true"``, ``"1e-3"``, ``"64,64"``,
    ``"none"``). Types with a classmethod ``coerce(value, where)`` (e.g.
    :class:`ibjax.mi.Candidate`) coerce themselves; ``rules`` adds rules for other types (a trigger's
    pattern arrays).
    """
    rules = rules or {}

    def bad(detail: str = "") -> ValueError:
        return ValueError(f"{where} = {_show(value)}: expected {describe(hint)}" + (f" ({detail})" if detail else ""))

    def go(v: Any, h: Any) -> Any:
        if h in rules:
            return rules[h](v, where)
        origin, args = typing.get_origin(h), typing.get_args(h)
        if h is Any or h is object:
            return v
        if origin is Union:
            if v is None or (type(None) in args and isinstance(v, str) and v.strip().lower() in ("none", "null")):
                if type(None) in args:
                    return None
                raise bad()
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return go(v, inner[0])
            for a in inner:
                try:
                    return go(v, a)
                except ValueError:
                    pass
            raise bad()
        if origin is Literal:
            for a in args:
                if v == a and type(v) is type(a):
                    return a
                if isinstance(v, str) and not isinstance(a, str):
                    try:
                        if go(v, type(a)) == a:
                            return a
                    except ValueError:
                        pass
            raise bad()
        if origin is tuple:
            if isinstance(v, str):
                # A self-coercing element (a candidate) may hold commas itself: text is one element.
                one = len(args) == 2 and args[1] is Ellipsis and hasattr(args[0], "coerce") \
                    and not v.strip().startswith("[")
                v = [v] if one else _text_list(v)
            if not isinstance(v, (list, tuple, np.ndarray)):
                raise bad()
            items = list(v)
            if len(args) == 2 and args[1] is Ellipsis:
                out = tuple(go(x, args[0]) for x in items)
            elif args:
                if len(items) != len(args):
                    raise bad(f"got {len(items)} values")
                out = tuple(go(x, a) for x, a in zip(items, args))
            else:
                out = tuple(items)
            return v if isinstance(v, tuple) and all(a is b for a, b in zip(out, v)) else out
        if isinstance(h, type) and hasattr(h, "coerce") and not dataclasses.is_dataclass(h):
            return h.coerce(v, where)
        if dataclasses.is_dataclass(h):
            if isinstance(v, h):
                return v
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    raise bad() from None
            return from_dict(h, v, where)
        if h is bool:
            if isinstance(v, (bool, np.bool_)):
                return bool(v) if not isinstance(v, bool) else v
            if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
                return v.strip().lower() in _TRUE
            raise bad()
        if h is int:
            if isinstance(v, (bool, np.bool_)):
                raise bad()
            if isinstance(v, int):
                return v
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, str):
                try:
                    return int(v.strip())
                except ValueError:
                    try:
                        v = float(v)
                    except ValueError:
                        raise bad() from None
            if isinstance(v, (float, np.floating)) and float(v).is_integer():
                return int(v)
            raise bad()
        if h is float:
            if isinstance(v, str):
                try:
                    return float(v.strip())
                except ValueError:
                    raise bad() from None
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad()
            return v if type(v) is float else float(v)
        if h is str:
            if not isinstance(v, str):
                raise bad()
            return v
        return v  # an annotation without a rule here: accepted as given

    return go(value, hint)


class Config:
    """Base of ibjax's frozen config dataclasses (see the module docstring).

    Subclasses override :meth:`check` for their own ranges and relations; :meth:`validate` validates
    every nested section (prefixing the section's name to its errors) and then runs it.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            new = coerce(value, hints[f.name], f"{type(self).__name__}.{f.name}", self._coerce_rules(f))
            if new is not value:
                object.__setattr__(self, f.name, new)

    def _coerce_rules(self, f: "dataclasses.Field[Any]") -> Optional[Mapping[Any, Rule]]:
        """Extra coercion rules for field ``f`` (none by default)."""
        return None

    def check(self) -> None:
        """Raise ValueError for a bad value of this section's own fields (override)."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ValueError ``section.sub: what is wrong``) for the first bad
        value in the tree: each nested section's, then this section's :meth:`check` (relations
        between sections are checked once each section is valid)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Config):
                try:
                    value.validate()
                except ConfigError as e:
                    raise ConfigError(f"{f.name}.{e.path}".rstrip("."), e.message) from None
        try:
            self.check()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError("", str(e)) from None


class ConfigError(ValueError):
    """A bad config value: ``path`` is the section's dotted path ('' at the top), ``message`` what is wrong."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------------------------------
# The JSON boundary


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def to_dict(config: Any) -> dict:
    """A JSON-ready nested dict of a config dataclass (tuples as lists, typed values as their text)."""
    return _json_value(config)


def from_dict(cls: type, d: Any, where: str = "") -> Any:
    """``cls`` rebuilt from a (partial) nested dict: missing fields take their defaults, every value
    is coerced to its field's type; an unknown field is a ValueError listing the section's fields."""
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {where or cls.__name__} must be an object, got {_show(d)}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown config field(s) {[f'{where}.{u}'.lstrip('.') for u in unknown]}; "
                         f"{where or cls.__name__} has {names}")
    # Nested sections are built here (naming their path); leaves are coerced by the class itself.
    kwargs = {k: from_dict(hints[k], v, f"{where}.{k}".lstrip(".")) if dataclasses.is_dataclass(hints[k])
              and isinstance(v, Mapping) else v for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a leaf's coercion names its class's field: say where the section is
        if not where:
            raise
        raise ConfigError(where, str(e)) from None


# --------------------------------------------------------------------------------------------------
# Dotted paths


def field_paths(cls: type, prefix: str = "", sections: bool = False) -> dict[str, Any]:
    """``{"optimiser.lr": float, ...}``: every leaf field of a config class by its dotted path (and,
    with ``sections``, every nested section's path too)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            if sections:
                out[path] = hint
            out.update(field_paths(hint, f"{path}.", sections))
        else:
            out[path] = hint
    return out


def resolve_path(cls: type, name: str, aliases: Optional[Mapping[str, str]] = None) -> str:
    """The dotted path ``name`` means in ``cls``: itself (a field or a section), an alias's target, or
    the one leaf whose last part is ``name``. ValueError naming the choices when it is unknown or
    ambiguous."""
    paths, leaves = field_paths(cls, sections=True), field_paths(cls)
    if name in leaves:
        return name
    if aliases and name in aliases:  # before sections: an alias may share a section's name
        return aliases[name]
    if name in paths:
        return name
    matches = [p for p in leaves if p.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{name!r} is ambiguous in {cls.__name__}: give one of {matches}")
    close = difflib.get_close_matches(name, list(paths), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else \
        f"{cls.__name__} has {sorted(p for p in paths if '.' not in p)} (dotted paths into them)"
    raise ValueError(f"unknown field {name!r}; {hint}")


def override(config: Any, changes: Mapping[str, Any], aliases: Optional[Mapping[str, str]] = None) -> Any:
    """``config`` with fields replaced, each named by dotted path or unique leaf name (see
    :func:`resolve_path`) and its value coerced to the field's type (text is parsed)."""
    cls = type(config)
    whole: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for name, value in changes.items():
        path = resolve_path(cls, name, aliases)
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            whole[head] = coerce(value, _hints(cls)[head], f"{cls.__name__}.{head}")
    # A whole section first, then the dotted changes into it on top (whatever the order given).
    kwargs = dict(whole)
    for head, sub in nested.items():
        kwargs[head] = override(kwargs.get(head, getattr(config, head)), sub)
    return dataclasses.replace(config, **kwargs)


def parse_assignments(text: str) -> dict[str, str]:
    """``"critic.family=separable optimiser.lr=1e-3"`` -> ``{"critic.family": "separable", ...}``
    (values still text). ValueError naming an item that is not ``FIELD=VALUE``."""
    out = {}
    for item in text.split():
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise ValueError(f"{text!r}: expected space-separated FIELD=VALUE items, got {item!r}")
        out[name] = value
    return out


def format_value(value: Any) -> str:
    """A typed value as the text :func:`coerce` reads back (tuples comma-separated)."""
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
