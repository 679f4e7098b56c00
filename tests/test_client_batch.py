"""``shelfml-client batch`` resumes exactly (torn last line, no duplicates, input order), the client's error
mapping and retries, and, when tests/conftest.py provides ``served_repository``, the real served models."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import threading
import time

import pandas as pd
import pytest
from tritonclient.utils import InferenceServerException

from shelfml.client import cli
from shelfml.client.cli import Row, complete_records, format_records, make_predict, resume_output, run_batch
from shelfml.client.client import (AsyncShelfmlClient, ClientError, DeadlineExceededError, InvalidRequestError,
                                   OverloadedError, PriceResult, ServerUnavailableError, ShelfmlClient, TagResult,
                                   _error, transient)
from shelfml.labels import LEVEL_SEP
from shelfml.model_repository.server import free_port

HEADER = ["id", "path", "brand", "confidence", "error"]
# ids a catalog may really hold: commas, quotes, a newline, non-ASCII
IDS = ["a1", "b,2", 'c "3"', "d\n4", "é5", "f6", "g7"]


def fields(row: Row) -> list[object]:
    return [f"top{LEVEL_SEP}{row.text}", "brand", "0.500000", ""]


def records(ids, start=0, stop=None) -> bytes:
    return format_records([[i, *fields(Row(i, f"t-{i}"))] for i in ids[start:stop]])


@pytest.mark.parametrize("data, ids", [
    (b"", []),
    (b"id,path,br", []),
    (format_records([HEADER]), []),
    (format_records([HEADER]) + records(IDS), IDS),
    (format_records([HEADER]) + records(IDS) + b"h8,top > t-h8,bra", IDS),  # torn inside the last line
    (format_records([HEADER]) + records(IDS, 0, 3) + b'"d\n4",top > t-d', IDS[:3]),  # torn inside a quoted id
    (format_records([HEADER]) + records(IDS, 0, 3) + b'"d\n', IDS[:3]),  # torn right after an embedded newline
    (format_records([HEADER]) + records(IDS, 0, 2) + b"x,only-two-fields\n", IDS[:2]),  # a short record
], ids=["empty", "torn-header", "header-only", "complete", "torn-last-line", "torn-quoted-id",
        "torn-after-embedded-newline", "wrong-width"])
def test_complete_records_keep_only_whole_rows(data, ids):
    good, found = complete_records(data, HEADER)
    assert [r[0] for r in found[1:]] == ids
    assert data[:good] == (format_records([HEADER]) + records(ids) if found else b"")


def test_resume_output_cuts_the_torn_tail_and_returns_the_ids(tmp_path):
    out = tmp_path / "out.csv"
    out.write_bytes(format_records([HEADER]) + records(IDS, 0, 4) + b'"\xc3')  # a split UTF-8 character too
    assert resume_output(out, HEADER) == IDS[:4]
    assert out.read_bytes() == format_records([HEADER]) + records(IDS, 0, 4)
    new = tmp_path / "new.csv"
    assert resume_output(new, HEADER) == [] and new.read_bytes() == format_records([HEADER])


@pytest.mark.parametrize("content, message", [
    (format_records([["row", "price", "has_image", "error"], ["0", "1.0", "0", ""]]), "a different --task"),
    (b"name;value\nx;1\n", r"exists with columns \[.name;value.\]"),
    (b"name;val", "is not a batch output"),
], ids=["other-task", "other-csv", "other-torn-file"])
def test_resume_output_never_overwrites_another_file(tmp_path, content, message):
    out = tmp_path / "out.csv"
    out.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        resume_output(out, HEADER)
    assert out.read_bytes() == content


class Flaky:
    """A predict callable that fails on its ``fail_on``-th call (an interruption or a server going away)."""

    def __init__(self, fail_on: int | None = None):
        self.fail_on, self.calls, self.seen = fail_on, 0, []

    async def __call__(self, chunk: list[Row]) -> list[list[object]]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ServerUnavailableError("server went away", "UNAVAILABLE")
        await asyncio.sleep(0.001 * (len(chunk) % 3))  # chunks complete out of order
        self.seen += [r.id for r in chunk]
        return [fields(r) for r in chunk]


def read_ids(path) -> list[str]:
    return [r[0] for r in list(csv.reader(io.StringIO(path.read_text(), newline="")))[1:]]


@pytest.mark.parametrize("concurrency", [1, 3], ids=["sequential", "concurrent"])
def test_batch_resumes_after_interruption_and_a_torn_line(tmp_path, concurrency):
    rows = [Row(f"{i},{'x' if i % 5 else chr(10)}", f"title {i}") for i in range(53)]
    out = tmp_path / "out.csv"
    with pytest.raises(ServerUnavailableError):
        asyncio.run(run_batch(rows, out, HEADER, Flaky(fail_on=4), batch_size=5, concurrency=concurrency,
                              progress=False))
    written = read_ids(out)
    assert written == [r.id for r in rows[:len(written)]] and len(written) == 15  # chunks 1-3, in order
    with open(out, "ab") as f:  # a kill in the middle of the next write
        f.write(format_records([[rows[15].id, *fields(rows[15])]])[:9])

    second = Flaky()
    summary = asyncio.run(run_batch(rows, out, HEADER, second, batch_size=5, concurrency=concurrency,
                                    progress=False))
    assert sorted(second.seen) == sorted(r.id for r in rows[15:])  # only the missing rows were sent
    assert read_ids(out) == [r.id for r in rows]  # every row once, in input order
    assert (summary.total, summary.skipped, summary.written) == (53, 15, 38)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == HEADER and frame["path"].tolist() == [f"top > {r.text}" for r in rows]

    third = Flaky()
    assert asyncio.run(run_batch(rows, out, HEADER, third, 5, concurrency, progress=False)).written == 0
    assert third.calls == 0


def test_batch_refuses_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate values \(e.g. \['a'\]\)"):
        asyncio.run(run_batch([Row("a", "x"), Row("b", "y"), Row("a", "z")], tmp_path / "o.csv", HEADER, Flaky(),
                              batch_size=2, progress=False))


class RejectingClient:
    """Rejects any request holding an empty text, as the real tagger does (INVALID_ARGUMENT)."""

    async def tag(self, texts):
        if any(not t for t in texts):
            raise InvalidRequestError("tagger: the server rejected the request: empty text", "INVALID_ARGUMENT")
        return [TagResult(("a", "b"), "x", 0.25) for _ in texts]

    async def price(self, texts, images):
        return [PriceResult(10.0, img is not None) for img in images]


def test_a_rejected_chunk_is_retried_row_by_row():
    predict = make_predict(RejectingClient(), "tag")
    got = asyncio.run(predict([Row("1", "ok"), Row("2", ""), Row("3", "fine")]))
    assert got[0] == ["a > b", "x", "0.250000", "", "", 0, "[]", ""] and got[2] == got[0]
    assert got[1][:7] == [""] * 7 and "empty text" in got[1][7]
    priced = asyncio.run(make_predict(RejectingClient(), "price")([Row("1", "a", "/p.jpg"), Row("2", "b")]))
    assert priced == [["10.0000", 1, ""], ["10.0000", 0, ""]]


@pytest.mark.parametrize("argv, message", [
    (["--task", "tag", "--text-col", "name"], "has no column 'name' \\(--text-col\\)"),
    (["--task", "tag", "--id-col", "sku"], "has no column 'sku' \\(--id-col\\)"),
    (["--task", "tag", "--image-col", "image"], "--image-col is for --task price"),
    (["--task", "tag", "--id-col", "id", "--text-col", "title", "--input", "extra.csv"],
     r"line 2 has 4 fields, the header 3; quote fields that hold the delimiter"),
], ids=["text-col", "id-col", "image-col-for-tag", "extra-field"])
def test_batch_input_errors_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "in.csv").write_text("id,title,image\n1,steel bottle,\n")
    (tmp_path / "extra.csv").write_text("id,title,image\nsku-1,steel bottle,,\n")
    if "--input" in argv:
        i = argv.index("--input")
        argv, name = argv[:i] + argv[i + 2:], argv[i + 1]
        (tmp_path / "in.csv").write_text((tmp_path / name).read_text())
    code = cli.main(["--url", f"localhost:{free_port()}", "batch", str(tmp_path / "in.csv"),
                     "--out", str(tmp_path / "out.csv"), *argv])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("status, cls", [
    ("StatusCode.INVALID_ARGUMENT", InvalidRequestError),
    ("StatusCode.UNAVAILABLE", ServerUnavailableError),
    ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceededError),
    ("StatusCode.INTERNAL", ClientError),
], ids=["invalid", "unavailable", "deadline", "internal"])
def test_server_errors_become_named_exceptions(status, cls):
    e = _error(InferenceServerException("text is empty", status=status), "tagger", 1)
    assert type(e) is cls and e.model == "tagger" and "tagger" in str(e) and "text is empty" in str(e)


@pytest.mark.parametrize("status, message, retried, cls", [
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True, OverloadedError),
    ("StatusCode.UNAVAILABLE", "Request timeout expired", True, OverloadedError),
    ("StatusCode.UNAVAILABLE", "failed to connect", True, ServerUnavailableError),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'tagger' has no available versions", True,
     ServerUnavailableError),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'taggr' is not found", False, ClientError),
    ("StatusCode.INVALID_ARGUMENT", "text[0] is empty", False, InvalidRequestError),
], ids=["queue-full", "queue-timeout", "down", "unloading", "unknown-model", "invalid"])
def test_transient_errors_are_retried_and_named(status, message, retried, cls):
    e = InferenceServerException(message, status=status)
    assert transient(e) is retried
    assert type(_error(e, "tagger", 3)) is cls


def test_retries_stop_at_the_deadline():
    """A wait that would pass the client's deadline is not taken: the error comes at once."""
    client = ShelfmlClient(f"localhost:{free_port()}", retries=5, backoff_s=4.0, timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="after 1 attempt"):
        client.tag(["steel bottle"])
    assert time.monotonic() - start < 1.0
    client.close()


def test_unavailable_is_retried_with_backoff_then_raised():
    client = ShelfmlClient(f"localhost:{free_port()}", retries=2, backoff_s=0.2, timeout_s=5)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="after 3 attempt"):
        client.tag(["steel bottle"])
    assert time.monotonic() - start >= 0.1 + 0.2  # two backoffs: 0.2 s, then 0.4 s, each with 0.5x-1.5x jitter
    assert client.ready() is False
    with pytest.raises(TypeError, match="not one string"):
        client.tag("steel bottle")
    with pytest.raises(ValueError, match="2 texts but 1 images"):
        client.price(["a", "b"], [None])
    client.close()


# ---------------------------------------------------------------------------------------------
# Against the real served models (the fixture lives in tests/conftest.py once the repository builder exists).


@pytest.fixture
def served(request):
    try:
        return request.getfixturevalue("served_repository")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no served_repository fixture (the real tagger and price models)")


TEXTS = ["Green Harbor herbal shampoo 500 ml", "steel water bottle 1 l", "cotton t-shirt blue M"] * 5


def test_sync_and_async_clients_agree_on_the_served_models(served):
    with ShelfmlClient(served.grpc_url, batch_size=4) as client:
        client.wait_ready(60, "tagger", "price")
        tags, prices = client.tag(TEXTS), client.price(TEXTS)
    assert len(tags) == len(TEXTS) and all(t.path and 0 < t.confidence <= 1 for t in tags)
    assert tags[0] == tags[3] and all(p.price > 0 and not p.has_image for p in prices)

    async def both():
        async with AsyncShelfmlClient(served.grpc_url, batch_size=3, concurrency=3) as client:
            return await client.tag(TEXTS), await client.price(TEXTS, [None] * len(TEXTS))

    async_tags, async_prices = asyncio.run(both())
    assert async_tags == tags
    assert [p.price for p in async_prices] == pytest.approx([p.price for p in prices], rel=1e-4)


def test_http_clients_give_the_grpc_answers(served, tmp_path, capsys):
    """``protocol="http"`` (tritonclient.http, sync and asyncio) and ``shelfml-client --protocol http``: the same
    tags and prices as gRPC; HTTP errors get the gRPC-named exceptions."""
    url = served.server.http_url
    with ShelfmlClient(served.grpc_url, batch_size=4) as grpc:
        tags, prices = grpc.tag(TEXTS), grpc.price(TEXTS)
    with ShelfmlClient(url, batch_size=4, protocol="http") as http:
        assert http.ready("tagger", "price")
        assert http.tag(TEXTS) == tags
        assert [p.price for p in http.price(TEXTS)] == pytest.approx([p.price for p in prices], rel=1e-6)
        with pytest.raises(InvalidRequestError, match=r"tagger: the server rejected the request: .*text\[0\] is empty"):
            http.tag([""])

    async def both():
        async with AsyncShelfmlClient(url, batch_size=3, concurrency=3, protocol="http") as client:
            return await client.tag(TEXTS), await client.price(TEXTS)

    async_tags, async_prices = asyncio.run(both())
    assert async_tags == tags and [p.price for p in async_prices] == pytest.approx([p.price for p in prices], rel=1e-6)
    assert cli.main(["tag", "--protocol", "http", "--url", url, TEXTS[0]]) == 0
    assert json.loads(capsys.readouterr().out)["brand"] == tags[0].brand
    down = ShelfmlClient(f"localhost:{free_port()}", retries=1, backoff_s=0.1, timeout_s=5, protocol="http")
    with pytest.raises(ServerUnavailableError, match="after 2 attempt"):
        down.tag(["steel bottle"])
    assert down.ready() is False
    down.close()


def test_batch_end_to_end_resumes_against_the_server(served, tmp_path):
    titles = TEXTS + ["", "kids bicycle 16 inch"]
    pd.DataFrame({"sku": [f"s{i}" for i in range(len(titles))], "title": titles}).to_csv(tmp_path / "in.csv",
                                                                                         index=False)
    args = ["--url", served.grpc_url, "--batch-size", "4", "batch", str(tmp_path / "in.csv"), "--task", "tag",
            "--id-col", "sku", "--concurrency", "2", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "full.csv")]) == 0
    full = (tmp_path / "full.csv").read_bytes()
    lines = full.splitlines(keepends=True)
    (tmp_path / "part.csv").write_bytes(b"".join(lines[:6]) + lines[6][:7])  # 5 rows and a torn sixth
    assert cli.main([*args, "--out", str(tmp_path / "part.csv")]) == 0
    assert (tmp_path / "part.csv").read_bytes() == full
    frame = pd.read_csv(tmp_path / "full.csv", dtype=str, keep_default_na=False)
    assert frame["sku"].tolist() == [f"s{i}" for i in range(len(titles))]
    empty = frame[frame["sku"] == f"s{len(TEXTS)}"].iloc[0]
    assert (empty["error"] != "") or (empty["path"] != "")  # rejected with a reason, or a flagged result
    assert list(frame.columns) == ["sku", "path", "brand", "confidence", "level_probability", "backoff_path",
                                   "abstain", "alternatives", "error"]
    for _, row in frame[frame["error"] == ""].iterrows():
        probs = [float(v) for v in row["level_probability"].split(";")]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert row["path"] in [a["path"] for a in json.loads(row["alternatives"])]
        assert row["abstain"] in ("0", "1") and row["path"].startswith(row["backoff_path"])


# ---------------------------------------------------------------------------------------------
# Streaming input and several replicas


def test_the_input_is_streamed_and_its_bad_lines_named(tmp_path):
    from shelfml.client.cli import iter_rows

    src = tmp_path / "in.csv.gz"
    import gzip

    with gzip.open(src, "wt", encoding="utf-8", newline="") as f:
        f.write('\ufeffid,title\nx1,"a, quoted title"\n\nx2,second\n')
    rows = iter_rows(src, "title", "id", None, "utf-8")
    assert next(rows) == Row("x1", "a, quoted title")  # a generator: rows come one at a time
    assert list(rows) == [Row("x2", "second")]
    bad = tmp_path / "bad.csv"
    bad.write_text("title,brand\nok,b\nshifted,by,one\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3 has 3 fields, the header 2"):
        list(iter_rows(bad, "title", None, None, "utf-8"))
    with pytest.raises(ValueError, match="no column 'name'"):
        list(iter_rows(bad, "name", None, None, "utf-8"))


def test_batch_memory_stays_bounded_on_a_large_csv(tmp_path):
    """A 50 MB CSV through ``batch`` (a stand-in model answers instantly): the process's peak memory grows by at
    most 150 MB, and every row is written once, in order."""
    import subprocess
    import sys

    src = tmp_path / "big.csv"
    filler = "x" * 180
    with open(src, "w", encoding="utf-8") as f:
        f.write("id,title\n")
        for i in range(250_000):
            f.write(f"sku-{i},product {i} {filler}\n")
    assert src.stat().st_size > 50e6
    script = f"""
import asyncio, resource, sys
from pathlib import Path
from shelfml.client.cli import iter_rows, run_batch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
async def predict(chunk):
    return [["p", ""] for _ in chunk]
rows = lambda: iter_rows(Path({str(src)!r}), "title", "id", None, "utf-8")
out = Path({str(tmp_path / 'out.csv')!r})
s = asyncio.run(run_batch(rows, out, ["id", "path", "error"], predict, 64, 4, progress=False))
print(s.written, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    written, growth_mb = done.stdout.split()
    assert int(written) == 250_000
    assert float(growth_mb) < 150, f"peak memory grew {growth_mb} MB on a 50 MB input"
    out = (tmp_path / "out.csv").read_text().splitlines()
    assert len(out) == 250_001 and out[1] == "sku-0,p," and out[-1] == "sku-249999,p,"


def test_the_replica_pool_fails_over_and_comes_back():
    from shelfml.client.replicas import Replica, ReplicaPool

    class Server:
        def __init__(self, name: str) -> None:
            self.name, self.up = name, True

        async def tag(self, texts):
            if not self.up:
                raise ServerUnavailableError(f"{self.name} is down", "UNAVAILABLE", "tagger")
            return [self.name for _ in texts]

    a, b = Server("a"), Server("b")
    pool = ReplicaPool([Replica("a", a), Replica("b", b)], cooldown_s=0.2, rounds=2, backoff_s=0.05)

    def run(n: int) -> list[str]:
        return [asyncio.run(pool.call(lambda c: c.tag(["t"])))[0] for _ in range(n)]

    assert run(4) == ["a", "b", "a", "b"]  # round robin
    a.up = False
    assert run(3) == ["b", "b", "b"]  # a failed once, and is out of service
    assert pool.health()["a"] == {"calls": 2, "failures": 1, "in_service": False}
    a.up, b.up = True, False
    time.sleep(0.25)
    assert set(run(3)) == {"a"}
    a.up = False
    with pytest.raises(ServerUnavailableError, match="no replica answered"):
        run(1)


def test_batch_over_two_servers_survives_one_killed(served, tmp_path, capsys):
    """``batch --url A --url B``: the second server is stopped mid-run; its calls move to the first, and every
    row is written once, in input order."""
    from shelfml.model_repository.server import TritonServer

    src = tmp_path / "in.csv"
    rows = 1200
    titles = [f"{TEXTS[i % len(TEXTS)]} lot {i}" for i in range(rows)]
    src.write_text("id,title\n" + "\n".join(f"s{i},{t}" for i, t in enumerate(titles)) + "\n", encoding="utf-8")
    second = TritonServer(served.repo, log_file=tmp_path / "second.log").start()
    out = tmp_path / "out.csv"

    def kill_when_under_way() -> None:  # stop the second server once a sixth of the rows are written
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < rows // 6):
            time.sleep(0.05)
        second.stop()

    killer = threading.Thread(target=kill_when_under_way)
    killer.start()
    try:
        assert cli.main(["batch", str(src), "--out", str(out), "--task", "tagger", "--id-col", "id", "--no-progress",
                         "--url", served.grpc_url, "--url", second.grpc_url, "--batch-size", "2",
                         "--concurrency", "2"]) == 0
    finally:
        killer.join()
        second.stop()
    frame = pd.read_csv(out, keep_default_na=False)
    assert frame["id"].tolist() == [f"s{i}" for i in range(rows)]
    assert (frame["path"] != "").all() and (frame["error"] == "").all()
    health = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["replicas"]
    assert health[second.grpc_url]["calls"] > 0 and health[second.grpc_url]["failures"] >= 1
    assert health[served.grpc_url]["calls"] > health[second.grpc_url]["calls"]
