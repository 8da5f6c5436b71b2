"""The command line of every script: flags made from the config dataclasses, --help, exit statuses.

`add_flags(parser, TrainConfig)` makes one flag per field (`--lr`) from the field's declaration in
settings.py: its parser is built from the field's type (int, float, bool, str, `X | None`) and its
declared range, so a bad flag is refused by argparse before any work starts, naming the flag, with
exit status 2; `X | None` fields also take "none". Scripts list no field by hand: a new field of a
config becomes a flag of every script that uses it. `HelpFormatter` shows the script's usage
examples and every default. `run_main` runs a script's main with the process set up as the loops
want it (`backend.tune_host_allocator`) and gives every script the same exit statuses: 0 done,
1 runtime error, 2 usage error, 3 non-finite loss (the script returns it), 4 a --target-val-loss
not reached before the run's budget (iterations) ended, 130 SIGINT, 143 SIGTERM.

Follows: `argparse` `type=` callables. Deliberately does not: read config files or environment
variables (settings come from flags and presets only).
"""
import argparse
import sys
from dataclasses import MISSING, fields

from tinygrad_gpt.settings import Range, base_type, check_value, help_of, range_of, typed


def flag_name(field_name, prefix=""):
    return "--" + (prefix + field_name).replace("_", "-")


def parser_for(tp, rng=Range(), name="value"):
    """An argparse `type=` callable: text -> typed value in `rng`, else ArgumentTypeError."""
    base, optional = base_type(tp)

    def parse(text):
        if optional and text.strip().lower() == "none":
            return None
        try:
            value = typed(base, text)
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
    return [f.name for f in fields(cls) if range_of(f).flag and f.init and f.name not in skip
            and base_type(f.type)[0] in (int, float, bool, str)]


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
        rng = range_of(f)
        base, _ = base_type(f.type)
        default = argparse.SUPPRESS
        if use_defaults and f.default is not MISSING:
            default = f.default
        kwargs = dict(type=parser_for(f.type, rng, f.name), default=default, dest=prefix + f.name)
        if rng.choices is not None:
            kwargs["metavar"] = "{" + ",".join(map(str, rng.choices)) + "}"
        elif base is bool:
            kwargs["metavar"] = "{true,false}"
        parts = [text for text in (help_of(f), rng.describe()) if text]
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
EXIT_TARGET_MISSED = 4  # a training run with a target loss ended its budget above it
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
    (`status_of`); a bug keeps its traceback. The process's allocator is tuned first (glibc's malloc
    thresholds: see backend.tune_host_allocator), as every script and benchmark wants it."""
    from tinygrad_gpt.backend import tune_host_allocator
    try:
        tune_host_allocator()
        return main()
    except (Exception, KeyboardInterrupt) as exc:
        status = status_of(exc)
        if status is None:
            raise
        print(status[1], file=sys.stderr)
        return status[0]
