"""Loaders: folder walking, formats, and files that must be skipped (never crash)."""
from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from ragkit.errors import InputError
from ragkit.loaders import decode_bytes, discover_files, load_documents


def _collect(path, **kw):
    skipped = []
    docs = list(load_documents(path, on_skip=lambda rel, reason: skipped.append((rel, reason)), **kw))
    return {d.id: d for d in docs}, dict(skipped)


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream draws `text` in Helvetica (xref offsets computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "intro.md").write_text("# Intro\n\nWelcome to the *guide*.\n")
    (root / "notes.txt").write_text("Plain notes about caching.\n")
    (root / "api.rst").write_text("API\n===\n\nCall ``get()`` to fetch.\n")
    (root / "page.html").write_text(
        "<html><head><title>T</title><style>p{color:red}</style><script>var secret=1;</script></head>"
        "<body><h2>Visible heading</h2><p>Shown <b>text</b>.</p><!-- a comment --></body></html>")
    (root / "paper.pdf").write_bytes(_minimal_pdf("Portable document text"))
    (root / "data.jsonl").write_text(
        json.dumps({"id": "a1", "title": "A", "body": "first record"}) + "\n"
        + "not json\n"
        + json.dumps({"id": "a2", "title": "B", "body": "second record"}) + "\n")
    (root / ".hidden.md").write_text("hidden file")
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_text("hidden dir")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "lib.md").write_text("build dir")
    (root / "drafts").mkdir()
    (root / "drafts" / "wip.md").write_text("ignored by .gitignore")
    (root / ".gitignore").write_text("drafts/\n*.log\n")
    (root / "run.log").write_text("ignored log")
    return root


def test_formats_and_skips(corpus_dir):
    docs, skipped = _collect(corpus_dir, text_field="body")
    assert set(docs) == {"guide/intro.md", "notes.txt", "api.rst", "page.html", "paper.pdf",
                         "data.jsonl#a1", "data.jsonl#a2"}
    html = docs["page.html"].text
    assert docs["page.html"].meta["title"] == "T"
    assert "Visible heading" in html and "Shown text." in html
    assert "secret" not in html and "color" not in html and "comment" not in html and "T\n" not in html
    assert "Portable document text" in docs["paper.pdf"].text
    assert docs["data.jsonl#a2"].text == "second record" and docs["data.jsonl#a2"].meta["title"] == "B"
    assert docs["data.jsonl#a1"].source == "data.jsonl"
    assert "data.jsonl" in skipped and "1 line" in skipped["data.jsonl"]  # the bad line: one warning
    assert docs["api.rst"].meta["format"] == "rst"


def test_include_exclude_globs(corpus_dir):
    _, files = discover_files(corpus_dir, include=("*.md",))
    assert [f.rel for f in files] == ["guide/intro.md"]
    _, files = discover_files(corpus_dir, exclude=("guide/*", "*.pdf"))
    rels = {f.rel for f in files}
    assert "guide/intro.md" not in rels and "paper.pdf" not in rels and "notes.txt" in rels


def test_single_file_is_a_corpus(corpus_dir):
    docs, _ = _collect(corpus_dir / "notes.txt")
    assert list(docs) == ["notes.txt"]


def test_binary_empty_unreadable_are_skipped_with_one_warning_each(tmp_path, capsys):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("  \n\n\t\n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    os.symlink(tmp_path / "missing-target.txt", tmp_path / "dangling.txt")
    (tmp_path / "ok.txt").write_text("fine")
    docs = load_documents(tmp_path)
    assert [d.id for d in docs] == ["ok.txt"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith("ragkit: warning: skipped ") for line in lines), lines
    for name in ("img.png", "empty.txt", "blank.md", "broken.pdf", "dangling.txt"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert any("binary" in line for line in lines if "img.png" in line)


def test_special_files_are_skipped_with_a_warning_not_read(tmp_path):
    """A FIFO would block a reader forever: it is skipped (and never opened) like any unreadable file."""
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "ok.txt").write_text("fine")
    docs, skipped = _collect(tmp_path)
    assert list(docs) == ["ok.txt"] and skipped == {"pipe.txt": "not a regular file"}


def test_truncated_or_corrupt_gzip_jsonl_is_skipped_whole_with_one_warning(tmp_path):
    import gzip

    lines = "".join(json.dumps({"id": i, "text": f"record {i} " + "words " * 50}) + "\n" for i in range(400))
    good = gzip.compress(lines.encode())
    (tmp_path / "good.jsonl.gz").write_bytes(good)
    (tmp_path / "truncated.jsonl.gz").write_bytes(good[:len(good) // 2])            # EOFError
    corrupt = bytearray(good)
    corrupt[len(good) // 2:len(good) // 2 + 64] = b"\xff" * 64
    (tmp_path / "corrupt.jsonl.gz").write_bytes(bytes(corrupt))                     # zlib.error / CRC
    (tmp_path / "plain.jsonl.gz").write_bytes(lines.encode())                        # not gzip at all
    docs, skipped = _collect(tmp_path)
    assert {d.split("#")[0] for d in docs} == {"good.jsonl.gz"} and len(docs) == 400  # nothing from a damaged file
    assert set(skipped) == {"truncated.jsonl.gz", "corrupt.jsonl.gz", "plain.jsonl.gz"}
    assert all(reason.startswith("damaged gzip file") for reason in skipped.values()), skipped


def test_deeply_nested_json_line_is_skipped_naming_file_and_line(tmp_path):
    (tmp_path / "deep.jsonl").write_text(json.dumps({"text": "first"}) + "\n" + "[" * 100_000 + "\n"
                                         + json.dumps({"text": "third"}) + "\n")
    docs, skipped = _collect(tmp_path)
    assert [d.text for d in docs.values()] == ["first", "third"]
    assert "line 2" in skipped["deep.jsonl"] and "nested too deeply" in skipped["deep.jsonl"]


UNICODE_FILES = [
    ("utf16-bom.txt", "Grüße aus Köln, text in UTF-16".encode("utf-16"), "utf-16"),
    ("utf16be-bom.txt", b"\xfe\xff" + "Grüße aus Köln, big endian".encode("utf-16-be"), "utf-16"),
    ("utf16le.txt", "Grüße aus Köln, no byte-order mark".encode("utf-16-le"), "utf-16-le"),
    ("utf16be.txt", "Grüße aus Köln, no mark, big endian".encode("utf-16-be"), "utf-16-be"),
    ("utf32-bom.txt", "Grüße aus Köln in UTF-32".encode("utf-32"), "utf-32"),
    ("utf8-bom.txt", "\ufeffGrüße aus Köln with a UTF-8 mark".encode(), "utf-8-sig"),
]


@pytest.mark.parametrize("name, data, encoding", UNICODE_FILES, ids=[case[0] for case in UNICODE_FILES])
def test_unicode_text_with_and_without_bom_is_decoded_not_called_binary(tmp_path, name, data, encoding):
    (tmp_path / name).write_bytes(data)
    docs, skipped = _collect(tmp_path)
    assert skipped == {} and docs[name].text.startswith("Grüße aus Köln") and "\ufeff" not in docs[name].text
    assert docs[name].meta["encoding"] == encoding


def test_binary_with_the_utf16_nul_pattern_is_still_binary(tmp_path):
    import array

    (tmp_path / "samples.txt").write_bytes(array.array("h", [(i * 37) % 200 + 1 for i in range(4000)]).tobytes())
    (tmp_path / "ok.txt").write_text("fine")
    _, skipped = _collect(tmp_path)
    assert skipped == {"samples.txt": "binary file"}


def test_non_utf8_fallbacks(tmp_path):
    (tmp_path / "latin.txt").write_bytes("café crème brûlée, déjà vu".encode("cp1252"))
    (tmp_path / "cyrillic.txt").write_bytes(("Привет, как дела? Это проверка кодировки текста. " * 5).encode("cp1251"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfwith a BOM")
    docs, _ = _collect(tmp_path)
    assert docs["latin.txt"].text == "café crème brûlée, déjà vu"
    assert docs["cyrillic.txt"].text.startswith("Привет, как дела?")
    assert docs["bom.txt"].text == "with a BOM"
    assert decode_bytes(b"\xff\xfe\xfa")[0]  # never raises


def test_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="no readable documents"):
        load_documents(tmp_path, on_skip=lambda *a: None)
    with pytest.raises(InputError, match="does not exist"):
        load_documents(tmp_path / "nope")


def test_100mb_file_is_read_without_several_copies(tmp_path):
    size = 100 * 1024 * 1024
    line = ("The quick brown fox jumps over the lazy dog near the river bank. " * 4 + "\n").encode()
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        for _ in range(size // len(line) + 1):
            f.write(line)
    real = path.stat().st_size
    tracemalloc.start()
    try:
        docs = load_documents(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(docs) == 1 and len(docs[0].text) == real
    # bytes + decoded str at most, never a third copy
    assert peak < 2.3 * real, f"peak {peak / real:.2f}x the file size"
    del docs


def test_jsonl_is_streamed(tmp_path):
    path = tmp_path / "big.jsonl"
    rec = {"id": 0, "text": "x" * 1000}
    with open(path, "w") as f:
        for i in range(20000):
            rec["id"] = i
            f.write(json.dumps(rec) + "\n")
    from ragkit.loaders import iter_documents

    tracemalloc.start()
    try:
        n = 0
        for _ in iter_documents(path):
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 20000
    assert peak < path.stat().st_size / 4  # one record at a time, not the 20 MB file
