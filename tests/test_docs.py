"""The documentation (README.md and the mkdocs site in docs/) stays true: its code runs, its commands parse, its
links resolve and the site builds.

Conventions for the Markdown files (README.md, docs/*.md):

- Every fenced block names its language: ``python``, ``bash``, ``toml`` or ``text``.
- ``python`` blocks run: the blocks of one page in page order, in one namespace, in a fresh temporary folder.
  They must be cheap (seconds: tiny data such as ``create_dataset("multidigits", n_train=64, n_val=32,
  n_test=32, size=16)``, one epoch). A block that must not run (it trains for minutes, needs a server) has the
  HTML comment ``<!-- not run: WHY -->`` on the line before its fence.
- ``<!-- file: PATH -->`` on the line before a block writes that block to PATH in that temporary folder before
  the page's python blocks run: a study file or a ``tasks.toml`` the python blocks then use.
- A ``python`` block marked not run must still compile.
- ``toml`` blocks parse.
- ``bash`` blocks are not run, but every ``nas-mtl`` command in them is parsed by the real command-line parser
  (``nas_mtl.cli.build_parser().parse_args``), so a renamed sub-command or flag fails here. Write commands whole
  (no ``...``); a ``machine$`` prompt, ``for ...; do CMD & done``, ``&&`` chains and ``#`` comments are fine.
- Every relative link (file and ``#anchor``) resolves, and every repository path a code span names (such as
  ``studies/x.toml`` or ``nas_mtl/x.py``) exists; ``nas_mtl/NAME/`` may be a package or the module ``NAME.py``.
- README.md stays a front page (under 150 lines) and holds the test command ``.ci/run`` runs.
- ``mkdocs build --strict`` passes (skipped, saying so, where mkdocs is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 150
LANGUAGES = ("python", "bash", "toml", "text")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not run|file):\s*(?P<arg>.*?)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?:nas_mtl|studies|search_spaces|benchmarks|tests|docs|\.ci)/[\w./-]*")
SEPARATORS = {";", "&", "&&", "|", "||"}
SHELL_WORDS = {"do", "then", "else", "time", "exec"}


@dataclass(frozen=True)
class Block:
    """A fenced code block of ``page``: its language, text, the line of its first text line, and its marker."""

    page: Path
    lang: str
    text: str
    line: int
    marker: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = opening["indent"]
        assert not indent, f"{page.relative_to(ROOT)}:{i + 1}: mkdocs renders an indented fence as text; unindent it"
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: fence never closed"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        text = "\n".join(lines[i + 1 : end])
        kind_arg = (marker["kind"], marker["arg"]) if marker else None
        found.append(Block(page, opening["lang"], text + "\n", i + 2, kind_arg))
        i = end + 1
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced blocks (links and code spans are read from this)."""
    out, inside = [], False
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        out.append("" if inside else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page), re.MULTILINE)}


def nas_mtl_commands(block: Block) -> list[list[str]]:
    """The argument lists of the ``nas-mtl`` commands in a shell block (what follows ``nas-mtl``)."""
    commands = []
    for line in block.text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                segment.append(token)
                continue
            if "nas-mtl" in segment:
                start = segment.index("nas-mtl")
                lead = segment[:start]
                assert all(w in SHELL_WORDS or w.endswith("$") or re.fullmatch(r"\w+=\S*", w) for w in lead), (
                    f"{block.where}: cannot tell what runs nas-mtl in {line!r}"
                )
                commands.append(segment[start + 1 :])
            segment = []
    return commands


def test_every_fence_names_its_language():
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in LANGUAGES, f"{block.where}: fence language {block.lang!r}; use one of {LANGUAGES}"


def _runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" and b.marker is None for b in blocks(p))]


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """The page's python blocks, in order and in one namespace, in a temporary folder holding its file blocks."""
    monkeypatch.chdir(tmp_path)
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.marker and block.marker[0] == "file":
            path = tmp_path / block.marker[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
    namespace: dict = {"__name__": "__docs__"}
    for block in page_blocks:
        if block.lang == "python" and block.marker is None:
            source = "\n" * (block.line - 1) + block.text  # tracebacks name the page's own line numbers
            exec(compile(source, str(block.page.relative_to(ROOT)), "exec"), namespace)


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its sub-command parsers without prefix matching: a flag renamed from ``--warm-start`` to
    ``--warm-start-groups`` must fail, not be read as an abbreviation."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _exact(sub)
    return parser


def test_python_blocks_not_run_compile():
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "python" and block.marker and block.marker[0] == "not run":
                compile("\n" * (block.line - 1) + block.text, str(page.relative_to(ROOT)), "exec")


def test_nas_mtl_commands_parse(capsys):
    from nas_mtl.cli import build_parser

    parser = _exact(build_parser())
    checked, bad = 0, []
    for page in PAGES:
        for block in blocks(page):
            if block.lang != "bash":
                continue
            for argv in nas_mtl_commands(block):
                checked += 1
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    why = capsys.readouterr().err.strip().splitlines()[-1:]
                    bad.append(f"{block.where}: nas-mtl {shlex.join(argv)}\n    {' '.join(why)}")
    assert not bad, "commands the parser refuses:\n" + "\n".join(bad)
    assert checked >= 20, f"only {checked} nas-mtl commands found: is the block parser still finding them?"


def test_toml_blocks_parse():
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "toml":
                try:
                    tomllib.loads(block.text)
                except tomllib.TOMLDecodeError as err:
                    pytest.fail(f"{block.where}: {err}")


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no {file})")
            elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {path.name})")
    assert not bad, "links that do not resolve:\n" + "\n".join(bad)


def test_repository_paths_named_exist():
    bad = []
    for page in PAGES:
        for span in CODE_SPAN.findall(prose(page)):
            if not REPO_PATH.fullmatch(span):
                continue
            path = ROOT / span
            if not (path.exists() or (span.endswith("/") and path.with_suffix(".py").is_file())):
                bad.append(f"{page.relative_to(ROOT)}: `{span}`")
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


def test_readme_is_a_front_page_with_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    lines = readme.count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"
    ci_test = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    readme_bash = [line for b in blocks(ROOT / "README.md") if b.lang == "bash" for line in b.text.splitlines()]
    assert ci_test and all(line in readme_bash for line in ci_test), f".ci/run's test command {ci_test} not in README"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason='not installed: mkdocs (pip install -e ".[docs]")'
)
def test_mkdocs_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
