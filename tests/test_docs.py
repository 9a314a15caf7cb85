"""The user docs stay true: README.md and docs/*.md links resolve, every `stori ...` command they show parses,
every `stori_pl.x.y` name they mention imports, and the README stays a short front door with CI's markers."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import jsonargparse
import pytest

from stori_pl.cli import LIGHTNING_COMMANDS, UTILITY_COMMANDS, run_command

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200
SHELL_FENCES = {"", "bash", "console", "sh", "shell"}  # info strings of code blocks that hold commands


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ------------------------------------------------------------------------------------------ markdown parsing
@dataclass
class Block:
    """A fenced code block: its info string, the line number (1-based) of its first content line, its lines."""

    info: str
    start: int
    lines: list[str]


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[Block]]:
    """``(prose lines with their numbers, fenced code blocks)``; fences are ``` or ~~~."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"\s*(```|~~~)\s*([\w+-]*)", line)
        if block is None and fence:
            block = Block(fence.group(2).lower(), number + 1, [])
        elif block is not None and fence and not fence.group(2):
            blocks.append(block)
            block = None
        elif block is not None:
            block.lines.append(line)
        else:
            prose.append((number, line))
    return prose, blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: rendered text, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # drops `*()/:,. and the like; keeps letters, digits, _ and -
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (duplicates get -1, -2, ... as on GitHub)."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\bsrc=\"([^\"]+)\"|^\[[^\]]+\]:\s*(\S+)")


def links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every Markdown link, image and ``<img src>`` outside code blocks and code spans."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    text = "\n".join(line for _, line in prose)
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    found = []
    for (number, _), line in zip(prose, text.split("\n")):
        line = re.sub(r"`[^`]*`", "``", line)
        found += [(number, next(g for g in m.groups() if g)) for m in LINK.finditer(line)]
    return found


# ----------------------------------------------------------------------------------------------- (a) links
def link_cases():
    return [pytest.param(path, number, target, id=f"{rel(path)}:{number}:{target}")
            for path in DOC_FILES for number, target in links(path)]


@pytest.mark.parametrize(("path", "number", "target"), link_cases())
def test_relative_links_resolve(path, number, target):
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    where = f"{rel(path)}:{number}: link {target!r}"
    assert dest.exists(), f"{where}: {dest} does not exist"
    assert REPO in dest.parents or dest == REPO, f"{where}: points outside the repository"
    if anchor:
        assert dest.suffix == ".md", f"{where}: anchor into a non-Markdown file"
        assert anchor in anchors(dest), f"{where}: no heading with anchor #{anchor} in {rel(dest)} " \
                                        f"(anchors: {sorted(anchors(dest))})"


def test_docs_pages_exist_and_readme_links_them():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in ("few_shot", "weighted_prompts", "retrieval", "interpretability", "datasets", "toy_world",
                 "architecture"):
        assert (REPO / "docs" / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md" in readme, f"README.md does not link docs/{page}.md"


def test_anchor_slugs_follow_github():
    assert github_slug("Preference retrieval (`stori retrieval-eval`, paper Table 3 / Figures 4–5)") == \
        "preference-retrieval-stori-retrieval-eval-paper-table-3--figures-45"
    assert github_slug("The `(phrase:w)` syntax") == "the-phrasew-syntax"
    assert github_slug("Re-training the tiny CLIP") == "re-training-the-tiny-clip"


# ------------------------------------------------------------------------------------------ (b) commands
def strip_comment(line: str) -> str:
    """Cut a shell comment: a ``#`` outside quotes at the start of a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Command lines of a shell block, ``\\``-continuations joined. When some lines start with ``$ ``, only
    those are commands (the rest is output)."""
    prompted = any(line.startswith("$ ") for line in block.lines)
    out, current, start = [], None, 0
    for offset, line in enumerate(block.lines):
        if current is None:
            if prompted and not line.startswith("$ "):
                continue
            current, start = (line[2:] if prompted else line), block.start + offset
        else:
            current += " " + line.strip()
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1]
            continue
        out.append((start, current))
        current = None
    return out


def stori_commands(line: str) -> list[list[str]]:
    """Argument lists of the ``stori ...`` commands in one shell line (after ``&&``, ``;``, ``do`` ...)."""
    lex = shlex.shlex(strip_comment(line), posix=True, punctuation_chars=";&|<>")
    lex.whitespace_split, lex.commenters = True, ""
    segments, current, redirect = [], [], False
    for token in lex:
        if token and set(token) <= set("<>"):
            redirect = True  # `> file`, `< file`: the next token is a file, not an argument
        elif redirect:
            redirect = False
        elif token and set(token) <= set(";&|"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    out = []
    for seg in segments:
        while seg and (seg[0] in ("do", "then", "time") or re.match(r"\w+=", seg[0])):
            seg = seg[1:]
        if seg and seg[0] == "stori":
            out.append(["1" if t.startswith("$") else t for t in seg[1:]])  # loop variables: a value
    return out


def command_cases():
    cases = []
    for path in DOC_FILES:
        for block in split_markdown(path.read_text(encoding="utf-8"))[1]:
            if block.info not in SHELL_FENCES:
                continue
            for number, line in logical_lines(block):
                try:
                    commands = stori_commands(line)
                except ValueError as err:  # unbalanced quotes: name the line
                    raise ValueError(f"{rel(path)}:{number}: {err}: {line}") from None
                cases += [pytest.param(path, number, argv, id=f"{rel(path)}:{number}:{' '.join(argv[:1])}")
                          for argv in commands]
    return cases


class _Parsed(Exception):
    """Raised by the intercepted parser once a command's main() has parsed its arguments."""


def _intercept(original):
    def parse_and_stop(self, *args, **kwargs):
        raise _Parsed(original(self, *args, **kwargs))
    return parse_and_stop


def parse_utility(name: str, args: list[str]) -> None:
    """Parse ``stori <name> args`` exactly as the command does: run its ``main()`` until its jsonargparse parser
    returns, then stop (``stori cache`` first splits off its ``--data.*`` / ``--model.*`` overrides there).
    A bad option raises argparse.ArgumentError."""
    with mock.patch.object(jsonargparse.ArgumentParser, "parse_args", _intercept(jsonargparse.ArgumentParser.parse_args)):
        try:
            run_command(name, args)
        except _Parsed:
            return
    raise AssertionError(f"stori {name}: main() returned without parsing its arguments")


def parse_lightning(name: str, args: list[str]) -> None:
    from stori_pl.cli.lightning_cli import run_lightning_cli

    run_lightning_cli([name, *args] if "--help" in args or "-h" in args else [name, *args, "--print_config"])


@pytest.fixture
def docs_workdir(tmp_path, monkeypatch):
    """A folder with the repository's configs/ and every YAML block of the docs that starts with ``# NAME.yaml``."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for path in DOC_FILES:
        for block in split_markdown(path.read_text(encoding="utf-8"))[1]:
            m = re.match(r"#\s*([\w.-]+\.ya?ml)\s*$", block.lines[0]) if block.info == "yaml" and block.lines else None
            if m:
                (tmp_path / m.group(1)).write_text("\n".join(block.lines) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("path", "number", "argv"), command_cases())
def test_documented_commands_parse(path, number, argv, docs_workdir):
    where = f"{rel(path)}:{number}: `stori {shlex.join(argv)}`"
    if not argv or argv[0] in ("-h", "--help"):
        return
    name, args = argv[0], argv[1:]
    assert name in UTILITY_COMMANDS or name in LIGHTNING_COMMANDS, f"{where}: no such command {name!r}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            (parse_lightning if name in LIGHTNING_COMMANDS else parse_utility)(name, args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    assert code in (0, None), f"{where} does not parse (exit {code}):\n{err.getvalue()[-1500:]}"


def test_commands_are_found_in_the_docs():
    """The extraction itself: continuation lines, `$ ` prompts, loops and `&&` chains."""
    cases = {" ".join(p.values[2][:2]) for p in command_cases()}
    for expected in ("fit --config", "retrieve --images", "embed a photo of a (red:1.5) (supercalifragilistic:0.5) car",
                     "explain runs/stori/dtd_16shot/version_0/checkpoints/last.ckpt", "retrieval-eval --config", "report runs/"):
        assert expected in cases, (expected, sorted(cases))
    block = Block("", 10, ["$ stori embed \"a (b\" \\", "    --out x.npy", "stori embed: error", "$ ls"])
    assert logical_lines(block) == [(10, 'stori embed "a (b"  --out x.npy'), (13, "ls")]
    assert stori_commands("for s in 1 2; do stori fit --data.seed $s; done  # a#b") == [["fit", "--data.seed", "1"]]
    assert stori_commands("pip install -e . && stori fit -c x.yaml") == [["fit", "-c", "x.yaml"]]


def test_a_stale_flag_fails(docs_workdir):
    import argparse

    # the parsers raise ArgumentError (exit_on_error=False), which `stori` prints as one line with status 2
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(argparse.ArgumentError, match="no-such-flag"):
        parse_utility("explain", ["last.ckpt", "--no-such-flag"])
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(argparse.ArgumentError, match="no-such-flag"):
        parse_utility("report", ["runs/", "--no-such-flag", "x"])


# ------------------------------------------------------------------------------------- (c) the front door
def test_readme_is_a_short_front_door_with_ci_markers():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    for marker, expected in (("<!-- main-command -->", "stori fit --config configs/demo.yaml"),
                             ("<!-- test-command -->", "python -m pytest")):
        assert text.count(marker) == 1, marker
        after = text.split(marker, 1)[1].lstrip("\n").splitlines()
        assert after[0].startswith("```"), f"{marker} must be followed by a code block"
        body = after[1:after.index("```", 1)] if "```" in after[1:] else []
        assert any(expected in line for line in body), (marker, body)  # what .ci/run extracts and runs


# ------------------------------------------------------------------------------------ (d) documented names
def dotted_names():
    out = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            out += [pytest.param(m, id=f"{rel(path)}:{number}:{m}") for m in re.findall(r"\bstori_pl(?:\.\w+)+", line)]
    return out


@pytest.mark.parametrize("name", dotted_names())
def test_documented_module_paths_import(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{name}: {'.'.join(parts[:cut])} has no {attr!r}"
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{name} does not import")


def test_tests_cited_in_the_docs_exist():
    """docs/reliability.md (and any page) cites tests as `tests/test_x.py::name` or `::name` after one: each exists."""
    defined = {f.name: set(re.findall(r"^def (test_\w+)", f.read_text(encoding="utf-8"), re.M))
               for f in (REPO / "tests").glob("test_*.py")}
    cited = 0
    for path in DOC_FILES:
        current = None
        for m in re.finditer(r"`(?:tests/(test_\w+\.py))?::(\w+)", path.read_text(encoding="utf-8")):
            current = m.group(1) or current
            assert current and m.group(2) in defined.get(current, set()), f"{rel(path)} cites a missing test: {current}::{m.group(2)}"
            cited += 1
    assert cited >= 20  # docs/reliability.md's table cites every fault's test
