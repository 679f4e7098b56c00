"""What both command lines (``shelfml``, ``shelfml-client``) share: a parser whose help shows every option's
default, ``--version``, and one error format (``PROG: error: ...``, exit code 2 for a user mistake)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from shelfml.dataspec import DataError, bom_tolerant


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


def read_lines(file: str | None, encoding: str = "utf-8") -> list[str]:
    """One text per non-blank line of ``file`` (stdin for None or "-"); a UTF-8 byte-order mark is dropped and
    an undecodable byte is a DataError naming the file, line and byte."""
    named, encoding = encoding, bom_tolerant(encoding)
    if file and file != "-":
        if not Path(file).is_file():
            raise DataError(f"--file {file} does not exist")
        raw, name = Path(file).read_bytes(), file
    else:
        raw, name = sys.stdin.buffer.read(), "stdin"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{name} is not valid {named}: byte 0x{raw[e.start]:02x} on line {line} (offset "
                        f"{e.start}); re-encode it or pass --encoding (e.g. latin-1)") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
