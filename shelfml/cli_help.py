"""What both command lines (``shelfml``, ``shelfml-client``) share: a parser whose help shows every option's
default, ``--version``, and one error format (``PROG: error: ...``, exit code 2 for a user mistake)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


class UsageError(ValueError):
    """A user mistake not about data or files (e.g. ``--device cuda`` on a machine without CUDA)."""


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default (argparse's own formatter shows it only where help exists)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        if action.option_strings and shown and "%(default)" not in text and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`HelpFormatter` (its sub-command parsers too: argparse builds them with
    ``type(self)``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    try:
        return metadata.version("shelfml")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def fail(prog: str, message: object, code: int = 2) -> int:
    """Print the one-line error both CLIs use and return its exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
