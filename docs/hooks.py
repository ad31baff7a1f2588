"""MkDocs hooks: the pages that are generated from the code at every build, so they never drift from it.

- `cli.md`: the help of every `dcnn-ablate` command, from the parser the command line uses
  (orchestrator/cli.py `build_parser`);
- `built-in-studies.md`: every study under search_spaces/studies/ with its arms, models, data, seeds and
  description (search_spaces/study.py `load_study`).
A page holds a marker (`<!-- generated: cli -->`) that the hook replaces; `make docs` builds the site.
"""
from __future__ import annotations

import argparse
import os

CLI_MARKER = "<!-- generated: cli -->"
STUDIES_MARKER = "<!-- generated: studies -->"


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    """(command line, parser) for the parser and every sub-command under it, depth first."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    from orchestrator.cli import build_parser

    os.environ["COLUMNS"] = "80"  # argparse wraps help to the terminal: a fixed width, the same on every build
    commands = [(c, p) for c, p in _subcommands(build_parser(), "dcnn-ablate") if c != "dcnn-ablate"]
    first = ("dcnn-ablate ablate", "dcnn-ablate report")  # the study commands, then the rest as the parser has them
    commands.sort(key=lambda cp: first.index(cp[0]) if cp[0] in first else len(first))
    out = []
    for command, parser in commands:
        out += [f"## `{command}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def studies_reference() -> str:
    from search_spaces import list_studies, load_study

    out = []
    for name in list_studies():
        s = load_study(name)
        seeds = (f"auto ({s.seed_design.min}–{s.seed_design.max})" if s.seed_design
                 else ", ".join(map(str, s.seeds)))
        epochs = s.fixed.get("epochs", "TrainConfig's default")
        out += [f"## `{name}`", "",
                f"**Arms** ({len(s.arms)}; reference **{s.reference.key}**): "
                + ", ".join(f"`{a.key}`" for a in s.arms) + "  ",
                f"**Models**: {', '.join(s.models)} · **data**: {', '.join(s.dataset_labels().values())} · "
                f"**seeds**: {seeds} · **epochs**: {epochs}", "",
                s.description or "(no description)", "",
                f"Run it: `dcnn-ablate ablate --study {name}` (file: `search_spaces/studies/{name}.yaml`).", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if STUDIES_MARKER in markdown:
        markdown = markdown.replace(STUDIES_MARKER, studies_reference())
    return markdown
