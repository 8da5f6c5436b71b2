"""JSON-lines files (one JSON value per line): the one reader of metrics.jsonl, conversations,
compare prompts and judgments, with errors that name the file and the line.

Follows: the JSON Lines convention (UTF-8, one value per line, blank lines ignored). Deliberately
does not: check what a value holds (each caller checks its own records) or write (metrics and
judgments are appended by their writers, each with its own flush / fsync rule).
"""
import json
from pathlib import Path


def read_json_lines(path, where=None, cut_last_line_ok=False):
    """[(line number, value)] of the JSON-lines file `path`, blank lines skipped.

    where(lineno): the prefix an error names (default "PATH:LINENO"). A line that is not JSON is a
    ValueError "<where>: not JSON (<reason> at column C)"; with `cut_last_line_ok`, a last line
    without its newline that is not JSON (an append a crash cut short, never acknowledged) is left
    out instead.
    """
    path = Path(path)
    where = where or (lambda lineno: f"{path}:{lineno}")
    lines = path.read_text(encoding="utf-8").split("\n")
    values = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            if cut_last_line_ok and lineno == len(lines):
                continue
            raise ValueError(f"{where(lineno)}: not JSON ({exc.msg} at column {exc.colno})") from None
    return values
