"""The gradient tour as notebooks: every chapter, opened through jupytext from its Markdown (the one
source; no notebook is committed), runs top to bottom in a real Jupyter kernel (ipykernel, through
nbclient), with no cell raising and the chapter's gradient checks within tolerance.

Follows: jupytext's Markdown format (```python blocks become code cells, the rest Markdown) and
nbclient's executor, as `jupyter nbconvert --execute` uses it. The control converts a chapter with
one broken cell and must report it.
"""
import re

import jupytext
import nbclient
import pytest

from conftest import REPO
from test_docs import CHAPTER

CHAPTERS = sorted(p for p in (REPO / "docs").glob("*.md") if CHAPTER.match(p.name))  # 01-..., 05b-..., 08-...
GRADCHECK = re.compile(r"worst relative error ([0-9.eE+-]+|nan|inf) \(tol ([0-9.eE+-]+)\)")
CELL_TIMEOUT_S = 300


def execute(notebook):
    """Run `notebook` in a fresh python3 kernel from the repository root; returns it with outputs."""
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(REPO)}})
    return client.execute()


def printed(notebook):
    """All text the code cells printed (streams and text results)."""
    out = []
    for cell in notebook.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "".join(out)


def test_every_chapter_is_found():
    assert len(CHAPTERS) >= 9, CHAPTERS


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_as_a_notebook_in_a_real_kernel(chapter):
    notebook = jupytext.read(chapter)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, f"{chapter.name}: no ```python block became a code cell"
    done = execute(notebook)  # raises CellExecutionError, with the cell and traceback, on any error
    checks = [(float(x), float(y)) for x, y in GRADCHECK.findall(printed(done))]
    assert checks, f"{chapter.name}: no cell printed a gradient check"
    bad = [(x, y) for x, y in checks if not x <= y]  # a NaN error fails too
    assert not bad, f"{chapter.name}: gradient checks over tolerance: {bad}"


def test_control_a_broken_cell_is_reported(tmp_path):
    chapter = tmp_path / "broken.md"
    chapter.write_text("# broken\n\n```python\nprint('fine')\n```\n\n```python\n1 / 0\n```\n", encoding="utf-8")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="ZeroDivisionError"):
        execute(jupytext.read(chapter))
