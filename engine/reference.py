"""The generated pages of the documentation: every configuration key (from the config dataclasses, their attribute
docstrings and the checks in their ``__post_init__``), every command (from the argument parsers) and every error
message (from the engine's raise statements).

``python -m engine.reference`` rewrites ``docs/reference/config.md``, ``docs/reference/cli.md``,
``docs/reference/formats.md`` (one section per source format) and ``docs/troubleshooting.md`` (every one-line error
the engine raises); a test fails when a committed page differs from a fresh generation, so they cannot drift from
the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import sys
import typing
from pathlib import Path
from typing import Any

from engine import config as config_mod

CONFIG_PAGE = "docs/reference/config.md"
CLI_PAGE = "docs/reference/cli.md"
ERRORS_PAGE = "docs/troubleshooting.md"
FORMATS_PAGE = "docs/reference/formats.md"

ERROR_GROUPS: dict[str, tuple[str, ...]] = {
    "Configuration": ("ConfigError", "UnknownPolicy", "UnknownLabelError", "FingerprintMismatch"),
    "Input data": ("SourceFormatError", "SourceRecordError"),
    "Storage, locks and committed files": ("StorageError", "WriterLocked", "CorruptFile"),
    "Optional dependencies": ("MissingExtra",),
    "Review batches (people in the loop)": ("ReviewImportError",),
    "Other engine errors": ("EngineError",),
}
"""The troubleshooting page's groups: the engine's exception classes (engine.errors) a job turns into one line."""

_HELPERS = {"_check_range", "_check_choice", "_check_positive"}

REGISTERED: dict[str, str] = {
    "sources.<name>.format": "formats",
    "sources.<name>.label_space": "label_spaces",
    "model.name": "models",
    "threshold.policy": "policies",
    "train.online_policy": "policies",
}
"""Keys whose valid values are a registry's names (listed in the page, checked at load by engine.checks)."""


def registry_names() -> dict[str, list[str]]:
    """The names each registry holds now: source formats, label spaces, engine nets, threshold policies."""
    from engine.labels import LABEL_SPACES
    from engine.models.factory import ENGINE_MODELS
    from engine.sources import adapter_names
    from engine.thresholds.registry import available_policies

    return {
        "formats": list(adapter_names()),
        "label_spaces": sorted(LABEL_SPACES),
        "models": [*ENGINE_MODELS, "any timm architecture (timm.list_models())"],
        "policies": list(available_policies()),
    }


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One configuration key as the reference shows it."""

    key: str
    type: str
    default: str
    checks: tuple[str, ...]
    doc: str


def _attribute_docs(cls: type) -> dict[str, str]:
    """``field → docstring``: the string literal right after each annotated field of ``cls``'s class body."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        field = node.target.id if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else None
        if (
            field
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out[field] = inspect.cleandoc(nxt.value.value)
    return out


def _literal(node: ast.expr) -> str:
    """A check's bound or choices as the reader should see them (names of module constants resolved)."""
    if isinstance(node, ast.Name) and hasattr(config_mod, node.id):
        value = getattr(config_mod, node.id)
        return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    if isinstance(node, ast.Tuple):
        return ", ".join(_literal(e) for e in node.elts)
    if isinstance(node, ast.Constant):
        return str(node.value)
    text = ast.unparse(node)
    return {"1 << 62": "2^62", "float('inf')": "∞", "float(self.epochs)": "epochs"}.get(text, text)


def _field_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _message_text(node: ast.expr) -> str:
    """The text of a raised ConfigError's message, placeholders shown as ``…``."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "…" for v in node.values)
    return ""


def _checks(cls: type, names: list[str]) -> dict[str, list[str]]:
    """``field → the checks __post_init__ makes of it``: range and choice helpers, and the rule of each other
    ConfigError it raises (its message, from "must")."""
    out: dict[str, list[str]] = {n: [] for n in names}
    post = getattr(cls, "__post_init__", None)
    if post is None:
        return out
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(post)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _HELPERS:
            target = _field_of(node.args[1])
            if target is None or target not in out:
                continue
            if node.func.id == "_check_positive":
                out[target].append("> 0")
            elif node.func.id == "_check_choice":
                out[target].append(f"one of: {_literal(node.args[2])}")
            else:
                hi_open = any(k.arg == "hi_open" for k in node.keywords)
                out[target].append(f"in [{_literal(node.args[2])}, {_literal(node.args[3])}{')' if hi_open else ']'}")
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            text = _message_text(node.exc.args[0])
            rule = text[text.find("must") :].split(", got")[0].split("; got")[0] if "must" in text else ""
            for name in names:
                if rule and f".{name} " in text.split(" must")[0] + " ":
                    out[name].append(rule)
    return out


def _type_name(tp: Any) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def section_keys(prefix: str, cls: type) -> list[KeyDoc]:
    """Every key of the config section ``cls`` under ``prefix`` (``threshold``, ``sources.<name>`` ...)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if not (cls is config_mod.SourceConfig and f.name == "name")]
    docs = _attribute_docs(cls)
    checks = _checks(cls, [f.name for f in fields])
    out = []
    for f in fields:
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):  # a nested section: its own table, next (all_keys)
            continue
        extra = [f"a registered name: see {REGISTERED[key].replace('_', ' ')} below"] if key in REGISTERED else []
        out.append(
            KeyDoc(key, _type_name(hints[f.name]), _default(f), tuple(checks[f.name] + extra), docs.get(f.name, ""))
        )
    return out


def all_keys() -> list[tuple[str, str, list[KeyDoc]]]:
    """``(section, its docstring, its keys)`` for every section of :class:`engine.config.Config`."""
    hints = typing.get_type_hints(config_mod.Config)
    out = []
    for f in dataclasses.fields(config_mod.Config):
        tp = hints[f.name]
        if typing.get_origin(tp) is dict:
            cls, prefix = typing.get_args(tp)[1], f"{f.name}.<name>"
        else:
            cls, prefix = tp, f.name
        out.append((prefix, inspect.cleandoc(cls.__doc__ or ""), section_keys(prefix, cls)))
        nested = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        for name, sub in nested.items():
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                key = f"{prefix}.{name}"
                out.append((key, inspect.cleandoc(sub.__doc__ or ""), section_keys(key, sub)))
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_reference() -> str:
    """The Markdown of ``docs/reference/config.md``."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m engine.reference` from engine/config.py; do not edit by hand. -->",
        "",
        "Every key of the configuration, by section: its type, its default, the checks made when the config loads",
        "(ranges and choices; names backed by a registry are checked against it, with the nearest valid name in the",
        "error) and its meaning. YAML files state only what differs from these defaults; `--set section.key=value`",
        "overrides any key; `fer-engine config --show` prints the resolved config and where each value came from.",
        "",
    ]
    for prefix, doc, keys in all_keys():
        lines += [
            f"## `{prefix}`",
            "",
            _cell(doc),
            "",
            "| key | type | default | checked | meaning |",
            "|---|---|---|---|---|",
        ]
        for k in keys:
            checks = "; ".join(k.checks)
            lines.append(
                f"| `{k.key}` | `{_cell(k.type)}` | `{_cell(k.default)}` | {_cell(checks)} | {_cell(k.doc)} |"
            )
        lines.append("")
    lines += ["## Registered names", ""]
    for name, values in registry_names().items():
        lines.append(f"- **{name.replace('_', ' ')}**: {', '.join(f'`{v}`' if ' ' not in v else v for v in values)}")
    lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """The Markdown of ``docs/reference/cli.md``: each command's ``--help``, as argparse prints it at 100 columns."""
    from engine.cli import COMMANDS, build_parser

    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by `python -m engine.reference` from engine/cli.py; do not edit by hand. -->",
        "",
        "`fer-engine <command>` and `python jobs/<command>.py` take the same options (the job files are what",
        "`ray job submit` runs; `jobs/pseudo_round.py` is the `round` command).",
        "",
    ]
    for name in COMMANDS:
        sub = build_parser(name)
        lines += [f"## `{name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def raised_errors(engine_dir: Path) -> list[tuple[str, str, str]]:
    """``(exception class, module path, message)`` of every ``raise <EngineError subclass>(message)`` under
    ``engine_dir``, placeholders of f-strings shown as ``…``, sorted by class, module and message."""
    known = {name for names in ERROR_GROUPS.values() for name in names}
    out = set()
    for path in sorted(engine_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            text = _message_text(node.exc.args[0])
            if name in known and text:
                out.add((name, path.relative_to(engine_dir.parent).as_posix(), " ".join(text.split())))
    return sorted(out)


def errors_reference(engine_dir: Path | None = None) -> str:
    """The Markdown of ``docs/troubleshooting.md``: every one-line error the engine raises, grouped."""
    engine_dir = engine_dir or Path(__file__).resolve().parent
    errors = raised_errors(engine_dir)
    lines = [
        "# Troubleshooting",
        "",
        "<!-- Generated by `python -m engine.reference` from the engine's raise statements; do not edit by hand. -->",
        "",
        "A job ends an expected problem with one `error: …` line and exit code 2: the line names what failed,",
        "the value, key or path, and what to do (the fix is in the message). Ctrl-C gives one `interrupted: …`",
        "line (exit 130; committed stages are kept and the same command resumes). Anything else is a bug: a",
        "traceback, then one `bug: …` line asking for a report. Below is every message the engine can raise,",
        "grouped by kind, as it appears in the source (`…` stands for the values filled in at run time), with the",
        "module raising it.",
        "",
        f"{len(errors)} messages.",
        "",
    ]
    for group, classes in ERROR_GROUPS.items():
        rows = [e for e in errors if e[0] in classes]
        if not rows:
            continue
        lines += [f"## {group}", "", "| message | raised in |", "|---|---|"]
        lines += [f"| {_cell(msg)} | `{mod}` |" for _, mod, msg in rows]
        lines.append("")
    return "\n".join(lines)


def formats_reference() -> str:
    """The Markdown of ``docs/reference/formats.md``: one section per registered source format (its adapter's
    documentation of the layout on disk, a minimal config, what ``path`` points at)."""
    from engine.imaging import REASONS
    from engine.sources.base import adapter_docs, adapter_names

    lines = [
        "# Source formats",
        "",
        "<!-- Generated by `python -m engine.reference` from the source adapters (engine/sources/); do not edit. -->",
        "",
        "One section per `format` of `sources.<name>`: the layout the adapter reads (as its publisher ships it;",
        "nothing is converted first), a minimal config and what `path` points at. Every format is read row by row",
        "and ingested the same way: a file that cannot be used becomes a row of the source's `quarantine.parquet`",
        "with a reason and a detail saying why, and the others go on. Reasons found when decoding:",
        ", ".join(f"`{r}`" for r in REASONS) + "; when listing: `unreadable`, `bad_record`, `outside_root`,",
        "`not_a_file`. Where the datasets come from and their licences: [data formats](../data.md).",
        "",
    ]
    for name in adapter_names():
        module_doc, class_doc, download_hint = adapter_docs(name)
        layout = inspect.cleandoc(class_doc)
        hint = " ".join(download_hint.format(name="<name>").split())
        lines += [
            f"## `{name}`",
            "",
            " ".join(inspect.cleandoc(module_doc).split()),
            "",
            layout,
            "",
            "```yaml",
            "sources:",
            "  my_source:",
            f"    format: {name}",
            "    path: datasets/...",
            "```",
            "",
        ]
        if hint:
            lines += [f"`path`: {hint}.", ""]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """Every generated page, ``path relative to the repository → its Markdown``."""
    return {
        CONFIG_PAGE: config_reference(),
        CLI_PAGE: cli_reference(),
        FORMATS_PAGE: formats_reference(),
        ERRORS_PAGE: errors_reference(),
    }


def write(root: Path) -> list[Path]:
    """Rewrite every generated page under ``root`` (the repository); returns their paths."""
    out = []
    for rel, text in pages().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(f"wrote {p}")
