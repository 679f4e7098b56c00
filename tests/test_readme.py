"""Every ``shelfml`` / ``shelfml-client`` command in README.md and docker/README.md parses with today's flags,
so a renamed flag breaks the build, not the user; and both CLIs answer ``--version`` and show defaults."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shelfml.cli import build_parser
from shelfml.client.cli import build_parser as client_parser

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "docker" / "README.md"]
PROGRAMS = {"shelfml": build_parser, "shelfml-client": client_parser}


def readme_commands() -> list[tuple[str, str]]:
    """(where, command line) of each CLI call inside a fenced code block (``$ `` prompts, ``\\`` continuations,
    ``# comments`` and environment assignments handled; log lines such as ``shelfml export: ...`` skipped)."""
    found = []
    for doc in DOCS:
        block, pending = False, ""
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                block, pending = not block, ""
                continue
            if not block:
                continue
            line = pending + line.strip().removeprefix("$ ")
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            # optional parts as written in the README, "[--kind flat|ivf|hnsw]": checked with them, first choice
            line = re.sub(r"\[([^\]]*)\]", lambda m: re.sub(r"(\S+?)\|\S+", r"\1", m.group(1)), line)
            for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line):
                if not re.match(r"^([A-Z_]+=\S+\s+)*shelfml(-client)?(\s|$)", part.strip()):
                    continue  # not a call of ours (python, output, another tool)
                words = shlex.split(part, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words and words[0] in PROGRAMS and (len(words) == 1 or not words[1].endswith(":")):
                    found.append((f"{doc.name}:{n}", shlex.join(words)))
    return found


COMMANDS = readme_commands()


def test_the_readmes_hold_commands():
    assert len(COMMANDS) >= 25 and {c.split()[0] for _, c in COMMANDS} == set(PROGRAMS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_readme_command_parses(where, command):
    words = shlex.split(command)
    parser = PROGRAMS[words[0]]()
    try:
        parser.parse_args(words[1:])
    except SystemExit as e:
        assert e.code == 0, f"{where}: `{command}` does not parse with today's flags"


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_version_and_defaults_in_help(program):
    module = "shelfml" if program == "shelfml" else "shelfml.client.cli"
    run = [sys.executable, "-m", module] if program == "shelfml" else [sys.executable, "-c",
                                                                       "import sys; from shelfml.client.cli import main; sys.exit(main(sys.argv[1:]))"]
    version = subprocess.run(run + ["--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.match(rf"{program} \d+\.\d+", version.stdout)
    sub = ["train", "tagger"] if program == "shelfml" else ["batch"]
    text = subprocess.run(run + [*sub, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "(default: " in text
    for line in re.findall(r"^  (--[a-z-]+)", text, re.M):  # every option has help text
        assert line


def test_every_option_has_help():
    import argparse

    missing = []

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, path + [name])
            elif a.option_strings and not a.help:
                missing.append(f"{' '.join(path)} {a.option_strings[-1]}")

    for name, build in PROGRAMS.items():
        walk(build(), [name])
    assert not missing, missing


def test_global_client_flags_work_after_the_subcommand(monkeypatch):
    from shelfml.client.cli import _urls

    a = client_parser().parse_args(["tag", "steel bottle", "--url", "h:1", "--timeout", "3"])
    assert (_urls(a), a.timeout) == (["h:1"], 3.0)
    a = client_parser().parse_args(["--url", "h:2", "batch", "in.csv", "--out", "o.csv", "--task", "tag"])
    assert _urls(a) == ["h:2"] and a.task == "tagger"
    a = client_parser().parse_args(["--url", "h:0", "batch", "in.csv", "--out", "o.csv", "--task", "tag",
                                    "--url", "h:1", "--url", "h:2,h:3"])
    assert _urls(a) == ["h:1", "h:2", "h:3"]  # after the sub-command wins; repeated and comma-separated add up
    monkeypatch.setenv("SHELFML_URL", "h:3")
    assert _urls(client_parser().parse_args(["tag", "x"])) == ["h:3"]
    assert _urls(client_parser().parse_args(["--url", "h:4", "tag", "x"])) == ["h:4"]
