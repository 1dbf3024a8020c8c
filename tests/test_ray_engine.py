"""`ragkit index --engine ray` on a real local Ray instance (2 CPUs, shared by this module: Ray takes
10-40 s to start): the same chunks and vectors as the local path, incremental by content hash,
retries of a killed task and a killed actor, a killed driver, and the one-line error without Ray."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ragkit.corpus import Corpus
from ragkit.ray_engine import RayEngine, actor_plan

ROOT = Path(__file__).resolve().parents[1]
NQ = ROOT / "corpora" / "nq-wiki" / "passages.jsonl"


def _make_corpus(folder: Path, n_files: int = 3, per_file: int = 12) -> Path:
    """A few real NQ passages split over JSON Lines files, plus a markdown file (two loaders)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = NQ.read_text().splitlines()
    for f in range(n_files):
        (folder / f"part{f}.jsonl").write_text("\n".join(lines[f * per_file:(f + 1) * per_file]) + "\n")
    (folder / "notes.md").write_text("# Rotating keys\n\nRotate the API key every ninety days.\n\n"
                                     + " ".join(json.loads(lines[-1])["text"] for _ in range(3)) + "\n")
    return folder


def _snapshot(index_dir: Path) -> dict:
    """chunk id -> ((doc_id, source, position, start, end, text, title), vector) of the current generation."""
    corpus = Corpus.open(index_dir.parent, index_dir=index_dir)
    gen = corpus._require()
    ids = [r[0] for r in gen.db.execute("SELECT id FROM chunks")]
    rows = gen.chunks(ids)
    out = {i: ((r.doc_id, r.source, r.position, r.start_char, r.end_char, r.text, r.title),
               gen.index.reconstruct(int(i))) for i, r in rows.items()}
    corpus.close()
    return out


def _assert_same_index(local, local_dir: Path, report, ray_dir: Path) -> None:
    """The Ray build (`report`, `ray_dir`) has the local build's chunk ids, rows and vectors (atol 1e-5)."""
    assert report.chunks_total == local.chunks_total > 20 and report.chunks_embedded == local.chunks_embedded
    a, b = _snapshot(local_dir), _snapshot(ray_dir)
    assert sorted(a) == sorted(b)
    for i in a:
        assert a[i][0] == b[i][0]
        np.testing.assert_allclose(a[i][1], b[i][1], atol=1e-5)


class CountingEngine(RayEngine):
    """The real engine, remembering which texts it sent to the embedding actors."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent: list[str] = []

    def embed(self, corpus, items):
        self.sent += [h for h, _ in items]
        yield from super().embed(corpus, items)


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    ray = pytest.importorskip("ray")
    faults = tmp_path_factory.mktemp("faults")
    # Workers inherit this process's environment (PYTHONPATH, HF_HUB_OFFLINE) and the fault folder.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"RAGKIT_RAY_FAULT_DIR": str(faults)}})
    yield faults
    ray.shutdown()


def _index(folder: Path, index_dir: Path, engine=None, **kw):
    corpus = Corpus.open(folder, index_dir=index_dir)
    try:
        return corpus.index(engine=engine, **kw)
    finally:
        corpus.close()


def test_actor_plan_uses_gpus_when_the_cluster_has_them():
    assert actor_plan({"CPU": 8.0, "GPU": 2.0}, None) == (2, 1.0, 1.0)
    assert actor_plan({"CPU": 8.0}, None) == (8, 1.0, 0.0)
    assert actor_plan({"CPU": 8.0}, 3) == (3, 1.0, 0.0)


def test_missing_ray_is_one_line_naming_the_extra(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _NoRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("No module named 'ray'")
        sys.meta_path.insert(0, _NoRay())
    """))
    corpus = _make_corpus(tmp_path / "docs", n_files=1, per_file=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "index", str(corpus), "--engine", "ray", "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["Error: --engine ray needs Ray Data: pip install 'ragkit[ray]'"]
    assert not (corpus / ".ragkit").exists()
    # The local path never needs Ray, even when it is not installed.
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "index", str(corpus), "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_an_unreachable_ray_address_is_one_line_in_seconds(tmp_path):
    pytest.importorskip("ray")
    corpus = _make_corpus(tmp_path / "docs", n_files=1, per_file=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "index", str(corpus), "--engine", "ray",
                           "--ray-address", "127.0.0.1:1", "-q"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused); check --ray-address "
        "(e.g. ray://HEAD:10001 or HEAD:6379) and that its head node is running"]
    assert (corpus / ".ragkit" / "CURRENT").exists() is False


@pytest.mark.slow
def test_ray_engine_gives_the_local_paths_chunks_and_vectors(ray_instance, tmp_path, capsys):
    corpus = _make_corpus(tmp_path / "docs")
    local = _index(corpus, tmp_path / "local")
    engine = CountingEngine(batch_size=8)
    report = _index(corpus, tmp_path / "ray", engine)
    assert "warning" not in capsys.readouterr().err   # CPU actors: no GPU fallback note (tests/test_embed_device.py)
    _assert_same_index(local, tmp_path / "local", report, tmp_path / "ray")
    assert len(engine.sent) == len(set(engine.sent)) == report.chunks_embedded


@pytest.mark.slow
def test_ray_engine_is_incremental_by_content_hash(ray_instance, tmp_path):
    corpus = _make_corpus(tmp_path / "docs")
    index_dir = tmp_path / "idx"
    _index(corpus, index_dir, RayEngine())
    before = _snapshot(index_dir)
    (corpus / "notes.md").write_text("# Rotating keys\n\nRotate the signing key every thirty days.\n")
    engine = CountingEngine()
    report = _index(corpus, index_dir, engine)
    assert (report.files_changed, report.files_unchanged, report.chunks_added) == (1, 3, 1)
    assert report.chunks_embedded == len(engine.sent) == 1   # only the changed file's new chunk went to the actors
    after = _snapshot(index_dir)
    texts = [row[5] for row, _ in after.values()]
    assert any("thirty days" in t for t in texts) and not any("ninety days" in t for t in texts)
    unchanged = {row for row, _ in before.values() if row[1] != "notes.md"}
    assert unchanged == {row for row, _ in after.values() if row[1] != "notes.md"}
    assert _index(corpus, index_dir, CountingEngine()).chunks_embedded == 0  # nothing to do: Ray not even asked


@pytest.mark.slow
def test_a_killed_chunk_task_and_a_killed_embedding_actor_are_retried(ray_instance, tmp_path):
    corpus = _make_corpus(tmp_path / "docs")
    local = _index(corpus, tmp_path / "local")
    for point in ("chunk", "embed"):
        armed = ray_instance / point
        armed.write_text("")   # the first worker to pass this point exits (os._exit), once
        report = _index(corpus, tmp_path / f"idx-{point}", RayEngine(batch_size=8))
        assert not armed.exists(), f"the {point} fault never fired"
        assert report.chunks_total == local.chunks_total and report.chunks_embedded == local.chunks_embedded


@pytest.mark.slow
def test_a_killed_driver_leaves_the_previous_index_serving_and_a_rerun_completes(ray_instance, tmp_path):
    corpus = _make_corpus(tmp_path / "docs")
    index_dir = tmp_path / "idx"
    first = _index(corpus, index_dir, RayEngine())
    for f in corpus.glob("part*.jsonl"):  # every file changes: a rebuild of the whole corpus
        f.write_text(f.read_text().replace("the", "teh"))
    env = {**os.environ, "RAGKIT_CRASH_AT": "after_embed_group", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "index", str(corpus), "-d", str(index_dir),
                           "--engine", "ray", "--ray-batch-size", "4", "-q"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    c = Corpus.open(corpus, index_dir=index_dir)
    try:
        assert c._require().name == first.generation        # the previous generation still serves
        hits = c.search("Rotate the API key", k=1)
        assert hits and "ninety days" in hits[0].text
    finally:
        c.close()
    again = _index(corpus, index_dir, RayEngine())
    assert again.generation != first.generation and again.files_changed == 3
    assert again.chunks_from_cache > 0      # the killed run's vectors were committed and reused
