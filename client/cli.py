"""``shelfml-client``: tag or price texts on a running server, or a whole catalog CSV with ``batch``.

    shelfml-client tag "Green Harbor herbal shampoo 500 ml" "steel bottle 1 l"      # JSON lines
    shelfml-client price "steel bottle 1 l" --image bottle.jpg
    shelfml-client catalog "steel bottle 1 l"                                          # both models, one call
    shelfml-client batch catalog.csv --out tags.csv --task tag --concurrency 4 --id-col id

``batch`` resumes: OUT.csv is written in input order, one chunk at a time, flushed after each chunk. Run the
same command again after an interruption (Ctrl-C, a kill, a server restart) and it keeps every complete row
already there, drops a torn last line, and writes the missing rows only: no row twice, none lost, input order
and ids kept. A row the server rejects (INVALID_ARGUMENT, e.g. an empty title) is written with its reason in the
``error`` column instead of stopping the run.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import contextlib
import csv
import gzip
import io
import itertools
import json
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Iterator, Sequence

from shelfml.client.client import (DEFAULT_BATCH_SIZE, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_URLS, PROTOCOLS,
                                   AsyncShelfmlClient, ClientError, InvalidRequestError, ShelfmlClient)
from shelfml.cli_help import Parser, add_version, fail, read_lines
from shelfml.client.replicas import Replica, ReplicaPool
from shelfml.labels import format_path

ROW_ID = "row"  # the id column when the input has none: the row's 0-based position in the input



@dataclass(frozen=True)
class Row:
    id: str
    text: str
    image: str | None = None  # a resolved local path, or None (no picture, a link, or a missing file)


# ---------------------------------------------------------------------------------------------
# The output file: complete records only, appended in order.


def complete_records(data: bytes, header: Sequence[str]) -> tuple[int, list[list[str]]]:
    """The longest prefix of ``data`` made of whole CSV records: (its length in bytes, its records).

    A record counts only when its last line ends with a newline, its quotes are closed and it has the header's
    width; everything after the first record that fails is a torn tail (a write cut short by a kill).
    """
    pieces = data.split(b"\n")[:-1]  # the part after the last newline is never complete
    consumed = 0

    def lines():
        nonlocal consumed
        for piece in pieces:
            consumed += len(piece) + 1
            yield piece.decode("utf-8", errors="replace") + "\n"

    good, records = 0, []
    try:
        for record in csv.reader(lines(), strict=True):
            if records and len(record) != len(header):  # the first record is the header, checked by the caller
                break
            records.append(record)
            good = consumed  # the reader yields a record as soon as its last line is read
    except csv.Error:  # a quoted field left open at the end: torn inside a multi-line value
        pass
    return good, records


def format_records(records: Sequence[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(records)
    return buf.getvalue().encode("utf-8")


def resume_output(path: Path, header: Sequence[str]) -> list[str]:
    """Make ``path`` a valid output (header + complete records, torn tail cut) and return the ids written."""
    data = path.read_bytes() if path.exists() else b""
    good, records = complete_records(data, header)
    if records and records[0] != list(header):
        raise ValueError(f"{path} exists with columns {records[0]}, expected {list(header)}: "
                         "a different --task or --id-col? Use another --out")
    if not records:  # new, empty, or torn inside the header line
        expected = format_records([header])
        if not expected.startswith(data):
            raise ValueError(f"{path} exists and is not a batch output (expected the header {list(header)}): "
                             "use another --out")
        path.write_bytes(expected)
        return []
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return [r[0] for r in records[1:]]


# ---------------------------------------------------------------------------------------------
# The batch run: a sliding window of chunks in flight, written in input order as each completes.

Predict = Callable[[list[Row]], Awaitable[list[list[object]]]]  # chunk -> one list of result fields per row


@dataclass
class BatchSummary:
    total: int
    skipped: int  # already in the output when the run started
    written: int
    errors: int  # rows written with a server-side rejection


def _unique_ids(rows: Iterable[Row]) -> int:
    """How many rows; ValueError naming duplicate ids (a resume finds rows by id). One pass, ids only in memory."""
    seen, dupes, total = set(), [], 0
    for row in rows:
        total += 1
        (dupes.append(row.id) if row.id in seen else seen.add(row.id))
    if dupes:
        raise ValueError(f"the id column has duplicate values (e.g. {dupes[:3]}): ids must be unique to resume")
    return total


async def run_batch(rows: Sequence[Row] | Callable[[], Iterable[Row]], out: Path, header: Sequence[str],
                    predict: Predict, batch_size: int, concurrency: int = 1, progress: bool = True) -> BatchSummary:
    """``rows``: the input, or a function that reads it afresh (a stream: read twice, once for the ids before
    anything is written, then chunk by chunk; never held in memory)."""
    read = rows if callable(rows) else (lambda: rows)
    total = _unique_ids(read())
    done = set(resume_output(out, header))
    todo = (r for r in read() if r.id not in done)
    chunks = iter(lambda: list(itertools.islice(todo, batch_size)), [])
    summary = BatchSummary(total=total, skipped=len(done), written=0, errors=0)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=summary.skipped, unit="row", disable=not progress, file=sys.stderr)
    window: deque[tuple[list[Row], asyncio.Task]] = deque()
    try:
        with open(out, "ab") as f:
            while True:
                while len(window) < concurrency and (chunk := next(chunks, None)) is not None:
                    window.append((chunk, asyncio.ensure_future(predict(chunk))))
                if not window:
                    break
                chunk, task = window.popleft()
                results = await task
                assert len(results) == len(chunk), f"{len(chunk)} rows sent, {len(results)} results"
                f.write(format_records([[row.id, *fields] for row, fields in zip(chunk, results)]))
                f.flush()
                summary.written += len(chunk)
                summary.errors += sum(1 for fields in results if fields[-1])
                bar.update(len(chunk))
    finally:
        for _, task in window:
            task.cancel()
        if window:  # collect them, so a failed neighbour's exception is not reported as never retrieved
            await asyncio.gather(*(task for _, task in window), return_exceptions=True)
        bar.close()
    return summary


def tag_fields(result) -> list[object]:
    alternatives = [{"path": format_path(path), "probability": round(prob, 6)} for path, prob in result.alternatives]
    return [format_path(result.path), result.brand, f"{result.confidence:.6f}",
            ";".join(f"{p:.6f}" for p in result.level_probability), format_path(result.backoff_path),
            int(result.abstain), json.dumps(alternatives, ensure_ascii=False), ""]


def price_fields(result) -> list[object]:
    return [f"{result.price:.4f}", int(result.has_image), ""]


def catalog_fields(result) -> list[object]:
    t, p = result.tag, result.price
    return [format_path(t.path), t.brand, f"{t.confidence:.6f}", ";".join(f"{v:.6f}" for v in t.level_probability),
            format_path(t.backoff_path), int(t.abstain), f"{p.price:.4f}", int(p.has_image), t.model_version,
            p.model_version, ""]


async def _tag(client: AsyncShelfmlClient, chunk: list["Row"]) -> list[list[object]]:
    return [tag_fields(r) for r in await client.tag([r.text for r in chunk])]


async def _price(client: AsyncShelfmlClient, chunk: list["Row"]) -> list[list[object]]:
    return [price_fields(r) for r in await client.price([r.text for r in chunk], [r.image for r in chunk])]


async def _catalog(client: AsyncShelfmlClient, chunk: list["Row"]) -> list[list[object]]:
    return [catalog_fields(r) for r in await client.catalog([r.text for r in chunk], [r.image for r in chunk])]


@dataclass(frozen=True)
class BatchTask:
    """One served model as ``shelfml-client batch --task`` sees it: its output columns and its call."""

    columns: tuple[str, ...]
    call: Callable[[AsyncShelfmlClient, list[Row]], Awaitable[list[list[object]]]]
    images: bool = False  # takes --image-col


TAG_COLUMNS = ("path", "brand", "confidence", "level_probability", "backoff_path", "abstain", "alternatives", "error")
CATALOG_COLUMNS = ("path", "brand", "confidence", "level_probability", "backoff_path", "abstain", "price", "has_image",
                   "tagger_version", "price_version", "error")
BATCH_TASKS = {"tagger": BatchTask(TAG_COLUMNS, _tag),
               "price": BatchTask(("price", "has_image", "error"), _price, images=True),
               "catalog": BatchTask(CATALOG_COLUMNS, _catalog, images=True)}
TASK_ALIASES = {"tag": "tagger"}  # the client's first spelling


def make_predict(client: AsyncShelfmlClient | ReplicaPool, task: str) -> Predict:
    """The server call for one chunk (on one client, or spread over a pool of replicas); a rejected chunk is
    retried row by row so only the bad rows carry an error."""
    spec = BATCH_TASKS[TASK_ALIASES.get(task, task)]
    width = len(spec.columns)
    pool = client if isinstance(client, ReplicaPool) else ReplicaPool([Replica("server", client)], rounds=0)

    async def predict(chunk: list[Row]) -> list[list[object]]:
        try:
            return await pool.call(lambda c: spec.call(c, chunk))
        except InvalidRequestError as e:
            if len(chunk) == 1:
                return [[""] * (width - 1) + [str(e)]]
            return [fields for row in chunk for fields in await predict([row])]

    return predict


def iter_rows(path: Path, text_col: str, id_col: str | None, image_col: str | None,
              encoding: str) -> Iterator[Row]:
    """The input's rows one at a time: a CSV (``.csv``, ``.csv.gz``) is streamed, never held in memory (an
    ``.xlsx`` workbook is read whole). ValueError naming the line of a row without the header's fields or of an
    undecodable byte."""
    from shelfml.dataspec import bom_tolerant

    path = Path(path)
    if path.suffix.lower() == ".xlsx":
        yield from read_rows(path, text_col, id_col, image_col, encoding)
        return
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=bom_tolerant(encoding), newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path} is empty: expected a header row and at least one product")
            for flag, col in (("--text-col", text_col), ("--id-col", id_col), ("--image-col", image_col)):
                if col and col not in header:
                    raise ValueError(f"{path} has no column {col!r} ({flag}); its columns: {header}")
            at = {c: header.index(c) for c in (text_col, id_col, image_col) if c}
            n = 0
            for record in reader:
                if not record:
                    continue
                if len(record) != len(header):
                    raise ValueError(f"{path}: line {reader.line_num} has {len(record)} fields, the header "
                                     f"{len(header)}; quote fields that hold the delimiter")
                image = _image_path(record[at[image_col]], path.parent) if image_col else None
                yield Row(record[at[id_col]] if id_col else str(n), record[at[text_col]], image)
                n += 1
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not valid {encoding} near line {reader.line_num}: byte "
                             f"0x{e.object[e.start]:02x}; re-encode the file or pass --encoding") from None
        except csv.Error as e:
            raise ValueError(f"{path} is not a readable CSV: line {reader.line_num}: {e}") from None


def read_rows(path: Path, text_col: str, id_col: str | None, image_col: str | None, encoding: str) -> list[Row]:
    from shelfml.data import read_table

    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    frame = read_table(path, encoding)  # DataError (a ValueError) naming the line
    for flag, col in (("--text-col", text_col), ("--id-col", id_col), ("--image-col", image_col)):
        if col and col not in frame.columns:
            raise ValueError(f"{path} has no column {col!r} ({flag}); its columns: {list(frame.columns)}")
    ids = frame[id_col].tolist() if id_col else [str(i) for i in range(len(frame))]
    images = [_image_path(p, path.parent) for p in frame[image_col]] if image_col else [None] * len(frame)
    return [Row(i, t, im) for i, t, im in zip(ids, frame[text_col].tolist(), images)]


def _image_path(value: str, base: Path) -> str | None:
    """As the data loader reads an image column: relative to the CSV's folder; links and missing files: none."""
    value = value.strip()
    if not value or "://" in value:
        return None
    path = Path(value) if Path(value).is_absolute() else base / value
    return str(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------


def _texts(values: list[str]) -> list[str]:
    if values:
        return values
    texts = read_lines(None)  # stdin, as `shelfml predict` reads it (BOM dropped, bad bytes named)
    if not texts:
        raise ValueError("no input texts: give them as arguments or one per line on stdin")
    return texts


def cmd_tag(a: argparse.Namespace) -> int:
    texts = _texts(a.texts)
    with ShelfmlClient(_one_url(a), a.timeout, a.retries, a.batch_size, protocol=a.protocol) as client:
        for text, r in zip(texts, client.tag(texts)):
            print(json.dumps({"text": text, "label": format_path(r.path), "path": list(r.path),
                              "brand": r.brand, "confidence": round(r.confidence, 6),
                              "level_probability": [round(p, 6) for p in r.level_probability],
                              "backoff_path": format_path(r.backoff_path), "abstain": r.abstain,
                              "alternatives": [{"path": format_path(path), "probability": round(prob, 6)}
                                               for path, prob in r.alternatives]}, ensure_ascii=False))
    return 0


def _texts_and_images(a: argparse.Namespace) -> tuple[list[str], list[str | None] | None]:
    """The texts and their ``--image`` files, one per text ('' for none), of ``price`` and ``catalog``."""
    texts = _texts(a.texts)
    if a.image and len(a.image) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(a.image)} --image: give one per text ('' for none)")
    return texts, [p or None for p in a.image] if a.image else None


def cmd_price(a: argparse.Namespace) -> int:
    texts, images = _texts_and_images(a)
    with ShelfmlClient(_one_url(a), a.timeout, a.retries, a.batch_size, protocol=a.protocol) as client:
        for i, (text, r) in enumerate(zip(texts, client.price(texts, images))):
            print(json.dumps({"text": text, "image": images[i] if images else None, "price": round(r.price, 2),
                              "has_image": r.has_image}, ensure_ascii=False))
    return 0


def cmd_catalog(a: argparse.Namespace) -> int:
    texts, images = _texts_and_images(a)
    with ShelfmlClient(_one_url(a), a.timeout, a.retries, a.batch_size, protocol=a.protocol) as client:
        for text, r in zip(texts, client.catalog(texts, images)):
            t, p = r.tag, r.price
            print(json.dumps({"text": text, "label": format_path(t.path), "path": list(t.path), "brand": t.brand,
                              "confidence": round(t.confidence, 6),
                              "level_probability": [round(v, 6) for v in t.level_probability],
                              "backoff_path": format_path(t.backoff_path), "abstain": t.abstain,
                              "price": round(p.price, 2), "has_image": p.has_image,
                              "versions": {"tagger": t.model_version, "price": p.model_version},
                              "ms": {"tagger": round(r.tagger_ms, 2), "price": round(r.price_ms, 2)}},
                             ensure_ascii=False))
    return 0


def cmd_batch(a: argparse.Namespace) -> int:
    if a.image_col and not BATCH_TASKS[a.task].images:
        raise ValueError(f"--image-col is for --task {' or '.join(n for n, t in BATCH_TASKS.items() if t.images)}")
    def rows() -> Iterator[Row]:
        return iter_rows(Path(a.input), a.text_col, a.id_col, a.image_col, a.encoding)

    header = [a.id_col or ROW_ID, *BATCH_TASKS[a.task].columns]
    out, urls = Path(a.out), _urls(a) or [None]

    async def go() -> tuple[BatchSummary, dict]:
        async with contextlib.AsyncExitStack() as stack:
            retries = a.retries if len(urls) == 1 else 0  # several: the pool moves a failed call to another one
            clients = [await stack.enter_async_context(AsyncShelfmlClient(
                url, a.timeout, retries, a.batch_size, concurrency=a.concurrency, protocol=a.protocol)) for url in urls]
            pool = ReplicaPool([Replica(url or "default", c) for url, c in zip(urls, clients)],
                               rounds=a.retries if len(urls) > 1 else 0)
            summary = await run_batch(rows, out, header, make_predict(pool, a.task), a.batch_size,
                                      a.concurrency * len(urls), progress=not a.no_progress)
            return summary, pool.health()

    summary, health = asyncio.run(go())
    missing = sum(1 for r in rows() if r.image is None) if a.image_col else 0
    print(json.dumps({"out": str(out), **vars(summary), **({"rows_without_image": missing} if a.image_col else {}),
                      **({"replicas": health} if len(urls) > 1 else {})}), file=sys.stderr)
    return 0


class UrlList(argparse.Action):
    """``--url`` again adds a server (``batch`` spreads its rows over them); the first one given replaces the
    default ($SHELFML_URL), and one given after the sub-command replaces those before it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (current if isinstance(current, list) else []) + [values])


def _urls(a: argparse.Namespace) -> list[str]:
    """The --url values: repeated, or comma-separated (``$SHELFML_URL`` too)."""
    values = a.url if isinstance(a.url, list) else [a.url] if a.url else []
    return [u.strip() for v in values for u in v.split(",") if u.strip()]


def _one_url(a: argparse.Namespace) -> str | None:
    urls = _urls(a)
    if len(urls) > 1:
        raise ValueError(f"{a.command} talks to one server, got {len(urls)} --url values (batch spreads over several)")
    return urls[0] if urls else None


def build_parser() -> argparse.ArgumentParser:
    def common(parser: argparse.ArgumentParser, keep: bool) -> None:
        """The connection flags, accepted before and after the sub-command (after it wins)."""
        default = (lambda value: value) if keep else (lambda value: argparse.SUPPRESS)
        parser.add_argument("--url", action=UrlList, default=default(os.environ.get("SHELFML_URL")),
                            help="the server's address host:port (default: $SHELFML_URL, else "
                                 f"{DEFAULT_URLS['grpc']} for gRPC, {DEFAULT_URLS['http']} for HTTP); batch: "
                                 "repeat it (or comma-separate) to spread the rows over several replicas")
        parser.add_argument("--protocol", choices=PROTOCOLS,
                            default=default(os.environ.get("SHELFML_PROTOCOL", "grpc")), help="gRPC, or HTTP/REST (KServe v2 JSON + binary tensors) (default: $SHELFML_PROTOCOL, "
                                 "else grpc)")
        parser.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT_S),
                            help=f"seconds per request, retries included (default: {DEFAULT_TIMEOUT_S:g})")
        parser.add_argument("--retries", type=int, default=default(DEFAULT_RETRIES),
                            help=f"retries of a transient error, with backoff (default: {DEFAULT_RETRIES})")
        parser.add_argument("--batch-size", type=int, default=default(DEFAULT_BATCH_SIZE),
                            help=f"rows per request (default: {DEFAULT_BATCH_SIZE})")

    p = Parser(prog="shelfml-client", description=__doc__.split("\n\n")[0])
    add_version(p)
    common(p, keep=True)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tag", help="category path and brand of each text (JSON lines)")
    common(t, keep=False)
    t.add_argument("texts", nargs="*", help="product titles (default: one per line on stdin)")
    t.set_defaults(fn=cmd_tag)

    pr = sub.add_parser("price", help="price of each text (JSON lines)")
    common(pr, keep=False)
    pr.add_argument("texts", nargs="*", help="product titles (default: one per line on stdin)")
    pr.add_argument("--image", action="append", help="a picture file per text, in order ('' for none)")
    pr.set_defaults(fn=cmd_price)

    c = sub.add_parser("catalog", help="path, brand, confidence and price of each text in one call (JSON lines)")
    common(c, keep=False)
    c.add_argument("texts", nargs="*", help="product titles (default: one per line on stdin)")
    c.add_argument("--image", action="append", help="a picture file per text, in order ('' for none)")
    c.set_defaults(fn=cmd_catalog)

    b = sub.add_parser("batch", help="a catalog CSV to an output CSV, resumable")
    common(b, keep=False)
    b.add_argument("input", help="input CSV (gzip works)")
    b.add_argument("--out", required=True, help="output CSV; an existing one is resumed, never overwritten")
    b.add_argument("--task", required=True, type=lambda t: TASK_ALIASES.get(t, t), choices=sorted(BATCH_TASKS),
                   help="the served model: tagger, price or catalog (both in one call) ('tag' is accepted too)")
    b.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    b.add_argument("--text-col", default="title", help="the input's text column")
    b.add_argument("--id-col", help=f"unique id column copied to the output (default: the row number, as {ROW_ID!r})")
    b.add_argument("--image-col", help="picture path column (--task price or catalog; relative to the CSV's folder)")
    b.add_argument("--encoding", default="utf-8", help="of the input CSV")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(fn=cmd_batch)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.batch_size < 1 or getattr(a, "concurrency", 1) < 1:
        return fail("shelfml-client", "--batch-size and --concurrency must be >= 1")
    try:
        return a.fn(a)
    except (ValueError, FileNotFoundError, InvalidRequestError) as e:
        return fail("shelfml-client", e)
    except ClientError as e:
        hint = " (batch: run the same command again to resume)" if a.command == "batch" else ""
        return fail("shelfml-client", f"{e}{hint}", 1)
    except KeyboardInterrupt:
        print("interrupted" + ("; rerun the same command to resume" if a.command == "batch" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
