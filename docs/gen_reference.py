"""Generate the configuration and CLI reference pages from the code, at docs build time.

MkDocs runs this file as a hook (`hooks:` in mkdocs.yml): `on_files` adds two generated pages,
`reference/configuration.md` (every pydantic config model: keys, types, defaults, descriptions) and
`reference/cli.md` (every `rayrank` subcommand's argparse parser: usage, arguments, defaults, help).
Nothing is hand-copied, so the pages change when the code does. Run it directly to see the Markdown:

    python docs/gen_reference.py cli            # or: configuration
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import os
import re
import sys
import typing
from pathlib import Path
from types import UnionType

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# Config models, by the file or application that holds them: (title, "module:Class", how it is given).
ROOTS = [
    ("Rerank job", "rayrank.config:RerankJobConfig", "`rayrank rerank --config FILE`"),
    ("Index job", "rayrank.config:IndexJobConfig", "`rayrank index --config FILE`"),
    ("Search job", "rayrank.config:SearchJobConfig", "`rayrank search --config FILE`"),
    ("Dense index job", "rayrank.jobs.dense_index:DenseIndexConfig", "`rayrank dense-index --config FILE`"),
    ("Funnel", "rayrank.funnel.config:FunnelConfig", "`rayrank funnel --config FILE`, and `funnel:` of the search app"),
    ("Serve application", "rayrank.ray_app.config:ServeArgs",
     "`args:` of `rayrank.ray_app.app:build_app` in a Serve config (`rayrank serve --config FILE`)"),
    ("Search application", "rayrank.ray_app.search_config:SearchArgs",
     "`args:` of `rayrank.ray_app.search:build_search_app` in a Serve config"),
    ("Fine-tuning", "rayrank.lab.config:FinetuneConfig", "`rayrank finetune --config FILE`"),
    ("Distillation", "rayrank.lab.config:DistillConfig", "`rayrank distill --config FILE`"),
]


# ---------------------------------------------------------------------------------------------- CLI


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@contextlib.contextmanager
def _capture_parsers():
    """While active, the first `parse_args`/`parse_known_args` call raises `_Captured(parser)`: each command
    builds its parser inside `main()` (or its `parse_args()`), and this takes it at the point of parsing."""
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original


def command_parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser of `rayrank NAME`, as its `main` builds it."""
    from rayrank.cli import COMMANDS

    module = importlib.import_module(COMMANDS[name][0])
    os.environ.setdefault("COLUMNS", "100")  # usage lines wrap the same wherever the docs are built
    with _capture_parsers(), contextlib.redirect_stdout(io.StringIO()):
        try:
            module.main(["--help"])
        except _Captured as captured:
            return captured.parser
    raise RuntimeError(f"rayrank {name}: main() returned without parsing its arguments")


def _default_text(value: object) -> str:
    if isinstance(value, Path) and value.is_absolute():
        return f"the packaged `{value.name}`"  # never a path of the machine that built the docs
    if isinstance(value, str) and value and value in os.environ.values():
        return "from the environment"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cli_markdown() -> str:
    from rayrank.cli import COMMANDS, usage

    out = ["# CLI reference", "",
           ("Generated from each command's argparse parser when the docs are built (`docs/gen_reference.py`); "
            "`rayrank COMMAND --help` prints the same. A job's flags override the keys of its `--config` file; "
            "a flag without a default here takes the config key's default (see the "
            "[configuration reference](configuration.md))."), "",
           "```text", usage(), "```", ""]
    for name in COMMANDS:
        parser = command_parser(name)
        formatter = parser._get_formatter()
        out += [f"## rayrank {name} {{#{name}}}", "", _cell(parser.description or COMMANDS[name][1]), "",
                "```text", parser.format_usage().strip(), "```", "",
                "| argument | default | description |", "|---|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                label = ", ".join(f"`{o}`" for o in action.option_strings)
                if action.nargs != 0 and action.choices is None:
                    metavar = formatter._format_args(action, action.dest.upper())
                    label += f" `{metavar}`"
            else:
                label = f"`{formatter._format_args(action, action.dest.upper())}`"
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                default = "off" if isinstance(action, argparse._StoreTrueAction) else "on"
            elif action.default is None or action.default is argparse.SUPPRESS:
                default = "required" if action.required else ""
            else:
                default = _default_text(action.default)
            text = formatter._expand_help(action) if action.help else ""
            if action.choices is not None and not isinstance(action.choices, range):
                choices = ", ".join(f"`{c}`" for c in action.choices)
                text = f"{text} (one of {choices})" if text else f"one of {choices}"
            out.append(f"| {_cell(label)} | {_cell(default)} | {_cell(text)} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- configuration


def _load(path: str) -> type[BaseModel]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_text(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = _bounds(args[1:])
        return _type_text(args[0]) + (f" ({bounds})" if bounds else "")
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, UnionType):
        return " | ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_text(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _constraints(field) -> str:
    return _bounds(field.metadata)


def _bounds(metadata) -> str:
    parts = []
    for meta in metadata:
        for attr, sign in _BOUNDS.items():
            if isinstance(meta, annotated_types.BaseMetadata) and getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length:
            parts.append(f"length ≥ {meta.min_length}")
        if isinstance(meta, annotated_types.MaxLen):
            parts.append(f"length ≤ {meta.max_length}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """`# comments` written beside a field, or on the lines right above it, in the class body."""
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (inspect.isclass(cls) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            match = re.match(r"\s{4}(\w+)\s*:", line) if not line.startswith(" " * 8) else None
            if match and match.group(1) in cls.model_fields:
                beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                text = " ".join(above + ([beside] if beside else []))
                if text:
                    comments[match.group(1)] = text
            above = []
    return comments


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        changed = value.model_dump(exclude_defaults=True, mode="json")
        return "defaults" + (f" but {', '.join(f'`{k}: {v}`' for k, v in changed.items())}" if changed else "")
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    return f"`{value!r}`" if isinstance(value, str) and not value else f"`{value}`"


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    return "" if doc.startswith(BaseModel.__doc__[:40] if BaseModel.__doc__ else "\0") else inspect.cleandoc(doc)


def _model_section(model: type[BaseModel], heading: str) -> list[str]:
    comments = _field_comments(model)
    out = [f"{heading} {model.__name__} {{#{model.__name__.lower()}}}", ""]
    if doc := _doc(model):
        out += [doc, ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field in model.model_fields.items():
        kind = _type_text(field.annotation)
        if bounds := _constraints(field):
            kind += f" ({bounds})"
        text = field.description or comments.get(key, "")
        out.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(text)} |")
    return out + [""]


def configuration_markdown() -> str:
    out = ["# Configuration reference", "",
           ("Generated from the pydantic models when the docs are built (`docs/gen_reference.py`). Every key "
            "can be given in YAML; unknown keys and wrong types are errors that name the key "
            "(`engine.max_batch_sise: unknown key`). Command-line flags override the file."), ""]
    out += ["| configuration | model | given as |", "|---|---|---|"]
    roots = [(title, _load(path), given) for title, path, given in ROOTS]
    out += [f"| {title} | [{model.__name__}](#{model.__name__.lower()}) | {_cell(given)} |"
            for title, model, given in roots]
    out += ["", "## Configurations", ""]
    seen: set[type[BaseModel]] = set()
    for _, model, _ in roots:
        out += _model_section(model, "###")
        seen.add(model)
    out += ["## Sections", "", "Models that the configurations above embed.", ""]
    pending = [m for _, root, _ in roots for f in root.model_fields.values() for m in _models_in(f.annotation)]
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen.add(model)
        out += _model_section(model, "###")
        pending += [m for f in model.model_fields.values() for m in _models_in(f.annotation)]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- hook

PAGES = {"reference/cli.md": cli_markdown, "reference/configuration.md": configuration_markdown}


def on_files(files, config):
    """MkDocs hook: add the generated pages to the site (they are never written into docs/)."""
    from mkdocs.structure.files import File

    for path, render in PAGES.items():
        files.append(File.generated(config, path, content=render()))
    return files


if __name__ == "__main__":
    page = sys.argv[1] if len(sys.argv) > 1 else "cli"
    print(cli_markdown() if page == "cli" else configuration_markdown())
