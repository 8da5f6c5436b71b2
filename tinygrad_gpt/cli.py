"""Dataclass fields as command-line flags: each field's range is declared beside it, checked twice.

A config dataclass (`GPTConfig`, `TrainConfig`, `PPOConfig`, ...) declares a field with
`setting(default, gt=0)` instead of a bare default. The range travels in the field's metadata, so
that
  - `check_fields(self)` in the dataclass's `__post_init__` rejects a bad value set in code or by a
    preset, naming the class and the field (`TrainConfig: lr must be > 0, got -1.0`), and
  - `add_flags(parser, TrainConfig)` makes one flag per field (`--lr`), whose parser is built
    from the field's type (int, float, bool, str, `X | None`) and the same range, so a bad flag
    is refused by argparse before any work starts, naming the flag, with exit status 2.
Every float must be finite; ints are ints (bools are not); `X | None` fields also take "none".
Scripts list no field by hand: a new field of a config becomes a flag of every script that uses it.
`run_main` gives every script the same exit statuses: 0 done, 1 runtime error, 2 usage error,
3 non-finite loss (the script returns it), 130 SIGINT, 143 SIGTERM.

Follows: the standard library's `dataclasses.field(metadata=...)` and `argparse` `type=`
callables. Deliberately does not: read config files or environment variables, or check relations
between fields (a dataclass's `__post_init__` does that, e.g. n_embd divisible by n_head).
"""
import argparse
import math
import numbers
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

_KEY = "tinygrad_gpt.range"
_HELP = "tinygrad_gpt.help"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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


def _range(f):
    return f.metadata.get(_KEY, Range())


def _base_type(tp):
    """(type, optional): int | None -> (int, True); float -> (float, False)."""
    if isinstance(tp, (types.UnionType,)) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _typed(tp, value):
    """`value` converted to the field type `tp` (int, float, bool, str), or ValueError saying why."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
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
    base, optional = _base_type(tp)
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
            check_value(f.name, f.type, _range(f), getattr(obj, f.name))
        except ValueError as exc:
            raise ValueError(f"{type(obj).__name__}: {exc}") from None


def flag_name(field_name, prefix=""):
    return "--" + (prefix + field_name).replace("_", "-")


def parser_for(tp, rng=Range(), name="value"):
    """An argparse `type=` callable: text -> typed value in `rng`, else ArgumentTypeError."""
    base, optional = _base_type(tp)

    def parse(text):
        if optional and text.strip().lower() == "none":
            return None
        try:
            value = _typed(base, text)
            check_value(name, tp, rng, value)
        except ValueError as exc:
            msg = str(exc)
            raise argparse.ArgumentTypeError(msg[len(name) + 1:] if msg.startswith(name + " ") else msg) from None
        return value

    parse.__name__ = getattr(base, "__name__", "value")  # argparse names the type in some messages
    return parse


def bounded(tp, **bounds):
    """A flag parser for a script option that is not a dataclass field: `type=bounded(int, ge=1)`."""
    return parser_for(tp, Range(**bounds))


def flag_fields(cls, skip=()):
    """Names of the fields of dataclass `cls` that are command-line flags."""
    return [f.name for f in fields(cls) if _range(f).flag and f.init and f.name not in skip
            and _base_type(f.type)[0] in (int, float, bool, str)]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as a person reads it: the script's docstring (its usage examples) kept as written,
    and every option's default shown, once: "(default: X)" is added unless the help already says
    what the default is or there is none to show (None, a store_true flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def show_value(value):
    """A setting's value as its flag takes it: none, true/false, 0.001, 12, cpu."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_flags(parser, cls, *, prefix="", skip=(), use_defaults=False, title=None, presets=None):
    """One flag per field of dataclass `cls` (those with flag=True, not in `skip`).

    The flag's dest is the field name (with `prefix`). A flag not given leaves no attribute on the
    namespace (a preset or the dataclass fills the field in) unless use_defaults, when it holds
    the field's default. An `X | None` field's flag also takes "none". The help names the range,
    the field's default and, given `presets` ({preset name: {field: value}}), each preset's value
    where it differs from that default.
    Returns the names of the fields that got a flag.
    """
    group = parser.add_argument_group(title) if title else parser
    names = flag_fields(cls, skip)
    for f in fields(cls):
        if f.name not in names:
            continue
        rng = _range(f)
        base, _ = _base_type(f.type)
        default = argparse.SUPPRESS
        if use_defaults and f.default is not MISSING:
            default = f.default
        kwargs = dict(type=parser_for(f.type, rng, f.name), default=default, dest=prefix + f.name)
        if rng.choices is not None:
            kwargs["metavar"] = "{" + ",".join(map(str, rng.choices)) + "}"
        elif base is bool:
            kwargs["metavar"] = "{true,false}"
        parts = [text for text in (f.metadata.get(_HELP), rng.describe()) if text]
        if f.default is not MISSING:
            parts.append(f"default {show_value(f.default)}")
        if presets:
            changed = [f"{name} {show_value(values[f.name])}" for name, values in presets.items()
                       if f.name in values and values[f.name] != f.default]
            if changed:
                parts.append("presets: " + ", ".join(changed))
        if parts:
            kwargs["help"] = "; ".join(parts)
        group.add_argument(flag_name(f.name, prefix), **kwargs)
    return names


def given_flags(parser, argv=None):
    """{dest: flag} of the options given on the command line `argv` (default sys.argv[1:]).

    Parsed by a copy of `parser` whose defaults are all suppressed, so argparse's own matching
    (abbreviations, --flag=value) decides, and a flag given with its default value still counts.
    For scripts that refuse or warn about flags a mode does not use.
    """
    import copy
    probe = copy.deepcopy(parser)
    names = {}
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        if action.option_strings:
            names[action.dest] = max(action.option_strings, key=len)
    given = vars(probe.parse_args(argv))
    return {dest: names[dest] for dest in given if dest in names}


def values_from(args, names, prefix=""):
    """{field: value} of the flags in `names` that are on the namespace (given, or defaulted)."""
    return {name: getattr(args, prefix + name) for name in names if hasattr(args, prefix + name)}


# ---- exit statuses, the same for every script ------------------------------------------------------
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_NONFINITE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 3, 130, 143
_RESULT_STATUS = {"done": EXIT_OK, "interrupted": EXIT_SIGINT, "terminated": EXIT_SIGTERM}


def exit_status(result):
    """The exit status of a training run's result: "done" 0, "interrupted" 130, "terminated" 143."""
    return _RESULT_STATUS[result]


def status_of(exc):
    """(exit status, one-line message) for an exception that escaped a script, or None for a bug.

    Bad input (ValueError, including CheckpointError and TokenizerFileError; a missing file or
    directory; a missing optional package, also when a library reports it as another error raised
    from the ImportError, as `--device cuda` without cupy does) is a usage error, 2. Other OS
    errors (disk full, I/O) and RuntimeError are runtime errors, 1. Ctrl-C is 130. Anything else is
    a bug (None: the caller keeps its traceback). run_main uses it, and so does a data-parallel run
    to choose the status it aborts every rank with.
    """
    if isinstance(exc, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ImportError)) \
            or isinstance(exc.__cause__, ImportError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, (OSError, RuntimeError, MemoryError)):
        return EXIT_RUNTIME, f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT, "aborted"
    return None


def run_main(main):
    """Call a script's main() and turn what escapes it into a one-line message and an exit status
    (`status_of`); a bug keeps its traceback."""
    try:
        return main()
    except (Exception, KeyboardInterrupt) as exc:
        status = status_of(exc)
        if status is None:
            raise
        print(status[1], file=sys.stderr)
        return status[0]
