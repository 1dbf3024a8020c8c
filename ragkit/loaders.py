"""Files -> Documents: plain text, Markdown, reST, HTML (visible text), PDF and JSON Lines.

Anything unreadable (binary, empty, broken PDF, undecodable) is skipped with one warning line,
never a crash. Text that is not UTF-8 is decoded with a stated fallback: UTF-8 (BOM-aware), then
charset-normalizer's best guess, then Latin-1 (which cannot fail).
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ragkit.errors import InputError

log = logging.getLogger("ragkit")

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst", ".rest"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"}
# Folders never worth indexing (the ".gitignore" everyone writes); hidden names are skipped too.
SKIP_DIRS = {"node_modules", "__pycache__", "build", "dist", "venv", "env", "target", "site-packages",
             "htmlcov", "__pypackages__"}
_SNIFF_BYTES = 8192

SkipHandler = Callable[[str, str], None]


@dataclass(frozen=True)
class Document:
    """One loaded text. `id` is stable across runs: the path relative to the corpus root
    (plus `#<record id>` for a JSON Lines record)."""

    id: str
    source: str
    text: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "text": self.text, "meta": dict(self.meta)}


@dataclass(frozen=True)
class SourceFile:
    """A file chosen for loading, before it is read."""

    path: Path
    rel: str  # posix path relative to the corpus root; the stable key of the file


def _warn_skip(rel: str, reason: str) -> None:
    log.warning("skipped %s: %s", rel, reason)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".jsonl.gz", ".ndjson.gz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def _matches(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) or rel.startswith(pat + "/"):
            return True
    return False


def _gitignore_patterns(root: Path) -> tuple[str, ...]:
    """Simple lines of a root .gitignore (no negation) used as extra exclude globs."""
    path = root / ".gitignore"
    if not path.is_file():
        return ()
    out = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            out.append(line.lstrip("/"))
    return tuple(out)


def discover_files(path: str | os.PathLike, include=(), exclude=()) -> tuple[Path, list[SourceFile]]:
    """The files under `path` that would be loaded, sorted, with the corpus root.

    A single file is its own corpus (root = its folder). Hidden files and folders, build folders
    and the root .gitignore's simple patterns are skipped; `include` globs (if any) must match.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a file or a folder of documents")
    if p.is_file():
        return p.parent.resolve(), [SourceFile(p.resolve(), p.name)]
    root = p.resolve()
    exclude = tuple(exclude) + _gitignore_patterns(root)
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
            and not _matches(rel_dir + d, exclude)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = rel_dir + name
            if include and not _matches(rel, include):
                continue
            if _matches(rel, exclude):
                continue
            files.append(SourceFile(Path(dirpath) / name, rel))
    files.sort(key=lambda f: f.rel)
    return root, files


# Short texts fit several code pages equally well; among equally good guesses, prefer the Windows
# code pages (by far the most common source of non-UTF-8 text), Western first.
_PREFERRED = ("cp1252", "cp1251", "cp1250", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258")


def decode_bytes(data: bytes) -> tuple[str, str]:
    """(text, encoding used). The stated fallback: UTF-8 (with or without BOM); else charset-normalizer's
    guess (among equally good guesses a Windows code page, Western first); else Latin-1, which cannot fail."""
    try:
        return data.decode("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        # Judge by a sample: the guess on 64 KB is as good as on 100 MB and far cheaper.
        results = list(from_bytes(data[:65536]))
        if results:
            least = min(r.chaos for r in results)
            tied = [r.encoding for r in results if r.chaos <= least]
            enc = next((e for e in _PREFERRED if e in tied), tied[0])
            return data.decode(enc, errors="replace"), enc
    except (LookupError, ImportError):
        pass
    return data.decode("latin-1"), "latin-1"


def _read_text_file(path: Path) -> tuple[str, str]:
    """Reads a text file holding at most the bytes plus the decoded str (about 2x its size) at once."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        if b"\x00" in head:
            raise _Skip("binary file")
        data = head + f.read()
    del head
    text, enc = decode_bytes(data)
    del data  # free the bytes before the caller keeps the str
    if "\x00" in text:
        raise _Skip("binary file")
    return text, enc


class _Skip(Exception):
    pass


def _html_text(raw: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    # Headings become Markdown headings so the chunker can split on them; blocks become paragraphs.
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.insert_before("\n\n" + "#" * level + " ")
            h.insert_after("\n\n")
    for tag in soup.find_all(["p", "div", "li", "tr", "section", "article", "blockquote", "pre",
                              "table", "ul", "ol", "dd", "dt", "header", "footer", "main"]):
        tag.insert_after("\n\n")
    text = soup.get_text()
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out, blank = [], 0
    for line in lines:
        if line:
            out.append(line)
            blank = 0
        elif not blank:
            out.append("")
            blank = 1
    return "\n".join(out).strip(), title


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    pypdf_log = logging.getLogger("pypdf")
    saved = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # our one warning line says it; pypdf's own would be a second
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001 - any failure here means "can't open"
                raise _Skip("encrypted PDF")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except _Skip:
        raise
    except (PdfReadError, Exception) as exc:  # noqa: BLE001 - broken PDFs raise many kinds
        raise _Skip(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    finally:
        pypdf_log.setLevel(saved)
    return "\n\n".join(p for p in pages if p)


def _iter_jsonl(sf: SourceFile, text_field: str, on_skip: SkipHandler) -> Iterator[Document]:
    """One Document per record, streamed line by line (a 100 MB file is never held whole)."""
    opener = gzip.open if sf.rel.lower().endswith(".gz") else open
    bad = 0
    with opener(sf.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if not isinstance(rec, dict):
                bad += 1
                continue
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                bad += 1
                continue
            rid = rec.get("id", f"L{lineno}")
            meta = {k: v for k, v in rec.items() if k != text_field and isinstance(v, (str, int, float, bool))}
            meta["line"] = lineno
            yield Document(id=f"{sf.rel}#{rid}", source=sf.rel, text=text, meta=meta)
    if bad:
        on_skip(sf.rel, f"{bad} line(s) without a JSON object holding text field {text_field!r}")


def load_file(sf: SourceFile, *, text_field: str = "text", on_skip: SkipHandler = _warn_skip) -> Iterator[Document]:
    """Documents of one file (several for JSON Lines); a file that can't be read yields none and warns once."""
    suffix = _suffix(sf.path)
    try:
        if suffix in JSONL_SUFFIXES:
            n = 0
            for doc in _iter_jsonl(sf, text_field, on_skip):
                n += 1
                yield doc
            if n == 0:
                on_skip(sf.rel, f"no records with a text field {text_field!r}")
            return
        meta: dict = {}
        if suffix == ".pdf":
            text = _pdf_text(sf.path)
            meta["format"] = "pdf"
        else:
            text, enc = _read_text_file(sf.path)
            meta["encoding"] = enc
            if suffix in HTML_SUFFIXES:
                text, title = _html_text(text)
                meta["format"] = "html"
                if title:
                    meta["title"] = title
            else:
                meta["format"] = {".md": "markdown", ".markdown": "markdown", ".rst": "rst",
                                  ".rest": "rst"}.get(suffix, "text")
        if not text.strip():
            raise _Skip("empty (no text)")
        yield Document(id=sf.rel, source=sf.rel, text=text, meta=meta)
    except _Skip as exc:
        on_skip(sf.rel, str(exc))
    except OSError as exc:
        on_skip(sf.rel, f"unreadable ({exc.strerror or exc})")


def iter_documents(path, include=(), exclude=(), text_field: str = "text",
                   on_skip: SkipHandler = _warn_skip) -> Iterator[Document]:
    """Streams the Documents under `path` (file or folder), skipping what can't be read."""
    _, files = discover_files(path, include, exclude)
    for sf in files:
        yield from load_file(sf, text_field=text_field, on_skip=on_skip)


def load_documents(path, include=(), exclude=(), text_field: str = "text",
                   on_skip: SkipHandler = _warn_skip) -> list[Document]:
    """All Documents under `path`; raises InputError when nothing readable is found."""
    docs = list(iter_documents(path, include, exclude, text_field, on_skip))
    if not docs:
        raise InputError(f"no readable documents under {path}; check the path and --include/--exclude globs")
    return docs


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
