"""Damaged and hostile inputs through the real CLI, index and model (the fault probe's findings): each
gives one warning line or one clear error line, never a traceback; nothing is lost or left behind."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from llm_server import LLMServer  # noqa: E402
from ragkit import store  # noqa: E402
from ragkit.cli import main  # noqa: E402

WARNING = "ragkit: warning: "


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(WARNING)]


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "volcano.md").write_text("# Volcanoes\n\nVolcanoes erupt molten rock called lava.\n")
    (folder / "ocean.txt").write_text("The Pacific is the largest and deepest ocean on Earth.\n")
    return folder


def _index_json(folder, *extra) -> dict:
    res = run("index", folder, "--json", *extra)
    assert res.exit_code == 0, res.output + res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


def test_truncated_jsonl_gz_is_skipped_and_the_index_run_completes(docs):
    data = gzip.compress("".join(json.dumps({"text": f"record {i} about bread"}) + "\n" for i in range(50)).encode())
    (docs / "records.jsonl.gz").write_bytes(data[:len(data) // 2])
    res = run("index", docs, "-q")
    assert res.exit_code == 0, res.output + res.stderr
    assert "files: 2 added, 0 changed, 0 removed, 0 unchanged, 1 skipped" in res.stdout
    assert _warnings(res.stderr) == [f"{WARNING}skipped records.jsonl.gz: damaged gzip file (EOFError: Compressed "
                                     "file ended before the end-of-stream marker was reached)"]


def test_symlink_loop_and_dangling_symlink_warn_in_index_and_ask(docs):
    os.symlink("loop-b.txt", docs / "loop-a.txt")
    os.symlink("loop-a.txt", docs / "loop-b.txt")
    os.symlink(docs.parent / "missing.txt", docs / "dangling.txt")
    res = run("index", docs, "-q")
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    assert "files: 2 added, 0 changed, 0 removed, 0 unchanged, 3 skipped" in res.stdout
    warned = _warnings(res.stderr)
    assert len(warned) == 3, warned
    for name, why in (("loop-a.txt", "Too many levels of symbolic links"),
                      ("loop-b.txt", "Too many levels of symbolic links"),
                      ("dangling.txt", "No such file or directory")):
        assert f"{WARNING}skipped {name}: unreadable ({why})" in warned
    # Still broken next run: reported as skipped, and no new generation is written for them.
    again = _index_json(docs)
    assert (again["files_added"], again["files_changed"], again["files_unchanged"], again["files_skipped"]) == (0, 0, 2, 3)
    assert again["generation"] == "g000001"

    res = run("ask", docs, "which ocean is the deepest?", "--dry-run")  # `ask` reads the same folder
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    assert sum("loop-a.txt" in line for line in _warnings(res.stderr)) == 1


def _without_root_read_override():
    """In the child only: root loses CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so a mode-000 file is
    unreadable to it as to anyone (dropped from the bounding set before exec; needs CAP_SETPCAP)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_file_denied_on_first_run_is_indexed_after_chmod_644(docs):
    """Permission denied for real (not simulated): the first build runs in a child process without
    root's read override. chmod does not change the file's size or mtime, so a build that trusted
    its stat would call it unchanged forever."""
    secret = docs / "secret.txt"
    secret.write_text("The vault combination is kept by the night porter.\n")
    secret.chmod(0)
    try:
        probe = subprocess.run(["cat", str(secret)], preexec_fn=_without_root_read_override, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop root's read override here: {exc}")
    if probe.returncode == 0:
        pytest.skip("a mode-000 file stays readable to the child process here")
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    first = subprocess.run([sys.executable, "-m", "ragkit.cli", "index", str(docs), "-q"], env=env,
                           preexec_fn=_without_root_read_override, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "skipped secret.txt: unreadable (Permission denied)" in first.stderr
    assert "2 added, 0 changed, 0 removed, 0 unchanged, 1 skipped" in first.stdout

    secret.chmod(0o644)
    report = _index_json(docs)
    assert (report["files_changed"], report["files_skipped"], report["skipped"]) == (1, 0, [])
    res = run("search", docs, "who keeps the vault combination?", "-k", "1", "--json")
    assert json.loads(res.stdout)["hits"][0]["source"] == "secret.txt"


def _garble(path: Path) -> None:
    path.write_bytes(b"this is not what ragkit wrote here \x00\x01\x02" * 40)


@pytest.mark.parametrize("damaged", ["CURRENT", "chunks.sqlite", "manifest.json", "index.faiss"])
def test_rebuild_recovers_from_a_damaged_index(docs, damaged):
    assert run("index", docs, "-q").exit_code == 0
    index_dir = docs / ".ragkit"
    gen = store.read_current(index_dir)
    _garble(index_dir / damaged if damaged == "CURRENT" else index_dir / gen / damaged)
    for args in (("search", docs, "lava"), ("index", docs, "-q")):
        res = run(*args)
        assert res.exit_code == 1 and "Traceback" not in res.stderr, res.output + res.stderr
        assert res.stderr.startswith("Error: ") and len(res.stderr.splitlines()) == 1
        assert f"{index_dir}" in res.stderr and "is damaged" in res.stderr and "--rebuild" in res.stderr
    report = _index_json(docs, "--rebuild")
    assert report["files_added"] == 2 and report["chunks_total"] == 2
    res = run("search", docs, "molten rock", "-k", "1")
    assert res.exit_code == 0 and "volcano.md" in res.stdout.splitlines()[0]


def test_damaged_embedding_cache_is_moved_aside_with_one_warning(docs):
    assert run("index", docs, "-q").exit_code == 0
    cache = docs / ".ragkit" / "embcache.sqlite"
    _garble(cache)
    (docs / "bread.txt").write_text("Bread is baked from flour, water and yeast.\n")
    res = run("index", docs, "-q")
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    assert "1 added" in res.stdout
    warned = _warnings(res.stderr)
    assert len(warned) == 1 and f"the embedding cache {cache} is damaged" in warned[0], warned
    assert (cache.parent / "embcache.sqlite.damaged").read_bytes().startswith(b"this is not what ragkit wrote")
    (docs / "bread.txt").write_text("Sourdough bread uses a wild starter.\n")
    res = run("index", docs, "-q")
    assert res.exit_code == 0 and _warnings(res.stderr) == []  # the new cache works


def test_failed_first_index_of_an_empty_folder_leaves_no_index_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("index", empty)
    assert res.exit_code == 1 and "no files to index" in res.stderr
    assert list(empty.iterdir()) == []


def test_file_names_with_control_characters_print_on_one_line(tmp_path):
    """A name holding a newline must not forge an output line in any command that prints it."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "evil\nfiles: 9 added.txt").write_text("The lighthouse keeper logs every passing ship.\n")
    (folder / "logo\r\x1b[2K.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (folder / "[bold]styled.txt").write_text("Rich markup in a name is text, not a style.\n")

    res = run("index", folder, "-q")
    assert res.exit_code == 0, res.output + res.stderr
    assert res.stderr.splitlines() == [f"{WARNING}skipped logo\\r\\x1b[2K.png: binary file"]
    assert not any(line.startswith("files: 9") for line in res.stdout.splitlines())

    res = run("search", folder, "who logs passing ships?", "-k", "1")
    assert res.stdout.splitlines()[0].endswith("  evil\\nfiles: 9 added.txt  [0:46]")

    res = run("count", folder)
    assert res.exit_code == 0 and "evil\\nfiles: 9 added.txt" in res.stdout and "[bold]styled.txt" in res.stdout
    assert _warnings(res.stderr) == [f"{WARNING}skipped logo\\r\\x1b[2K.png: binary file"]

    with LLMServer(responder=lambda req: "The keeper logs ships [1][2].") as srv:
        res = run("ask", folder, "who logs passing ships?", "-u", srv.openai_base_url, "--no-stream")
    assert res.exit_code == 0, res.output + res.stderr
    # numbered in prompt order (the best match for the question first), each name on its own line
    cited = sorted(line.split("] ", 1)[1] for line in res.stdout.splitlines() if line.startswith("  ["))
    assert cited == ["[bold]styled.txt chars 0-44", "evil\\nfiles: 9 added.txt chars 0-47"], res.stdout
    assert not any(line.startswith("files: 9") for line in res.stdout.splitlines())


def test_every_command_warns_with_the_same_prefix(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("Plain notes about caching.\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    expected = [f"{WARNING}skipped logo.png: binary file"]

    from ragkit.loaders import load_documents

    load_documents(folder)  # the library's default
    assert capsys.readouterr().err.splitlines() == expected
    for args in (("index", folder, "-q"), ("count", folder), ("ask", folder, "what about caching?", "--dry-run")):
        res = run(*args)
        assert res.exit_code == 0, res.output + res.stderr
        assert _warnings(res.stderr) == expected and res.stderr.splitlines() == expected, (args, res.stderr)


def test_an_error_naming_a_file_with_a_newline_stays_one_line(tmp_path):
    from click.testing import CliRunner

    from ragkit.cli import main

    bad = tmp_path / "evil\nError: forged line"
    res = CliRunner().invoke(main, ["count", str(bad)])
    assert res.exit_code != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "\\n" in lines[0], res.stderr
