"""`python -m pvtt_train SUB --help` explains every option: an option without help text is a flag a user has to
read the code to understand (the CLI's counterpart of ComfyUI's rule that every input has a tooltip)."""

from __future__ import annotations

import argparse

from pvtt_train.__main__ import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help_text():
    parser = build_parser()
    subcommands = _subcommands(parser)
    assert {"distill", "demo", "teacher", "sample", "plan", "prepare-data", "export-lora"} <= set(subcommands)
    silent = [f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
              for name, sub in [("", parser), *subcommands.items()] for action in sub._actions
              if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
              and not (action.help or "").strip()]
    assert not silent, f"options without help text: {', '.join(silent)}"


def test_every_subcommand_help_renders():
    """Help strings with %(default)s placeholders must format against their defaults."""
    for name, sub in _subcommands(build_parser()).items():
        assert "usage:" in sub.format_help(), name
