"""The command line RELION builds for an External job, parsed without surprises.

RELION calls ``<exe> --o External/job004/ --in_mics F [--in_coords F] [--<label> <value>]... --j N
[<additional arguments>] [--pipeline_control External/job004/]``. User parameters come from the
GUI's Params tab as raw words: an empty value gives a bare ``--label`` (a flag) and a value with
spaces arrives as several words (joined back with single spaces here). ``-`` and ``_`` in labels are
equivalent (``--pipeline-control`` == ``--pipeline_control``). Unknown labels are an error that names
them, so a typo in the GUI never passes silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydrapicker.errors import UserFacingError


class ArgumentError(UserFacingError):
    """The External job's command line is wrong (unknown or malformed parameter)."""


@dataclass(frozen=True)
class Param:
    """One accepted ``--label value``. ``kind``: str, float, int or flag."""

    name: str
    kind: type = str
    default: object = None
    required: bool = False
    help: str = ""
    positive: bool = False
    between: Optional[tuple] = None  # (lo, hi): the value must lie in this closed range
    choices: Optional[tuple] = None  # the values accepted, when only a few are


# Always accepted: RELION's own arguments. ``pipeline_control`` is accepted and ignored.
RELION_ARGS = (
    Param("o", str, None, True, "output job directory, with trailing slash (set by RELION)"),
    Param("j", int, 1, False, "number of threads (GUI 'Number of threads')", positive=True),
    Param("pipeline_control", str, None, False, "added by RELION when the command contains 'relion_'; ignored"),
)


def _convert(param: Param, raw: Optional[str]):
    flag = f"--{param.name}"
    if param.kind is bool:
        if raw in (None, "", "1", "yes", "Yes", "true", "True"):
            return True
        if raw in ("0", "no", "No", "false", "False"):
            return False
        raise ArgumentError(f"{flag} is a yes/no flag, got {raw!r}; leave the value empty or use Yes/No")
    if raw is None or raw == "":
        if param.required:
            raise ArgumentError(f"{flag} needs a value; fill in its value in the Params tab")
        return param.default
    if param.kind is str:
        return raw
    try:
        value = param.kind(raw)
    except ValueError:
        kind = "an integer" if param.kind is int else "a number"
        raise ArgumentError(f"{flag} must be {kind}, got {raw!r}; fix its value in the Params tab") from None
    if param.positive and not value > 0:
        raise ArgumentError(f"{flag} must be > 0, got {raw!r}; fix its value in the Params tab")
    if (param.between is not None and isinstance(value, (int, float))
            and not param.between[0] <= value <= param.between[1]):
        lo, hi = param.between
        raise ArgumentError(f"{flag} must be from {lo:g} to {hi:g}, got {raw!r}; fix its value in the Params tab")
    if param.choices is not None and value not in param.choices:
        raise ArgumentError(f"{flag} must be one of {', '.join(map(str, param.choices))}, got {raw!r}; "
                            "fix its value in the Params tab")
    return value


def split_argv(argv: list[str]) -> dict[str, Optional[str]]:
    """Group ``argv`` into ``{label: value}``; a label without value words maps to ``None``.

    Words that do not start with ``--`` belong to the preceding label (so negative numbers such as
    ``--threshold -0.5`` work); stray words before the first label are an error.
    """
    out: dict[str, Optional[str]] = {}
    key = None
    words: list[str] = []

    def flush():
        if key is not None:
            out[key] = " ".join(words) if words else None

    for word in argv:
        if word.startswith("--") and len(word) > 2 and not _is_number(word):
            flush()
            key, words = word[2:].replace("-", "_"), []
            if "=" in key:  # --label=value
                key, _, value = key.partition("=")
                words = [value]
        elif key is None:
            raise ArgumentError(f"unexpected argument {word!r} before the first --label; "
                                "check the 'Additional arguments' field")
        else:
            words.append(word)
    flush()
    return out


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def parse(argv: list[str], params: tuple, prog: str) -> dict:
    """Parse ``argv`` against RELION's arguments plus ``params``; returns ``{name: value}``.

    Raises :class:`ArgumentError` naming every unknown label, and for missing required ones.
    """
    spec = {p.name: p for p in RELION_ARGS + tuple(params)}
    raw = split_argv(argv)
    unknown = sorted(k for k in raw if k not in spec)
    if unknown:
        names = ", ".join(f"--{k}" for k in unknown)
        known = ", ".join(p.name for p in params)
        raise ArgumentError(f"unknown parameter(s) {names}. Accepted parameter labels: {known} "
                            "(plus RELION's --o, --j). Fix the label(s) in the Params tab.")
    values = {}
    for name, p in spec.items():
        if name in raw:
            values[name] = _convert(p, raw[name])
        elif p.required:
            raise ArgumentError(f"--{name} is required ({p.help}). In the RELION GUI, Params tab: "
                                f"set a 'Param label' to '{name}' and its value.")
        else:
            values[name] = bool(p.default) if p.kind is bool and p.default is not None else p.default
    return values


def usage(params: tuple, prog: str, summary: str) -> str:
    lines = [f"usage: {prog} --o JOBDIR/ [--in_mics STAR] [--<label> <value>]... --j N", "", summary, "",
             "Parameters (RELION GUI, Params tab: 'Param label' / 'Param value'):"]
    for p in params:
        req = " (required)" if p.required else (f" (default: {p.default})" if p.default not in (None, "") else "")
        lines.append(f"  --{p.name:<18} {p.help}{req}")
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


