"""A damaged cache file (token counts, eval responses) is moved aside with one warning line and a new
cache starts: plan, ask, eval and compare carry on (ragkit.cache_file, as the embedding cache did)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

import model_world as w  # noqa: E402
from llm_server import LLMServer  # noqa: E402
from ragkit.cli import main  # noqa: E402

WARNING = "ragkit: warning: "
GARBAGE = b"garbage, not what ragkit wrote \x00\x01" * 64


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(WARNING)]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "volcano.md").write_text("# Volcanoes\n\nVolcanoes erupt molten rock called lava.\n")
    return folder


def _assert_moved_aside(res, path: Path, what: str) -> None:
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    warned = _warnings(res.stderr)
    assert len(warned) == 1 and f"the {what} {path} is damaged (file is not a database); moved it to " \
                                f"{path.name}.damaged and started a new one" in warned[0], warned
    assert (path.parent / f"{path.name}.damaged").read_bytes() == GARBAGE   # kept for a look


def test_damaged_token_count_cache_is_moved_aside_and_plan_and_ask_carry_on(cache_dir, docs, monkeypatch):
    counts = cache_dir / "token-counts.sqlite"
    counts.write_bytes(GARBAGE)
    _assert_moved_aside(run("plan", docs, "-m", "gpt-4o"), counts, "token-count cache")
    res = run("plan", docs, "-m", "gpt-4o")
    assert res.exit_code == 0 and _warnings(res.stderr) == []          # the new cache works

    counts.write_bytes(GARBAGE)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(responder=lambda req: "Lava [1].") as srv:
        res = run("ask", docs, "what do volcanoes erupt?", "-m", "gpt-4o", "-u", srv.openai_base_url, "--no-stream")
    _assert_moved_aside(res, counts, "token-count cache")
    assert res.stdout.startswith("Lava [1].")


def test_damaged_eval_cache_is_moved_aside_and_eval_runs(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cache = tmp_path / "eval-cache.sqlite"
    cache.write_bytes(GARBAGE)
    with LLMServer(responder=lambda req: "I do not know.") as srv:
        res = run("eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "-l", "500",
                  "--depths", "50", "-n", "1", "-s", "stuff", "--cache", cache, "-o", tmp_path / "run", "--json")
        assert len(srv.requests) == 1
    _assert_moved_aside(res, cache, "eval response cache")


def test_damaged_default_eval_cache_is_moved_aside_and_compare_runs(tmp_path, cache_dir):
    cache = cache_dir / "eval-cache.sqlite"        # the default: $RAGKIT_CACHE_DIR/eval-cache.sqlite
    cache.write_bytes(GARBAGE)
    with LLMServer(responder=w.responder) as srv:
        w.register_models(srv)
        res = run("compare", w.make_corpus(tmp_path), "--questions", w.make_golden(tmp_path, n=3), "-m", "big",
                  "-o", tmp_path / "out")
        assert len(srv.requests) == 3
    _assert_moved_aside(res, cache, "eval response cache")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())


def test_many_threads_opening_one_damaged_cache_move_it_aside_once(cache_dir, capsys):
    from ragkit.tokens import CountCache, counter_for

    path = cache_dir / "token-counts.sqlite"
    path.write_bytes(GARBAGE)
    counter, counts, errors = counter_for("gpt-4o"), [], []

    def worker():
        try:
            cache = CountCache(path)
            try:
                counts.append(cache.count_many(counter, ["molten rock called lava"]))
            finally:
                cache.close()
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(counts) == 8 and len({tuple(c) for c in counts}) == 1
    assert len(_warnings(capsys.readouterr().err)) == 1
    assert (cache_dir / "token-counts.sqlite.damaged").read_bytes() == GARBAGE


def test_a_locked_cache_is_not_mistaken_for_a_damaged_one(cache_dir):
    import sqlite3

    from ragkit.tokens import CountCache

    path = cache_dir / "token-counts.sqlite"
    CountCache(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            from ragkit.cache_file import open_cache

            open_cache(path, lambda p: sqlite3.connect(p, timeout=0.1).execute("SELECT * FROM counts").connection,
                       "token-count cache", "")
    finally:
        holder.close()
    assert not (cache_dir / "token-counts.sqlite.damaged").exists()


def _garble_pages_after_the_header(path: Path) -> None:
    """A cache whose header still reads but whose table pages are garbage: damage found mid-query."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    data = path.read_bytes()
    assert len(data) > page
    path.write_bytes(data[:page] + b"\xff" * (len(data) - page))


def test_a_token_count_cache_damaged_past_its_header_is_moved_aside_mid_plan(cache_dir, docs):
    assert run("plan", docs, "-m", "gpt-4o").exit_code == 0
    counts = cache_dir / "token-counts.sqlite"
    _garble_pages_after_the_header(counts)
    (docs / "volcano.md").write_text("# Volcanoes\n\nVolcanoes erupt lava and ash.\n")   # not a cached total
    res = run("plan", docs, "-m", "gpt-4o")
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    warned = _warnings(res.stderr)
    assert len(warned) == 1 and f"the token-count cache {counts} is damaged (database disk image is malformed)" \
        in warned[0], warned
    res = run("plan", docs, "-m", "gpt-4o")
    assert res.exit_code == 0 and _warnings(res.stderr) == []


def test_an_eval_cache_damaged_past_its_header_is_a_miss_and_a_new_cache(tmp_path, capsys):
    from ragkit.evals.cache import CachedResponse, ResponseCache

    path = tmp_path / "eval-cache.sqlite"
    cache = ResponseCache(path)
    for i in range(200):
        cache.put(f"k{i}", "m", CachedResponse("answer " * 20, 1, 1, 0.1, 0.0, 0.0))
    cache.close()
    _garble_pages_after_the_header(path)
    cache = ResponseCache(path)
    assert cache.get("k7") is None            # the damaged file is set aside; the answer is asked for again
    cache.put("k7", "m", CachedResponse("again", 1, 1, 0.1, 0.0, 0.0))
    assert cache.get("k7").text == "again" and len(cache) == 1
    cache.close()
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and "the eval response cache" in warned[0] and "malformed" in warned[0], warned


def test_an_embedding_cache_damaged_past_its_header_is_moved_aside_mid_index(docs):
    assert run("index", docs, "-q").exit_code == 0
    cache = docs / ".ragkit" / "embcache.sqlite"
    _garble_pages_after_the_header(cache)
    (docs / "bread.txt").write_text("Bread is baked from flour, water and yeast.\n")
    res = run("index", docs, "-q")
    assert res.exit_code == 0 and "Traceback" not in res.stderr and "1 added" in res.stdout, res.output + res.stderr
    warned = _warnings(res.stderr)
    assert len(warned) == 1 and f"the embedding cache {cache} is damaged (database disk image is malformed)" \
        in warned[0], warned
    res = run("search", docs, "flour and yeast", "-k", "1")
    assert res.exit_code == 0 and "bread.txt" in res.stdout.splitlines()[0]
