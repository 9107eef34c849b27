"""How a setting is declared once: its type (the annotation), default, accepted values and a one-line description.

:mod:`seglab.config` declares every setting with :func:`setting`; this module reads those
declarations to check a loaded config (type first, then range), to name the settings that
shape the processed dataset (the cache key reads them), and to write the README's
configuration reference. No TensorFlow here: the command line checks a config before any
kernel starts.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

AUTO = "auto"
Auto = Literal["auto"]  # a setting that notebook 01 derives from the dataset by written rules (seglab.planning)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Check:
    """What a value must be beyond its type: ``test(value)``, and the words for what is accepted."""
    test: Callable[[Any], bool]
    accepted: str | Callable[[Any], str]

    def words(self, value=None) -> str:
        return self.accepted(value) if callable(self.accepted) else self.accepted


def one_of(*allowed) -> Check:
    return Check(lambda v: v in allowed, "one of " + ", ".join(map(str, allowed)))


def at_least(low, what: str = "") -> Check:
    return Check(lambda v: v >= low, what or f"at least {low}")


POSITIVE = Check(lambda v: v > 0, "a positive integer")
FRACTION = Check(lambda v: 0 < v < 1, "a fraction in (0, 1)")
OVERLAP = Check(lambda v: 0 <= v < 1, "a number in [0, 1)")


def setting(default, doc: str, check: Check | None = None, preprocessing: bool = False):
    """A config field: ``default``, a one-line ``doc``, the ``check`` of its value (a null in an optional
    setting and an ``auto`` in an Auto one are not checked); ``preprocessing`` when notebook 01's
    dataset depends on it, so that changing it makes 01 process the data again."""
    meta = {"doc": doc, "check": check, "preprocessing": preprocessing}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls):
    """A config section inside another."""
    return field(default_factory=cls, metadata={"section": True})


@dataclass
class Leaf:
    key: str  # dotted, e.g. train.epochs
    owner: Any  # the section object
    name: str
    hint: Any
    meta: Any


def leaves(section_obj, where: str = ""):
    """Every setting of a config object, in declaration order."""
    hints = typing.get_type_hints(type(section_obj))
    for f in dataclasses.fields(section_obj):
        if f.metadata.get("section"):
            yield from leaves(getattr(section_obj, f.name), f"{where}{f.name}.")
        else:
            yield Leaf(f"{where}{f.name}", section_obj, f.name, hints[f.name], f.metadata)


# --- types --------------------------------------------------------------------------

_TYPE_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
               str: ("a string", "strings"), list: ("a list", "lists")}
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # PyYAML reads 1e-3 as text, YAML 1.2 as a number


class WrongType(Exception):
    pass


def _union_with(hint, member):
    """X for the union of X and ``member`` (X | None, X | Auto), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and member in args:
        (inner,) = [a for a in args if a != member]
        return inner
    return None


def optional(hint):
    return _union_with(hint, type(None))


def auto_or(hint):
    return _union_with(hint, Auto)


def typed(value, hint):
    """``value`` as the declared type, allowing YAML's own readings only: an int is a float, a bool is no int."""
    if optional(hint) is not None:
        return None if value is None else typed(value, optional(hint))
    if auto_or(hint) is not None:
        return value if value == AUTO else typed(value, auto_or(hint))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise WrongType
        return [typed(v, typing.get_args(hint)[0]) for v in value]
    if hint is float and not isinstance(value, bool) and (
            isinstance(value, int) or isinstance(value, str) and _SCIENTIFIC.fullmatch(value)):
        return float(value)
    if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise WrongType


def describe(hint, plural: bool = False) -> str:
    if optional(hint) is not None:
        return f"{describe(optional(hint))} or null"
    if auto_or(hint) is not None:
        return f"{describe(auto_or(hint))} or auto"
    if typing.get_origin(hint) is list:
        return f"a list of {describe(typing.get_args(hint)[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


def show(value) -> str:
    """A value as YAML spells it: null, true, 'text'."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def check_leaves(cfg) -> None:
    """Each setting's declared type, then its declared check, stopping at the first wrong one."""
    found = list(leaves(cfg))
    for leaf in found:
        value = getattr(leaf.owner, leaf.name)
        try:
            setattr(leaf.owner, leaf.name, typed(value, leaf.hint))
        except WrongType:
            check = leaf.meta.get("check")
            words = check.words(value) if check else ""
            raise ConfigError(f"{leaf.key}={show(value)} must be "
                              f"{words if words.startswith('one of') else describe(leaf.hint)}") from None
    for leaf in found:
        value, check = getattr(leaf.owner, leaf.name), leaf.meta.get("check")
        if check is None or value is None or (value == AUTO and auto_or(leaf.hint)):
            continue
        if not check.test(value):
            raise ConfigError(f"{leaf.key}={show(value)} must be {check.words(value)}")


def preprocessing_settings(cfg) -> dict:
    """The settings marked ``preprocessing``, by key: what notebook 01's dataset depends on."""
    return {leaf.key: getattr(leaf.owner, leaf.name) for leaf in leaves(cfg) if leaf.meta.get("preprocessing")}


def reference_markdown(cfg) -> str:
    """The configuration reference: every setting, its type, default, what it accepts and what it does."""
    lines = ["| setting | type | default | accepts | what it does | 01 reprocesses |", "|---|---|---|---|---|---|"]
    for leaf in leaves(cfg):
        check = leaf.meta.get("check")
        default = show(getattr(leaf.owner, leaf.name)).replace("'", "")
        accepts = check.words() if check else ""
        mark = "yes" if leaf.meta.get("preprocessing") else ""
        lines.append(f"| `{leaf.key}` | {describe(leaf.hint)} | `{default}` | {accepts} | {leaf.meta['doc']} | {mark} |")
    return "\n".join(lines)
