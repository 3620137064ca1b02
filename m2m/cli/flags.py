"""Option forms shared by the sub-commands, written so that a pipeline parameter fits them as one word.

dvc.yaml pastes ``params.yaml`` values into the stage commands; DVC writes a boolean as ``true`` or
``false`` and every value as a single token, so each option here takes such a token.
"""

from __future__ import annotations

import argparse

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
AUTO = "auto"


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; an option's help ends with its default unless it names one itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []
        if not action.option_strings or unset or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class BooleanFlag(argparse.Action):
    """``--name`` (true), ``--no-name`` (false) or ``--name true|false`` (DVC's form of a boolean)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        negated = [f"--no-{option[2:]}" for option in option_strings if option.startswith("--")]
        super().__init__(
            [*option_strings, *negated], dest, nargs="?", default=default, help=help, metavar="true|false"
        )

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string}: takes no value, got {value!r}")
            setattr(namespace, self.dest, False)
            return
        try:
            setattr(namespace, self.dest, True if value is None else parse_bool(value))
        except argparse.ArgumentTypeError as err:
            parser.error(f"{option_string}: {err}")


def positive_int_or_auto(value: str) -> int | None:
    """A positive integer, or ``auto`` (None: the command decides)."""
    if value.strip().lower() == AUTO:
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or {AUTO}, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or {AUTO}, got {value!r}")
    return number
