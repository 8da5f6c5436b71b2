"""The gradient tour in docs/ cannot go stale: every claim it makes about the code is checked here.

For every Markdown file in docs/, and the README:
  * every inline code span naming code as `path/to/file.py:Symbol` (or `file.py:Class.method`)
    resolves: the file exists and `ast` finds the symbol (a module-level def, class or assignment,
    then members of a class, nested by dots), so renaming a function breaks this test;
  * every ```python block runs standalone in a subprocess from the repository root (exit 0, within
    a timeout), and every `worst relative error X (tol Y)` it prints (the str of a GradcheckResult)
    has X <= Y;
  * every chapter (01-08, and 05b between 05 and 06) has at least one block that prints such a line;
  * every ```text block is a verbatim excerpt of the code (its lines, each stripped of its
    indentation, appear in that order and unbroken in one source file of the repository), so a
    quoted line that the code no longer has breaks this test; printed output goes in ```console;
  * every linked image exists, and every relative link resolves to an existing file.
Each check has a control on a made-up document that must be reported failing, so the checker is
known to be able to fail. A failure names the file and the line of the span, block or link.

Deliberately does not: check the anchors (#section) of links, run ```bash, ```text or ```console
blocks, or check which file an excerpt comes from (any source file that holds it will do).
"""
import ast
import os
import re
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# the README is held to the same rules: its snippets run, its links resolve
DOC_FILES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
# a chapter added between two others takes a letter (05b sorts after 05 and before 06), so that
# the chapters after it keep their numbers and every link to them stays valid
CHAPTER = re.compile(r"^(0[1-8][a-z]?)-.*\.md$")

REF = re.compile(r"([A-Za-z0-9_./-]+\.py):([A-Za-z_][A-Za-z0-9_.]*)")
# a code span may wrap onto the next line of its paragraph, never across a blank line
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
GRADCHECK_LINE = re.compile(r"worst relative error ([-+0-9.eE]+|nan|inf) \(tol ([-+0-9.eE]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
RUN_LANGUAGES = {"python", "py", "python3"}
BLOCK_TIMEOUT_S = 60
IMAGE_MAX_BYTES = 200 * 1024  # pictures are committed, so they stay small


# ---- parsing -------------------------------------------------------------------------------------
def split_markdown(text):
    """(prose, blocks): prose is [(line number, line)] outside fenced blocks; blocks is
    [(language, first code line number, code)] for every fenced block. Line numbers are 1-based."""
    prose, blocks = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, language = len(m.group(1)), m.group(2), m.group(3).lower()
        close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            j += 1
        blocks.append((language, i + 2, "\n".join(body) + "\n"))
        i = j + 1  # past the closing fence (an unclosed block runs to the end of the file)
    return prose, blocks


def _prose_text(text):
    """The document with every fenced block's lines blanked, so offsets still map to line numbers."""
    prose, _ = split_markdown(text)
    lines = [""] * len(text.split("\n"))
    for lineno, line in prose:
        lines[lineno - 1] = line
    return "\n".join(lines)


def _line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def code_refs(text):
    """[(line number, path, symbol)] for every `path.py:Symbol` in an inline code span outside fences."""
    prose = _prose_text(text)
    refs = []
    for span in INLINE_CODE.finditer(prose):
        for m in REF.finditer(span.group(2)):
            refs.append((_line_of(prose, span.start(2) + m.start()), m.group(1), m.group(2).rstrip(".")))
    return refs


def python_blocks(text):
    """[(first code line number, code)] of every block that the doc test runs."""
    _, blocks = split_markdown(text)
    return [(lineno, code) for language, lineno, code in blocks if language in RUN_LANGUAGES]


def excerpt_blocks(text):
    """[(first code line number, code)] of every ```text block (a quoted excerpt of the code)."""
    _, blocks = split_markdown(text)
    return [(lineno, code) for language, lineno, code in blocks if language == "text"]


SOURCE_SUFFIXES = {".py", ".c", ".cu", ".h", ".sh", ".toml", ".cfg", ".ini"}


def _stripped(text):
    return "\n".join(line.strip() for line in text.strip("\n").split("\n"))


@lru_cache(maxsize=None)
def _sources(root=ROOT):
    """The repository's source files, each with every line stripped of its indentation."""
    files = []
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).parts
        if path.suffix in SOURCE_SUFFIXES and path.is_file() and not any(
                part.startswith(".") or part in ("build", "__pycache__") for part in rel):
            files.append("\n" + _stripped(path.read_text(encoding="utf-8", errors="replace")) + "\n")
    return tuple(files)


def excerpt_problem(code, root=ROOT):
    """None if `code` appears verbatim (indentation aside) in a source file, else what is wrong."""
    want = "\n" + _stripped(code) + "\n"
    if any(want in source for source in _sources(root)):
        return None
    first = _stripped(code).split("\n")[0]
    return (f"this ```text excerpt is not in any source file (first line: {first!r}); "
            f"quote the code as it is now, or put printed output in a ```console block")


def links(text, pattern):
    """[(line number, target)] for every link matching `pattern` outside fenced blocks and code spans."""
    prose = INLINE_CODE.sub(lambda m: "\n" * m.group(0).count("\n"), _prose_text(text))  # keep the lines
    return [(_line_of(prose, m.start()), m.group(1)) for m in pattern.finditer(prose)]


def is_external(target):
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None or target.startswith("#")


# ---- resolving ---------------------------------------------------------------------------------
def _names_in(body):
    """name -> node for the defs, classes and assignments of a module or class body (including those
    inside module-level if / try blocks, e.g. an optional import's fallback)."""
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Name):
                        names[t.id] = node
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            inner = list(node.body) + list(getattr(node, "orelse", [])) + list(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                inner += handler.body
            names.update(_names_in(inner))
    return names


@lru_cache(maxsize=None)
def _parse(path):
    return ast.parse(path.read_text(), filename=str(path))


def resolve(path, symbol, root=ROOT):
    """None if `path:symbol` names real code, else a sentence saying what is missing."""
    file = root / path
    if not file.is_file():
        return f"no file {path}"
    body = _parse(file).body
    node = None
    walked = []
    for part in symbol.split("."):
        if node is not None and not isinstance(node, ast.ClassDef):
            return f"{path}: {'.'.join(walked)} is not a class, so it has no member {part!r}"
        names = _names_in(body)
        if part not in names:
            where = f"class {'.'.join(walked)}" if walked else "module level"
            return f"{path}: no {part!r} at {where} (ast: def, class or assignment)"
        node = names[part]
        walked.append(part)
        body = node.body if isinstance(node, ast.ClassDef) else []
    return None


# ---- running -----------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def run_block(code):
    """(returncode, stdout, stderr) of `code` run by this Python from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {BLOCK_TIMEOUT_S} s"
    return proc.returncode, proc.stdout, proc.stderr


def gradcheck_lines(stdout):
    """[(X, Y)] for every `worst relative error X (tol Y)` printed."""
    return [(float(x), float(y)) for x, y in GRADCHECK_LINE.findall(stdout)]


def block_problems(code):
    """[] if the block runs, exits 0 and every printed gradient check is within its tolerance."""
    rc, out, err = run_block(code)
    if rc != 0:
        status = "did not finish" if rc is None else f"exited {rc}"
        return [f"{status}; stderr tail:\n{err[-2000:]}"]
    problems = []
    for x, y in gradcheck_lines(out):
        if not x <= y:  # a NaN error fails too
            problems.append(f"printed worst relative error {x:.3e} > tol {y:.0e}")
    return problems


def chapter_problem(text):
    """None if some ```python block of a chapter exits 0 and prints a gradient check line."""
    blocks = python_blocks(text)
    for _, code in blocks:
        rc, out, _ = run_block(code)
        if rc == 0 and gradcheck_lines(out):
            return None
    return (f"none of its {len(blocks)} ```python blocks printed a 'worst relative error X (tol Y)' "
            f"line (print(gradcheck(...)))")


def missing_target(doc, target):
    """None if the relative link `target` in the Markdown file `doc` points to an existing file."""
    file = (doc.parent / target.split("#")[0]).resolve()
    return None if file.exists() else f"{target} points to nothing ({file})"


def _doc_id(path):
    return path.name


def _blocks():
    for doc in DOC_FILES:
        for lineno, code in python_blocks(doc.read_text()):
            yield pytest.param(doc, lineno, code, id=f"{doc.name}:{lineno}")


def _refs():
    for doc in DOC_FILES:
        for lineno, path, symbol in code_refs(doc.read_text()):
            yield pytest.param(doc, lineno, path, symbol, id=f"{doc.name}:{lineno}:{path}:{symbol}")


def _links(pattern):
    for doc in DOC_FILES:
        for lineno, target in links(doc.read_text(), pattern):
            if not is_external(target):
                yield pytest.param(doc, lineno, target, id=f"{doc.name}:{lineno}:{target}")


# ---- the tour itself -----------------------------------------------------------------------------
def test_tour_exists():
    assert (DOCS / "README.md").is_file(), "docs/README.md (the table of contents) is missing"
    assert any(CHAPTER.match(d.name) for d in DOC_FILES), "docs/ has no chapter 01-08"


def test_every_markdown_file_in_docs_is_a_chapter_or_the_contents():
    """A chapter named outside CHAPTER would silently skip the gradient-check rule here and the
    notebook run (tests/docs/test_notebooks.py selects its chapters with CHAPTER too)."""
    others = [d.name for d in DOCS.glob("*.md") if d.name != "README.md" and not CHAPTER.match(d.name)]
    assert not others, f"docs/ files that are neither README.md nor a chapter (NN-name.md, NNx-name.md): {others}"
    assert CHAPTER.match("05b-the-modern-gpt.md") and not CHAPTER.match("05bb-x.md") and not CHAPTER.match("5-x.md")


@pytest.mark.parametrize("doc, lineno, path, symbol", list(_refs()))
def test_code_reference_resolves(doc, lineno, path, symbol):
    problem = resolve(path, symbol)
    assert problem is None, f"docs/{doc.name} line {lineno}: `{path}:{symbol}`: {problem}"


@pytest.mark.parametrize("doc, lineno, code", list(_blocks()))
def test_python_block_runs_and_gradchecks_pass(doc, lineno, code):
    problems = block_problems(code)
    assert not problems, f"docs/{doc.name}, block at line {lineno}: " + "; ".join(problems)


def _excerpts():
    for doc in DOC_FILES:
        for lineno, code in excerpt_blocks(doc.read_text()):
            yield pytest.param(doc, lineno, code, id=f"{doc.name}:{lineno}")


@pytest.mark.parametrize("doc, lineno, code", list(_excerpts()))
def test_quoted_excerpt_is_in_the_code(doc, lineno, code):
    problem = excerpt_problem(code)
    assert problem is None, f"{doc.name}:{lineno}: {problem}"


@pytest.mark.parametrize("doc", [d for d in DOC_FILES if CHAPTER.match(d.name)], ids=_doc_id)
def test_chapter_prints_a_gradient_check(doc):
    problem = chapter_problem(doc.read_text())
    assert problem is None, f"docs/{doc.name}: {problem}"


@pytest.mark.parametrize("doc, lineno, target", list(_links(IMAGE)))
def test_image_exists(doc, lineno, target):
    problem = missing_target(doc, target)
    assert problem is None, (f"docs/{doc.name} line {lineno}: image {problem}; make the pictures with "
                             f"`python docs/make_figures.py --out docs/images`")
    size = (doc.parent / target.split("#")[0]).stat().st_size
    assert size < IMAGE_MAX_BYTES, (f"docs/{doc.name} line {lineno}: image {target} is {size / 1024:.0f} KiB, "
                                    f"over the {IMAGE_MAX_BYTES // 1024} KiB a committed picture may take")


@pytest.mark.parametrize("doc, lineno, target", list(_links(LINK)))
def test_relative_link_resolves(doc, lineno, target):
    problem = missing_target(doc, target)
    assert problem is None, f"docs/{doc.name} line {lineno}: link {problem}"


# ---- controls: the checker must be able to fail ----------------------------------------------------
CONTROL_DOC = textwrap.dedent('''\
    # A made-up chapter

    The engine is `tinygrad_gpt/tensor.py:Tensor.backward`, the checker `tinygrad_gpt/gradcheck.py:gradcheck`.
    Renamed code: `tinygrad_gpt/tensor.py:Tensor.backwards_renamed`, `tinygrad_gpt/no_such_file.py:Tensor`,
    and `tinygrad_gpt/tensor.py:no_grad.inner` (a function has no members); a span may wrap, `as
    in tinygrad_gpt/tensor.py:Tensor.backward_wrapped`.

    ![a picture nobody made](images/no_such_picture.png) and [a chapter nobody wrote](99-nothing.md).

    ```text
    `tinygrad_gpt/tensor.py:NotCheckedInsideAFence`
    ```

    ```python
    import numpy as np
    from tinygrad_gpt.tensor import Tensor, Function
    from tinygrad_gpt.gradcheck import gradcheck

    class Square(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.x = x
            return x * x

        @staticmethod
        def backward(ctx, dout):
            return dout * ctx.x  # wrong on purpose: d(x^2)/dx is 2x

    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    print(gradcheck(lambda x: Square.apply(x), [x]))
    ```
    ''')


def test_control_unresolved_references_are_reported():
    refs = code_refs(CONTROL_DOC)
    assert [(p, s) for _, p, s in refs] == [
        ("tinygrad_gpt/tensor.py", "Tensor.backward"), ("tinygrad_gpt/gradcheck.py", "gradcheck"),
        ("tinygrad_gpt/tensor.py", "Tensor.backwards_renamed"), ("tinygrad_gpt/no_such_file.py", "Tensor"),
        ("tinygrad_gpt/tensor.py", "no_grad.inner"), ("tinygrad_gpt/tensor.py", "Tensor.backward_wrapped")]
    verdicts = [resolve(p, s) for _, p, s in refs]
    assert verdicts[:2] == [None, None]
    assert "no 'backwards_renamed' at class Tensor" in verdicts[2]
    assert "no file tinygrad_gpt/no_such_file.py" in verdicts[3]
    assert "not a class" in verdicts[4]
    assert "no 'backward_wrapped' at class Tensor" in verdicts[5]
    assert [lineno for lineno, _, _ in refs] == [3, 3, 4, 4, 5, 6]  # the line numbers a failure names


def test_control_wrong_gradient_is_reported():
    blocks = python_blocks(CONTROL_DOC)
    assert len(blocks) == 1 and blocks[0][0] == 15
    lineno, code = blocks[0]
    problems = block_problems(code)
    assert len(problems) == 1 and "> tol 1e-06" in problems[0], problems
    # the same block with the backward fixed passes, so it is the gradient that failed
    assert block_problems(code.replace("dout * ctx.x  #", "2 * dout * ctx.x  #")) == []


def test_control_chapter_without_a_gradient_check_is_reported():
    assert chapter_problem(CONTROL_DOC) is None
    silent = "# A chapter\n\n```python\nprint('loss 1.23')\n```\n\n```bash\necho 'worst relative error 0 (tol 1)'\n```\n"
    assert "none of its 1 ```python blocks printed" in chapter_problem(silent)


def test_control_failing_block_is_reported():
    assert "exited 1" in block_problems("raise SystemExit(1)\n")[0]
    assert "ZeroDivisionError" in block_problems("1 / 0\n")[0]
    assert "nan > tol" in block_problems("print('worst relative error nan (tol 1e-06)')\n")[0]


def test_control_missing_image_and_link_are_reported(tmp_path):
    doc = tmp_path / "01-made-up.md"
    doc.write_text(CONTROL_DOC)
    (images,) = links(CONTROL_DOC, IMAGE)
    (chapter,) = links(CONTROL_DOC, LINK)
    assert images == (8, "images/no_such_picture.png") and chapter == (8, "99-nothing.md")
    assert "no_such_picture.png points to nothing" in missing_target(doc, images[1])
    assert "99-nothing.md points to nothing" in missing_target(doc, chapter[1])
    (tmp_path / "99-nothing.md").write_text("# written after all\n")
    assert missing_target(doc, chapter[1] + "#a-section") is None
    assert is_external("https://example.com/x.png") and is_external("#section") and not is_external("01-engine.md")


def test_control_stale_excerpt_is_reported(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f(x):\n    y = x * 2\n    return y + 1\n")
    assert excerpt_problem("    y = x * 2\n    return y + 1\n", root=tmp_path) is None  # indentation aside
    assert "not in any source file" in excerpt_problem("    y = x * 3\n", root=tmp_path)  # a changed line
    assert excerpt_problem("    return y + 1\n    y = x * 2\n", root=tmp_path) is not None  # order matters
    assert excerpt_problem("y = x\n", root=tmp_path) is not None  # a part of a line is not a line
