"""Per-file source totals in the count cache: a new process reads an unchanged corpus's fenced token
costs instead of counting every source again; a changed file is counted again; processes agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ragkit.answer import Session
from ragkit.prompt import Framing
from ragkit.tokens import CountCache, counter_for

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
HOUR_AGO = time.time() - 3600

COUNT = """
import json, sys
from ragkit.answer import Session
from ragkit.tokens import counter_for
s = Session(sys.argv[1], model=sys.argv[2], ledger=False)
print(json.dumps(s._counts(counter_for(sys.argv[2]), s._sources()).__dict__))
"""


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha is the first letter. " * 40)
    (folder / "b.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": f"Record {i} says hello.",
                                                        "title": f"Title {i}"}) + "\n" for i in range(30)))
    for f in folder.iterdir():
        os.utime(f, (HOUR_AGO, HOUR_AGO))   # settled files: safely older than the read (tokens.RACY_NS)
    return folder


def counted(folder: Path) -> dict:
    with Session(folder, model=MODEL, ledger=False) as s:
        return s._counts(counter_for(MODEL), s._sources()).__dict__


def in_a_new_process(folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", COUNT, str(folder), MODEL], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


def uncached(folder: Path) -> dict:
    with Session(folder, model=MODEL, ledger=False) as s:
        return Framing(counter_for(MODEL)).count_sources(s._sources(), use_cache=False).__dict__


def saved_rows(folder: Path) -> list[tuple]:
    cache = CountCache()
    try:
        return cache._db.execute("SELECT path, totals FROM file_totals WHERE path LIKE ? ORDER BY path",
                                 (str(folder.resolve()) + "/%",)).fetchall()
    finally:
        cache.close()


def test_two_processes_agree_and_the_second_reads_the_saved_totals(tmp_path):
    folder = corpus(tmp_path)
    first = in_a_new_process(folder)
    assert first == uncached(folder)
    assert [Path(p).name for p, _ in saved_rows(folder)] == ["a.txt", "b.jsonl"]
    assert in_a_new_process(folder) == first
    # A poisoned total proves a new process reads the saved totals rather than counting again.
    cache = CountCache()
    with cache._db:
        cache._db.execute("UPDATE file_totals SET totals = ? WHERE path = ?",
                          (json.dumps([30, 1, 1]), str((folder / "b.jsonl").resolve())))
    cache.close()
    assert in_a_new_process(folder)["text_tokens"] != first["text_tokens"]


def test_an_edited_file_is_counted_again(tmp_path):
    folder = corpus(tmp_path)
    before = counted(folder)
    path = folder / "a.txt"
    text = path.read_text()
    edited = text.replace("Alpha is the first letter. ", "a b c d e f g h i j k l m n", 1)
    assert len(edited) == len(text)                    # the same size: only the mtime tells
    path.write_text(edited)
    os.utime(path, (HOUR_AGO + 60, HOUR_AGO + 60))   # changed, and settled
    after = counted(folder)
    assert after == uncached(folder) and after["text_tokens"] > before["text_tokens"]
    assert in_a_new_process(folder) == after


def test_a_file_modified_just_now_is_not_cached(tmp_path):
    """Its stamp may not change again within the filesystem's timestamp granularity (git's racy rule)."""
    folder = corpus(tmp_path)
    (folder / "a.txt").write_text("Written a moment ago.")
    assert counted(folder) == uncached(folder)
    assert [Path(p).name for p, _ in saved_rows(folder)] == ["b.jsonl"]
