"""Settings: the fields of the config dataclasses, each with its type and range declared beside it.

A config dataclass (`GPTConfig`, `TrainConfig`, `PPOConfig`, ...) declares a field with
`setting(default, gt=0)` instead of a bare default. The range travels in the field's metadata, so
that `check_fields(self)` in the dataclass's `__post_init__` rejects a bad value set in code or by
a preset, naming the class and the field (`TrainConfig: lr must be > 0, got -1.0`), and cli.py
makes one command-line flag per field from the same declaration. Every float must be finite; ints
are ints (bools are not); `X | None` fields also take None.

Follows: the standard library's `dataclasses.field(metadata=...)`. Deliberately does not: know
about the command line (cli.py does), read config files or environment variables, or check
relations between fields (a dataclass's `__post_init__` does that, e.g. n_embd divisible by n_head).
"""
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

_KEY = "tinygrad_gpt.range"
_HELP = "tinygrad_gpt.help"
TRUE = ("1", "true", "yes", "on")    # what a bool setting accepts as text
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Range:
    """Bounds of one setting: ge/gt/le/lt (any may be None), allowed `choices`, `flag`=exposed."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    flag: bool = True

    def problem(self, value):
        """What is wrong with the (already typed) `value`, or None if it is in range."""
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, numbers.Real) and not math.isfinite(value):
            return "must be a finite number"
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            return None
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            return f"must be {self.describe()}"
        return None

    def describe(self):
        parts = [f"{word} {bound:g}" for bound, word in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="),
                                                          (self.lt, "<")) if bound is not None]
        return " and ".join(parts)


def setting(default=MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, flag=True,
            default_factory=MISSING, help=None):
    """A dataclass field with a declared range: `lr: float = setting(1e-3, gt=0)`.

    flag=False keeps a field out of the command line (e.g. vocab_size, which the data decides);
    help is the flag's description, for a field whose name does not say what it is.
    """
    rng = Range(ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices) if choices is not None else None, flag=flag)
    return field(default=default, default_factory=default_factory, metadata={_KEY: rng, _HELP: help})


def range_of(f):
    """The Range a field declared (an empty one for a plain field)."""
    return f.metadata.get(_KEY, Range())


def base_type(tp):
    """(type, optional): int | None -> (int, True); float -> (float, False)."""
    if isinstance(tp, (types.UnionType,)) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def typed(tp, value):
    """`value` converted to the field type `tp` (int, float, bool, str), or ValueError saying why."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    return value


def check_value(name, tp, rng, value):
    """Raise ValueError(f"{name} ...") unless `value` has type `tp` and lies in `rng`."""
    base, optional = base_type(tp)
    if value is None:
        if optional:
            return
        raise ValueError(f"{name} must be set, got None")
    kinds = {int: numbers.Integral, float: numbers.Real, bool: bool, str: str}
    if base in kinds:
        # numpy integers and floats count as ints and floats; bools are not numbers here
        ok = isinstance(value, kinds[base]) and (base is bool or not isinstance(value, (bool, np.bool_)))
        if not ok:
            raise ValueError(f"{name} must be {base.__name__}, got {value!r} ({type(value).__name__})")
        if base is float:
            value = float(value)
    problem = rng.problem(value)
    if problem:
        raise ValueError(f"{name} {problem}, got {value!r}")


def check_fields(obj):
    """Check every field of dataclass instance `obj` against its declared type and range.

    Called from __post_init__; the message names the class and the field.
    """
    for f in fields(obj):
        try:
            check_value(f.name, f.type, range_of(f), getattr(obj, f.name))
        except ValueError as exc:
            raise ValueError(f"{type(obj).__name__}: {exc}") from None


def help_of(f):
    """The description a field declared with setting(help=...), or None."""
    return f.metadata.get(_HELP)
