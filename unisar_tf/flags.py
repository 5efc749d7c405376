"""Command-line flag conventions shared by every entry point.

Flags are snake_case and say what they bound (`--max_epochs`, not `--epochs`). A renamed flag
keeps its old spelling for a while: `deprecated_alias` accepts it, sets the new flag's value
and says on stderr which name to use instead.
"""

from __future__ import annotations

import argparse
import sys


class _DeprecatedFlag(argparse.Action):
    """Stores into the new flag's dest and warns once per use."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: {option_string} is deprecated and will be removed; "
            f"use {self.new_flag}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def deprecated_alias(
    parser: argparse.ArgumentParser, old_flag: str, new_flag: str, **kwargs
) -> None:
    """Accept `old_flag` as a hidden synonym of the already added `new_flag`.

    kwargs: the new flag's `type` (and any other add_argument keyword the value needs)."""
    action = next((a for a in parser._actions if new_flag in a.option_strings), None)
    if action is None:
        raise ValueError(f"{new_flag} must be added before its deprecated alias {old_flag}")
    target = parser
    if action.required:  # either spelling satisfies it: a required group of the two
        action.required = False
        target = parser.add_mutually_exclusive_group(required=True)
        target._group_actions.append(action)  # argparse has no public way to move it in
    target.add_argument(
        old_flag,
        dest=action.dest,
        action=_DeprecatedFlag,
        new_flag=new_flag,
        help=argparse.SUPPRESS,
        type=kwargs.pop("type", action.type),
        **kwargs,
    )


def comma_separated(item_type):
    """An argparse type: "a,b,c" -> (item_type(a), item_type(b), item_type(c)); empty parts
    are skipped, a value item_type refuses is the parser's usage error."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item_type(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated values: {error}") from None

    return parse
