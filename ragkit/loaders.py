"""Files -> Documents: plain text, Markdown, reST, HTML (visible text), PDF and JSON Lines.

Anything unreadable (binary, empty, broken PDF, damaged gzip, not a regular file, permission denied)
is skipped with one warning line, never a crash. Text is decoded with a stated fallback: the Unicode
encoding a byte-order mark declares (UTF-8/16/32) or BOM-less UTF-16 recognised by its NUL pattern,
else UTF-8, else charset-normalizer's best guess, else Latin-1 (which cannot fail).
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ragkit.span import Span
from ragkit.console import encodable, warn
from ragkit.errors import InputError

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

    def span(self) -> Span:
        """The whole document as a passage (what stuffing sends)."""
        title = self.meta.get("title")
        return Span(self.id, self.source, 0, len(self.text), self.text, title if isinstance(title, str) else "")


@dataclass(frozen=True)
class SourceFile:
    """A file chosen for loading, before it is read."""

    path: Path
    rel: str  # posix path relative to the corpus root; the stable key of the file


def warn_skip(rel: str, reason: str) -> None:
    """The default SkipHandler: one `ragkit: warning: skipped <file>: <reason>` line on stderr."""
    warn(f"skipped {rel}: {reason}")


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
    A name's bytes that are not UTF-8 appear escaped in its `rel` (console.encodable), the text
    every index key, prompt and message uses; `path` stays the real one.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a file or a folder of documents")
    if p.is_file():
        return p.parent.resolve(), [SourceFile(p.resolve(), encodable(p.name))]
    root = p.resolve()
    include = tuple(encodable(g) for g in include)
    exclude = tuple(encodable(g) for g in tuple(exclude) + _gitignore_patterns(root))
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = encodable(Path(dirpath).relative_to(root).as_posix())
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
            and not _matches(rel_dir + encodable(d), exclude)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = rel_dir + encodable(name)
            if include and not _matches(rel, include):
                continue
            if _matches(rel, exclude):
                continue
            files.append(SourceFile(Path(dirpath) / name, rel))
    return root, _one_file_per_rel(files)


_SHADOWED: set[Path] = set()   # undecodable names already warned about in this process


def _one_file_per_rel(files: list[SourceFile]) -> list[SourceFile]:
    """Sorted by rel, one file per rel. Two files share one only when an undecodable name, escaped,
    spells another file's real name (`caf\\xe9.txt`); the real name keeps it, the other is skipped."""
    by_rel: dict[str, SourceFile] = {}
    for sf in files:
        other = by_rel.get(sf.rel)
        if other is not None:
            real_name = sf.path.as_posix().endswith("/" + sf.rel)   # not an escaped one
            escaped, by_rel[sf.rel] = (other, sf) if real_name else (sf, other)
            if escaped.path not in _SHADOWED:  # a folder is discovered more than once per command
                _SHADOWED.add(escaped.path)
                warn_skip(escaped.rel, "its name is not UTF-8 and, escaped, is the name of another file here; "
                                       "rename it")
            continue
        by_rel[sf.rel] = sf
    return sorted(by_rel.values(), key=lambda f: f.rel)


# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _bom_encoding(data: bytes) -> str | None:
    return next((enc for bom, enc in _BOMS if data.startswith(bom)), None)


def _utf16_without_bom(head: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when `head` looks like BOM-less UTF-16 of mostly-Latin text: every
    other byte NUL, the bytes between (almost) never, and it decodes to printable text. A binary
    file of small 16-bit numbers has the same NUL pattern but decodes to control characters."""
    pairs = len(head) // 2
    if pairs < 4:
        return None
    even, odd = head[0:2 * pairs:2], head[1:2 * pairs:2]
    for zeros, letters, enc in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= 0.4 * pairs and letters.count(0) <= pairs // 100:
            try:
                sample = head[:2 * pairs].decode(enc)
            except UnicodeDecodeError:  # e.g. cut inside a surrogate pair at the sniff boundary
                sample = head[:2 * pairs].decode(enc, errors="replace")
            printable = sum(ch.isprintable() or ch in "\t\n\r\f\v" for ch in sample)
            return enc if printable >= 0.95 * len(sample) else None
    return None


def sniff_unicode(head: bytes) -> str | None:
    """The Unicode encoding of a file starting with `head` when its bytes say so: a byte-order mark
    (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE) or BOM-less UTF-16. Such text may hold NUL bytes and is not binary."""
    return _bom_encoding(head) or _utf16_without_bom(head)


# Short texts fit several code pages equally well; among equally good guesses, prefer the Windows
# code pages (by far the most common source of non-UTF-8 text), Western first.
_PREFERRED = ("cp1252", "cp1251", "cp1250", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258")


def decode_bytes(data: bytes) -> tuple[str, str]:
    """(text, encoding used). The stated fallback: the Unicode encoding a byte-order mark declares (bad
    bytes replaced) or BOM-less UTF-16; else UTF-8; else charset-normalizer's guess (among equally good
    guesses a Windows code page, Western first); else Latin-1, which cannot fail."""
    declared = sniff_unicode(data[:_SNIFF_BYTES])
    if declared:
        try:
            return data.decode(declared), declared
        except UnicodeDecodeError:
            if _bom_encoding(data):  # declared by the file itself: keep the text, mark the bad bytes
                return data.decode(declared, errors="replace"), declared
    try:
        return data.decode("utf-8"), "utf-8"
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
        if b"\x00" in head and not sniff_unicode(head):  # UTF-16/32 text is full of NUL bytes
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


def _check_gzip(path: Path) -> None:
    """Decompresses a gzip file once without keeping it, so a truncated or corrupt one is skipped
    whole instead of indexed up to the damage (the reader raises only when it reaches it)."""
    with gzip.open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def _iter_jsonl(sf: SourceFile, text_field: str, bad: list[tuple[int, str]]) -> Iterator[Document]:
    """One Document per record, streamed line by line (a 100 MB file is never held whole).
    Lines that hold no usable record are appended to `bad` as (line number, why)."""
    gz = sf.rel.lower().endswith(".gz")
    if gz:
        _check_gzip(sf.path)
    with (gzip.open if gz else open)(sf.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                bad.append((lineno, "not JSON"))
                continue
            except RecursionError:  # e.g. 100,000 nested brackets: the parser gives up, we skip the line
                bad.append((lineno, "JSON nested too deeply"))
                continue
            if not isinstance(rec, dict):
                bad.append((lineno, "not a JSON object"))
                continue
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                bad.append((lineno, f"no text in field {text_field!r}"))
                continue
            rid = rec.get("id", f"L{lineno}")
            # JSON may escape a lone surrogate ("\\ud800"), which nothing downstream can encode: shown escaped
            meta = {encodable(k): encodable(v) if isinstance(v, str) else v for k, v in rec.items()
                    if k != text_field and isinstance(v, (str, int, float, bool))}
            meta["line"] = lineno
            yield Document(id=encodable(f"{sf.rel}#{rid}"), source=sf.rel, text=encodable(text), meta=meta)


def _jsonl_problem(records: int, bad: list[tuple[int, str]], text_field: str) -> str:
    if not bad:
        return f"no records with a text field {text_field!r}"
    lineno, why = bad[0]
    return (f"{len(bad)} line(s) without a JSON object holding text field {text_field!r} (first: line {lineno}, "
            f"{why})" + ("" if records else "; no records left"))


def load_file(sf: SourceFile, *, text_field: str = "text", on_skip: SkipHandler = warn_skip) -> Iterator[Document]:
    """Documents of one file (several for JSON Lines); a file that can't be read yields none and warns once."""
    suffix = _suffix(sf.path)
    try:
        # A FIFO or device would block the read forever or stream without end: only regular files.
        if not stat.S_ISREG(os.stat(sf.path).st_mode):
            raise _Skip("not a regular file")
        if suffix in JSONL_SUFFIXES:
            n, bad = 0, []
            for doc in _iter_jsonl(sf, text_field, bad):
                n += 1
                yield doc
            if bad or n == 0:
                on_skip(sf.rel, _jsonl_problem(n, bad, text_field))
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
                    meta["title"] = encodable(title)
            else:
                meta["format"] = {".md": "markdown", ".markdown": "markdown", ".rst": "rst",
                                  ".rest": "rst"}.get(suffix, "text")
        if not text.strip():
            raise _Skip("empty (no text)")
        yield Document(id=sf.rel, source=sf.rel, text=encodable(text), meta=meta)  # a PDF's text may hold a lone surrogate
    except _Skip as exc:
        on_skip(sf.rel, str(exc))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # what a truncated or corrupt .gz raises
        on_skip(sf.rel, f"damaged gzip file ({type(exc).__name__}: {exc or 'ends too early'})")
    except OSError as exc:
        on_skip(sf.rel, f"unreadable ({exc.strerror or exc})")


def iter_documents(path, include=(), exclude=(), text_field: str = "text",
                   on_skip: SkipHandler = warn_skip) -> Iterator[Document]:
    """Streams the Documents under `path` (file or folder), skipping what can't be read."""
    _, files = discover_files(path, include, exclude)
    for sf in files:
        yield from load_file(sf, text_field=text_field, on_skip=on_skip)


def load_documents(path, include=(), exclude=(), text_field: str = "text",
                   on_skip: SkipHandler = warn_skip) -> list[Document]:
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
