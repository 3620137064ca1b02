"""Every sub-command's help says what each option defaults to."""

from __future__ import annotations

import argparse

from m2m.cli import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices)


def test_every_option_with_a_default_shows_it():
    missing = []
    for name, sub in subcommands().items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default is None or default is False or default == []:
                continue
            if default is argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{name} {action.option_strings[0]}: no help")
            elif "default" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[0]}: default {default!r} not shown")
    assert not missing, "; ".join(missing)
    assert "--steps STEPS DDIM steps (paper: 50) (default: 50)" in " ".join(subcommands()["sample"].format_help().split())
