"""The docs' snippets work, as litgpt's tests/test_readme.py runs its README's commands.

- Every ```python block of README.md and docs/*.md runs, each in a fresh namespace, in a working
  folder that holds the files the docs name (DOC_FILES: a classify head, a tag head, two LoRA
  adapters, random but of the default model's shapes). A block that talks to
  http://127.0.0.1:8000 talks to a `polyhead serve --tasks default --api-key sekret` started for
  the test on a free port instead. A block opts out with `<!-- not run: why -->` on the line
  before its fence.
- Every `polyhead ...` line of the other blocks parses with the real CLI parser (a flag that
  does not exist, or a bad choice, fails); synopsis lines with `[--flag X]` have each flag
  looked up. `python -m M` / `-m M` modules must exist, `scripts/...` files too.
- The README's list of engine options names exactly EngineConfig's fields.
"""

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from polyhead.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
DOCS_SERVER = "http://127.0.0.1:8000"
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")

# SmolLM2-135M-Instruct's shapes, for the files the docs name
HIDDEN, Q_SIZE, KV_SIZE, NUM_LAYERS = 576, 576, 192, 30


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip_reason: str | None  # from a `<!-- not run: ... -->` marker right before the fence

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language, start = lines[i][3:].strip(), i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP_MARKER.search(before)
            blocks.append(Block(path, start + 1, language, "\n".join(lines[start + 1:end]) + "\n",
                                marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


ALL_BLOCKS = [b for path in DOCS for b in fenced_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language == "python"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in SHELL_LANGUAGES]


# --- the files the docs name --------------------------------------------------------------------
def write_head(path: Path, num_labels: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(num_labels, HIDDEN, generator=gen) * 0.02,
               "bias": torch.zeros(num_labels)}, str(path))


def write_adapter(folder: Path, seed: int, r: int = 2) -> None:
    """A PEFT-format LoRA on q_proj and v_proj of every layer (small random A and B)."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"]}))
    gen, tensors = torch.Generator().manual_seed(seed), {}
    for layer in range(NUM_LAYERS):
        for module, out in (("q_proj", Q_SIZE), ("v_proj", KV_SIZE)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, HIDDEN, generator=gen) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, r, generator=gen) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"))


DOC_FILES = {  # name in the docs -> how the test makes it
    "head.safetensors": lambda p: write_head(p, 3, seed=0),  # README: the "topic" classify head, 3 labels
    "ner-head.safetensors": lambda p: write_head(p, 5, seed=1),  # README: the "ner" tag head, 5 BIO tags
    "sql-lora": lambda p: write_adapter(p, seed=2),
    "chat-lora": lambda p: write_adapter(p, seed=3),
}


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs-cwd")
    for name, make in DOC_FILES.items():
        make(folder / name)
    return folder


@pytest.fixture(scope="module")
def docs_server():
    """`polyhead serve --tasks default --api-key sekret`, built by the CLI's own code, on a free port."""
    from polyhead.cli import build_task_registry
    from polyhead.models.registry import DEFAULT_MODEL
    from polyhead.server.app import ServerSettings, build_app
    from tests.conftest import serve_in_thread

    args = build_parser().parse_args(["serve", "--tasks", "default", "--api-key", "sekret", "--engine-mode",
                                      "thread", "--kv-cache-memory", "256MiB", "--default-max-tokens", "16"])
    registry = build_task_registry(args, DEFAULT_MODEL)
    settings = ServerSettings(model_names=[DEFAULT_MODEL], api_key=args.api_key,
                              default_max_tokens=args.default_max_tokens)
    app = build_app(registry.backbones[registry.default_backbone].engine, settings, registry)
    with serve_in_thread(app, start_timeout_s=60) as url:
        yield url


# --- python blocks ------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_block_runs(block, docs_folder, request, monkeypatch):
    if block.skip_reason:
        pytest.skip(f"marked not run: {block.skip_reason}")
    source = block.text
    if DOCS_SERVER in source:
        source = source.replace(DOCS_SERVER, request.getfixturevalue("docs_server"))
    monkeypatch.chdir(docs_folder)
    exec(compile(source, block.name, "exec"), {"__name__": "__docs__"})  # noqa: S102


# --- shell blocks -------------------------------------------------------------------------------
COMMAND = re.compile(r"^([A-Z_]+=\S*\s+)*(polyhead|python|torchrun|scripts/)")


def command_lines(block: Block) -> list[str]:
    """The block's command lines, `\\` continuations and a synopsis's indented `[...]` lines joined."""
    lines, pending = [], ""
    for raw in block.text.splitlines():
        if raw.startswith(" ") and raw.strip().startswith("[") and lines:
            lines[-1] += " " + raw.strip()
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [line.strip() for line in lines if COMMAND.match(line.strip())]


def words_of(line: str) -> list[str]:
    words = shlex.split(line.replace("$(", "(").replace("$PWD", "PWD"), comments=True)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
        words.pop(0)
    return words


def subcommand_parser(parser, words: list[str]):
    """The (sub)parser the words select, and the words left for it."""
    while words:
        actions = [a for a in parser._actions if isinstance(a.choices, dict) and a.nargs == argparse.PARSER]
        if not actions or words[0] not in actions[0].choices:
            break
        parser, words = actions[0].choices[words[0]], words[1:]
    return parser, words


def all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action.choices, dict) and action.nargs == argparse.PARSER:
            for sub in action.choices.values():
                yield from all_parsers(sub)


def check_polyhead_line(words: list[str], line: str) -> None:
    parser = build_parser()
    for p in all_parsers(parser):  # a doc's `--max-token` is a typo, not an abbreviation of --max-tokens
        p.allow_abbrev = False
    if any(w.startswith("[") for w in words):  # a synopsis: look each flag up
        sub, rest = subcommand_parser(parser, words)
        known = {s for a in sub._actions for s in a.option_strings}
        unknown = [w.strip("[]") for w in rest if w.strip("[]").startswith("--") and w.strip("[]") not in known]
        assert not unknown, f"{line!r}: {unknown} not options of `polyhead {' '.join(words[:len(words) - len(rest)])}`"
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(words)
        except SystemExit as exit_:
            assert exit_.code == 0, f"{line!r} does not parse: {err.getvalue().strip().splitlines()[-1]}"


def shell_checks() -> list[tuple[str, str]]:
    return [(f"{b.name}:{i}", line) for b in SHELL_BLOCKS for i, line in enumerate(command_lines(b))]


@pytest.mark.parametrize("where,line", shell_checks(), ids=[w for w, _ in shell_checks()])
def test_shell_line(where, line):
    words = words_of(line)
    if not words:
        return
    if words[0] == "polyhead":
        check_polyhead_line(words[1:], line)
    for flag, module in itertools.pairwise(words):
        if flag == "-m" and module.startswith("polyhead"):
            path = ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), \
                f"{line!r}: no module {module} to run"
    for word in words:
        if word.startswith("scripts/"):
            assert (ROOT / word).is_file(), f"{line!r}: {word} does not exist"


def test_shell_lines_are_found():
    """The checks above see the docs' commands (a parser change cannot empty them unnoticed)."""
    polyhead_lines = [line for _, line in shell_checks() if words_of(line)[:1] == ["polyhead"]]
    assert len(polyhead_lines) > 40
    assert any(line.startswith("polyhead train") for line in polyhead_lines)


def test_python_blocks_are_found():
    assert {b.path.name for b in PYTHON_BLOCKS} >= {"README.md", "compression.md"}
    assert len(PYTHON_BLOCKS) >= 7


# --- prose --------------------------------------------------------------------------------------
def test_readme_engine_options_are_engine_config_fields():
    from polyhead.config import EngineConfig

    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Engine options ("):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    named = set(re.findall(r"`([a-z_]+)`", paragraph))
    fields = {f.name for f in dataclasses.fields(EngineConfig)} - {"model"}
    assert named <= fields, f"not EngineConfig fields: {sorted(named - fields)}"
    assert fields <= named, f"EngineConfig fields the README does not list: {sorted(fields - named)}"


def test_readme_engine_option_flags_exist():
    """The flags the paragraph names are `polyhead run`'s and `serve`'s; the options it says have none, have none."""
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Engine options ("):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    flags = {f.split()[0] for f in re.findall(r"`(--[a-z-]+[^`]*)`", paragraph)}
    no_flag = set(re.findall(r"`([a-z_]+)`", paragraph[paragraph.rindex(";"):]))
    assert flags and no_flag
    for command in ("run", "serve"):
        sub, _ = subcommand_parser(build_parser(), [command])
        engine_group = next(g for g in sub._action_groups if g.title == "engine")  # cli.add_engine_args
        known = {s for a in engine_group._group_actions for s in a.option_strings}
        assert flags <= known, f"`polyhead {command}` has no engine option {sorted(flags - known)}"
        dests = {a.dest for a in engine_group._group_actions} | {s[2:].replace("-", "_") for s in known}
        assert not no_flag & dests, f"the README says {sorted(no_flag & dests)} have no flag, but `{command}` has one"
