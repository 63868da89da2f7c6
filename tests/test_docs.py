"""What the documentation promises: a short README, links that resolve, a doc page for every
technique in the index, the benchmarks' blocks in RESULTS.md, and every
``python -m dnnkit.train ...`` command of README.md and docs/*.md composing (Hydra and the
stage checks, no training)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from dnnkit.stages import config_dir, stage_configs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "RESULTS.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BENCHES = ["speed", "caching", "cost", "fold_bn", "seed_curves", "gradient_health_overhead", "baselines", "data_folder",
           "compile", "startup", "threads"]

FENCE = re.compile(r"^\s*(```|~~~)")
ENV = r"[A-Za-z_][A-Za-z0-9_]*=\S*"
COMMAND = re.compile(rf"^\s*(?:{ENV}\s+)*python -m dnnkit\.train(?:\s|$)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# Hydra launcher plugins: the option name's prefix -> the package that provides it
LAUNCHERS = {"submitit": "hydra_plugins.hydra_submitit_launcher", "joblib": "hydra_plugins.hydra_joblib_launcher",
             "ray": "hydra_plugins.hydra_ray_launcher", "rq": "hydra_plugins.hydra_rq_launcher"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_code(text: str) -> tuple[list[str], list[list[str]]]:
    """The lines outside fenced blocks, and the lines of each fenced block."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link's text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    seen: Counter[str] = Counter()
    found = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """Markdown link and image targets outside code."""
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    return [t for line in prose for t in LINK.findall(CODE_SPAN.sub("", line))]


def broken(path: Path, target: str) -> str | None:
    """Why the relative link ``target`` of ``path`` does not resolve, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return None
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return f"{target}: {dest} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading with anchor #{anchor} in {rel(dest)}"
    return None


# ----------------------------------------------------------------------------- README, links, index


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"


def test_readme_ends_with_development_and_its_test_command():
    text = README.read_text(encoding="utf-8")
    last = text.rsplit("\n## ", 1)[-1]
    assert last.startswith("Development"), "the README's last section must be '## Development'"
    assert "python -m pytest -q" in last


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    problems = [why for target in links(page) if (why := broken(page, target))]
    assert not problems, f"{rel(page)}: broken links:\n" + "\n".join(problems)


def techniques_index() -> list[list[str]]:
    """The rows (cells) of the README's techniques table."""
    section = README.read_text(encoding="utf-8").split("\n## Techniques\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert cells[0] == ["technique", "module", "config", "recipe", "doc page"], cells[0]
    assert set("".join(cells[1])) <= set("-: "), "the second row must be the header separator"
    return cells[2:]


def test_every_technique_links_to_a_doc_page_that_exists():
    rows = techniques_index()
    assert len(rows) >= 15, f"only {len(rows)} techniques in the index"
    names = [row[0] for row in rows]
    for wanted in ("gradient clipping", "freezing layers", "exact resume", "performance scheduling"):
        assert any(wanted in name for name in names), f"no row for {wanted!r} in the techniques index"
    for row in rows:
        targets = LINK.findall(row[4])
        assert targets, f"technique {row[0]!r} has no doc page link"
        for target in targets:
            assert target.startswith("docs/") and target.partition("#")[0].endswith(".md"), (row[0], target)
            assert broken(README, target) is None, broken(README, target)


def test_results_has_one_marked_block_per_bench_with_its_command():
    text = RESULTS.read_text(encoding="utf-8")
    assert "/tmp/" not in text, "RESULTS.md names a temporary output path"
    assert not re.search(r"\bissue \d", text, re.IGNORECASE), "RESULTS.md names issue numbers"
    lines = text.splitlines()
    for name in BENCHES:
        begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
        assert lines.count(begin) == 1 and lines.count(end) == 1, f"bench {name}: one {begin} and one {end} line"
        start, stop = lines.index(begin), lines.index(end)
        assert start < stop, f"bench {name}: begin marker after end marker"
        assert stop - start > 1, f"bench {name}: empty block"
        above = "\n".join(lines[max(0, start - 4):start])
        assert f"python -m bench.{name}" in above, f"bench {name}: no 'python -m bench.{name}' line above its block"


# ----------------------------------------------------------------------------- commands compose


def commands_in(path: Path) -> list[str]:
    """``python -m dnnkit.train ...`` in fenced blocks (with ``\\`` continuation lines) and in
    inline code spans, as single-line strings."""
    prose, blocks = split_code(path.read_text(encoding="utf-8"))
    found = []
    for block in blocks:
        lines = iter(block)
        for line in lines:
            if not COMMAND.match(line):
                continue
            parts = [line.rstrip()]
            while parts[-1].endswith("\\"):
                parts[-1] = parts[-1][:-1]
                parts.append(next(lines, "").rstrip())
            found.append(" ".join(p.strip() for p in parts))
    for line in prose:
        for _, span in CODE_SPAN.findall(line):
            if line.lstrip().startswith("|"):
                span = span.replace("\\|", "|")  # a pipe escaped for the table
            if COMMAND.match(span):
                found.append(span.strip())
    return found


def without_comment(command: str) -> str:
    """``command`` up to an unquoted ``#`` that starts a shell comment, spaces collapsed."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            command = command[:i]
            break
    return " ".join(command.split())


def documented_commands() -> list:
    where: dict[str, list[str]] = {}
    for page in PAGES:
        for command in commands_in(page):
            key = without_comment(command)
            where.setdefault(key, []).append(rel(page))
    return [pytest.param(command, files, id=command) for command, files in where.items()]


COMMANDS = documented_commands()
_parser = OverridesParser.create()


def overrides(command: str) -> tuple[list[str], str | None]:
    """The Hydra overrides of a documented command, as one job would see them: leading
    environment assignments, ``-m``/``--multirun`` and the launcher dropped, every sweep at its
    first value. Also the launcher option, if the command picks one."""
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(ENV, tokens[0]):
        tokens.pop(0)
    assert tokens[:3] == ["python", "-m", "dnnkit.train"], tokens
    out, launcher = [], None
    for token in tokens[3:]:
        if token in ("-m", "--multirun"):
            continue
        if token.startswith("hydra/launcher="):
            launcher = token.split("=", 1)[1]
            continue
        if token.startswith("hydra.launcher."):  # the launcher's own settings go with it
            continue
        override = _parser.parse_override(token)
        if override.is_sweep_override():
            token = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        out.append(token)
    return out, launcher


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # its parent namespace (hydra_plugins) is missing too
        return False


def test_the_docs_hold_commands_to_check():
    commands = [p.values[0] for p in COMMANDS]
    assert len(commands) >= 30, commands
    assert "python -m dnnkit.train +recipe=transfer" in commands
    zoo = [c for c in commands if "model=zoo" in c and "backbone.(conv1|bn1|layer[12])" in c]
    assert zoo, "the README/docs zoo freezing command is gone"


@pytest.mark.parametrize("command, files", COMMANDS)
def test_documented_command_composes(command, files):
    try:
        args, launcher = overrides(command)
    except (HydraException, ValueError) as err:  # Hydra's grammar, or shlex on unbalanced quotes
        pytest.fail(f"{command} (in {', '.join(files)}) does not parse as Hydra overrides: {err}")
    if launcher is not None:
        package = next((m for prefix, m in LAUNCHERS.items() if launcher.startswith(prefix)), None)
        if package is None or not installed(package):
            pytest.skip(f"launcher {launcher!r} not installed (its Hydra plugin {package or '?'})")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=args)
    stages = stage_configs(cfg)  # the checks the runner makes before any stage trains
    assert stages, f"{command} (in {', '.join(files)}) has no stage"
