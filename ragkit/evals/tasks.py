"""Eval tasks: each is a dataset generator (samples at a context length and depth) + a prompt + a scorer.

Lengths are in the target model's tokens (its TokenCounter). Every generator is seeded, so the same
grid gives byte-identical prompts: that is what makes the response cache and resume work.

A sample's context is a tuple of *units* (sentence chunks, documents, key-value records) whose
concatenation is what `stuff` sends; `retrieve` ranks the same units and packs the best into a budget.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from ragkit.config import bundled
from ragkit.errors import InputError
from ragkit.evals import scoring

# Shipped in the package (copies of the repository's corpora/, see ragkit/data/evals/README.md).
BUNDLED_CORPUS = bundled("evals", "nq-wiki")
BUNDLED_QUESTIONS = bundled("evals", "questions", "nq-wiki.jsonl")
BUNDLED_KV = bundled("evals", "kv-retrieval", "kv-retrieval-75_keys-first50.jsonl.gz")


class Counter(Protocol):
    def count(self, text: str) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Sample:
    """One question over one context, at one grid point (length x depth)."""

    task: str
    sample: int                    # index within the grid cell (also the seed offset)
    length: int                    # requested context size, in `length_unit`
    length_unit: str               # "tokens" | "docs"
    depth: float                   # where the answer sits, in `depth_unit`
    depth_unit: str                # "percent" (0 = start, 100 = end) | "position" (0-based document index)
    question: str
    answers: tuple[str, ...]
    units: tuple[str, ...]         # the context, in order; "".join-able for needle, one per doc/record otherwise
    gold_units: tuple[int, ...]    # indices of the units holding the answer (diagnostics only)
    meta: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {"task": self.task, "sample": self.sample, "length": self.length, "length_unit": self.length_unit,
                "depth": self.depth, "depth_unit": self.depth_unit, "question": self.question,
                "answers": list(self.answers), "gold_units": list(self.gold_units), "meta": self.meta}


class Task:
    """Base class: subclasses set `name`, `system`, `scorer_name` and implement samples()/render()."""

    name = "task"
    system = ""
    scorer_name = "subspan_em"
    length_unit = "tokens"
    depth_unit = "percent"

    def samples(self, counter: Counter, lengths: Sequence[int], depths: Sequence[float],
                n_samples: int) -> list[Sample]:
        # Sample-major within a length: a run stopped early still has every depth of its first samples.
        return [self.make_sample(counter, length, depth, i)
                for length in lengths for i in range(n_samples) for depth in depths]

    def make_sample(self, counter: Counter, length: int, depth: float, index: int) -> Sample:
        raise NotImplementedError

    def render(self, sample: Sample, units: Sequence[str], *, retrieved: bool) -> str:
        """The user prompt for these units (all of them for stuff, the packed ones for retrieve)."""
        raise NotImplementedError

    def score(self, prediction: str, sample: Sample) -> float:
        return scoring.SCORERS[self.scorer_name]()(prediction, sample.answers)

    def ranking_texts(self, sample: Sample) -> Sequence[str]:
        """Each unit as `ragkit ask` would read it to order stuffed documents (default: the unit itself)."""
        return sample.units

    def unit_framing_tokens(self, sample: Sample, counter: Counter, unit_tokens: Sequence[int]) -> int:
        """Tokens the rendered prompt adds around each unit beyond its own text ("Document [i](Title: …)",
        separators), rounded up: what `retrieve` reserves per packed unit, as ask reserves a source's fence."""
        if not sample.units:
            return 0
        every = counter.count(self.render(sample, sample.units, retrieved=True))
        extra = every - counter.count(self.render(sample, [], retrieved=True)) - sum(unit_tokens)
        return max(0, -(-extra // len(sample.units)))

    def describe(self) -> dict:
        return {"task": self.name, "scorer": self.scorer_name}


# ---------------------------------------------------------------- needle in a haystack

@dataclass(frozen=True)
class Needle:
    """A sentence to hide, the question it answers and the accepted answers."""

    text: str
    question: str
    answers: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"text": self.text, "question": self.question, "answers": list(self.answers)}


def _as_needle(n) -> Needle:
    """A Needle, or a suite's table {text, question, answers = [...]} (or answer = "...")."""
    if isinstance(n, Needle):
        return n
    try:
        answers = n.get("answers") or [n["answer"]]
        return Needle(str(n["text"]), str(n["question"]), tuple(str(a) for a in answers))
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"a needle needs text, question and answers: got {n!r}") from None


_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_NAMES = ["Halvorsen", "Quillfeather", "Marrowind", "Tessaly", "Brackenholt", "Vintrelle", "Oskarby", "Duvessa"]
_THINGS = ["smoked cardamom", "pickled quince", "black garlic", "candied fennel", "roasted chicory",
           "salted plum", "burnt honey", "dried hibiscus"]
_COLOURS = ["saffron yellow", "teal green", "brick red", "slate violet", "copper orange", "pearl grey"]
_ANIMALS = ["a one-eyed heron", "a three-legged fox", "a blue-tongued skink", "a white raven",
            "a spotted tapir", "a grey pangolin"]


def _default_needle(rng: random.Random, kind: int) -> Needle:
    """Fictional facts with random values: no model can answer them from memory."""
    name = rng.choice(_NAMES)
    kind %= 4
    if kind == 0:
        code = f"{rng.randint(1000, 9999)}-{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}"
        return Needle(f"The access code for the {name} archive vault is {code}.",
                      f"What is the access code for the {name} archive vault?", (code,))
    if kind == 1:
        thing = rng.choice(_THINGS)
        return Needle(f"The secret ingredient in the {name} family's lighthouse soup is {thing}.",
                      f"What is the secret ingredient in the {name} family's lighthouse soup?", (thing,))
    if kind == 2:
        colour = rng.choice(_COLOURS)
        return Needle(f"During its last refit the research ship {name} Vale was repainted {colour}.",
                      f"What colour was the research ship {name} Vale repainted during its last refit?", (colour,))
    animal = rng.choice(_ANIMALS)
    return Needle(f"The mascot of the {name} chess club is {animal}.",
                  f"What is the mascot of the {name} chess club?", (animal.split(" ", 1)[1],))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a new sentence starts (0 and len(text) included)."""
    return sorted({0, len(text), *(m.end() for m in _SENTENCE_END.finditer(text))})


def split_sentences(text: str) -> list[str]:
    """Pieces that concatenate back to `text` exactly, each ending after its sentence's white space."""
    bounds = sentence_boundaries(text)
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def chunk_text(text: str, counter: Counter, chunk_tokens: int) -> list[str]:
    """Sentence-packed chunks of about `chunk_tokens` that concatenate back to `text` exactly."""
    chunks: list[str] = []
    current, current_tokens = "", 0
    for sentence in split_sentences(text):
        n = counter.count(sentence)
        if current and current_tokens + n > chunk_tokens:
            chunks.append(current)
            current, current_tokens = "", 0
        current += sentence
        current_tokens += n
    if current:
        chunks.append(current)
    return chunks


def load_passages(path: Path | str | None = None) -> list[dict]:
    """Passages as dicts (id, title, text): a JSONL file/folder of them, or any folder ragkit can load."""
    path = Path(path) if path else BUNDLED_CORPUS
    files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
    passages: list[dict] = []
    if files and all(f.suffix == ".jsonl" for f in files):
        for f in files:
            with f.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        if "text" in row:
                            passages.append({"id": str(row.get("id", len(passages))),
                                             "title": str(row.get("title", "")), "text": row["text"]})
    if not passages:
        from ragkit.loaders import load_documents  # the user's own corpus, any supported format

        for doc in load_documents(path):
            passages.append({"id": doc.id, "title": doc.meta.get("title", doc.source), "text": doc.text})
    if not passages:
        raise InputError(f"no passages found in {path}; point --corpus at a folder of text files or a JSONL file")
    return passages


class NeedleTask(Task):
    """Needle(s) hidden at a depth in a haystack of corpus text cut to an exact token length."""

    name = "needle"
    system = ("You are a careful reader. Answer the question using only the document you are given. "
              "Reply with the answer only, in a few words.")

    def __init__(self, corpus: Path | str | None = None, needles: Sequence[Needle] = (), n_needles: int = 1,
                 chunk_tokens: int = 100, seed: int = 0):
        self.corpus = str(corpus) if corpus else None
        self.passages = load_passages(corpus)
        self.custom_needles = tuple(_as_needle(n) for n in needles)
        self.n_needles = max(1, len(self.custom_needles) or n_needles)
        self.chunk_tokens = chunk_tokens
        self.seed = seed
        self.scorer_name = "subspan_em" if self.n_needles == 1 else "all_needles"

    def describe(self) -> dict:
        return {**super().describe(), "corpus": self.corpus or "bundled:nq-wiki", "n_needles": self.n_needles,
                "needles": [n.to_dict() for n in self.custom_needles], "chunk_tokens": self.chunk_tokens,
                "seed": self.seed}

    def _needles(self, rng: random.Random, index: int) -> list[Needle]:
        if self.custom_needles:
            return list(self.custom_needles)
        return [_default_needle(rng, index + k) for k in range(self.n_needles)]

    def _haystack(self, counter: Counter, n_tokens: int, rng: random.Random) -> str:
        order = list(range(len(self.passages)))
        rng.shuffle(order)
        parts: list[str] = []
        total = 0
        for i in order:
            text = self.passages[i]["text"].strip()
            parts.append(text)
            total += counter.count(text)
            if total >= n_tokens * 1.02 + 50:  # a running sum, not the joined count: keep some slack
                break
        ids = counter.encode("\n\n".join(parts))
        if len(ids) < n_tokens:
            raise InputError(f"the corpus has only {len(ids)} tokens; the needle task needs {n_tokens}: "
                             "use a larger --corpus or shorter --lengths")
        return counter.decode(ids[:n_tokens])

    def make_sample(self, counter: Counter, length: int, depth: float, index: int) -> Sample:
        rng = random.Random(f"needle/{self.seed}/{index}")  # same needles and haystack order at every grid point
        needles = self._needles(rng, index)
        needle_tokens = sum(counter.count(" " + n.text + " ") for n in needles)
        haystack = self._haystack(counter, max(1, length - needle_tokens), rng)
        ids = counter.encode(haystack)
        bounds = sentence_boundaries(haystack)
        # With several needles the first sits at `depth`, the others spread evenly after it.
        depths = [depth + (100.0 - depth) * k / len(needles) for k in range(len(needles))]
        inserts: list[tuple[int, str]] = []
        for d, needle in zip(depths, needles):
            if d >= 100:
                char = len(haystack)
            else:
                char = len(counter.decode(ids[: round(len(ids) * d / 100.0)]))
                char = max(b for b in bounds if b <= char)  # back off to the sentence start
            inserts.append((char, needle.text))
        text = haystack
        for char, sentence in sorted(inserts, reverse=True):
            before, after = text[:char], text[char:]
            # After a cut mid-sentence (depth 100 on an exact-length haystack) the needle starts a new line.
            pad_before = "" if not before or before[-1].isspace() else (" " if before[-1] in ".!?" else "\n")
            text = before + pad_before + sentence + ("\n" if after and not after[0].isspace() else "") + after
        units = chunk_text(text, counter, self.chunk_tokens)
        gold = tuple(i for i, u in enumerate(units) if any(n.text in u for n in needles))
        if len(needles) == 1:
            question = needles[0].question
            answers = needles[0].answers
        else:
            question = " ".join(f"({k + 1}) {n.question}" for k, n in enumerate(needles)) + \
                " Answer each part, one per line."
            answers = tuple(n.answers[0] for n in needles)
        return Sample(self.name, index, length, "tokens", depth, "percent", question, answers, tuple(units), gold,
                      {"needles": [n.text for n in needles], "context_tokens": counter.count(text)})

    def render(self, sample: Sample, units: Sequence[str], *, retrieved: bool) -> str:
        context = "\n\n".join(u.strip() for u in units) if retrieved else "".join(units)
        return (f"<document>\n{context}\n</document>\n\n"
                f"Question: {sample.question}\nAnswer in a few words, using only the document above.")


# ---------------------------------------------------------------- multi-document QA (Liu et al. 2023)

def _has_answer(text: str, answers: Iterable[str]) -> bool:
    norm = scoring.normalize_answer(text)
    return any(scoring.normalize_answer(a) and scoring.normalize_answer(a) in norm for a in answers)


class QATask(Task):
    """An NQ-open question with its gold passage at a chosen position among distractor passages.

    Lengths are documents (10/20/30, the paper's setting, depth = 0-based gold position) or, with
    `by_tokens`, a token length reached by adding distractors (depth = percent of the documents).
    Distractors: "hard" = ragkit's retriever's nearest passages that contain no answer (the paper's
    construction, over the bundled corpus), "random" = random passages without an answer.
    """

    name = "qa"
    system = "You answer questions from search results. Reply with the answer only, in a few words."
    prefix = ("Write a high-quality answer for the given question using only the provided search results "
              "(some of which might be irrelevant).")

    def __init__(self, corpus: Path | str | None = None, questions: Path | str | None = None,
                 distractors: str = "hard", by_tokens: bool = False, seed: int = 0, max_distractors: int = 200,
                 search=None):
        if distractors not in ("hard", "random"):
            raise InputError(f"unknown distractors {distractors!r}: use hard or random")
        self.corpus = str(corpus) if corpus else None
        self.corpus_path = Path(corpus) if corpus else BUNDLED_CORPUS
        self.questions_path = Path(questions) if questions else BUNDLED_QUESTIONS
        self.passages = load_passages(corpus)
        self.by_id = {p["id"]: p for p in self.passages}
        self.questions = [q for q in _read_jsonl(self.questions_path) if q.get("passage_id") in self.by_id]
        if not self.questions:
            raise InputError(f"no questions in {self.questions_path} whose passage_id is in the corpus")
        self.distractors = distractors
        self.by_tokens = by_tokens
        self.length_unit, self.depth_unit = axis_units("qa", {"by_tokens": by_tokens})
        self.seed = seed
        self.max_distractors = max_distractors
        self._search = search  # callable(question, k) -> list[passage id]; default: ragkit's retriever

    def describe(self) -> dict:
        return {**super().describe(), "corpus": self.corpus or "bundled:nq-wiki",
                "questions": str(self.questions_path), "distractors": self.distractors,
                "by_tokens": self.by_tokens, "seed": self.seed}

    def _question(self, index: int) -> dict:
        order = list(range(len(self.questions)))
        random.Random(f"qa/{self.seed}").shuffle(order)
        return self.questions[order[index % len(order)]]

    def _distractor_ids(self, q: dict, needed: int) -> list[str]:
        answers = q["answers"]
        ok = lambda pid: pid != q["passage_id"] and not _has_answer(self.by_id[pid]["text"], answers)  # noqa: E731
        if self.distractors == "hard":
            search = self._search or _default_passage_search(self.corpus_path, self.passages)
            ranked = [pid for pid in search(q["question"], min(len(self.passages), needed * 3 + 20)) if ok(pid)]
        else:
            ids = [p["id"] for p in self.passages]
            random.Random(f"qa-random/{self.seed}/{q['question']}").shuffle(ids)
            ranked = [pid for pid in ids[: needed * 3 + 20] if ok(pid)]
        return list(dict.fromkeys(ranked))[:needed]

    def samples(self, counter: Counter, lengths: Sequence[int], depths: Sequence[float],
                n_samples: int) -> list[Sample]:
        if self.by_tokens:
            return super().samples(counter, lengths, depths, n_samples)
        # The paper's grid: a gold position exists only where it is < the number of documents.
        return [self.make_sample(counter, n, pos, i) for n in lengths for i in range(n_samples) for pos in depths
                if 0 <= pos < n]

    @staticmethod
    def unit(passage: dict) -> str:
        return f"(Title: {passage['title']}) {passage['text'].strip()}"

    def make_sample(self, counter: Counter, length: int, depth: float, index: int) -> Sample:
        q = self._question(index)
        gold = self.by_id[q["passage_id"]]
        if self.by_tokens:
            pool = self._distractor_ids(q, self.max_distractors)
            docs: list[str] = []
            ids: list[str] = []
            total = counter.count(self.docs_block([self.unit(gold)]))
            for pid in pool:
                if total >= length:
                    total = counter.count(self.docs_block([self.unit(gold)] + docs))  # exact, not the running sum
                    if total >= length:
                        break
                docs.append(self.unit(self.by_id[pid]))
                ids.append(pid)
                total += counter.count(docs[-1]) + 5
            if counter.count(self.docs_block([self.unit(gold)] + docs)) < length:
                raise InputError(f"not enough distractors to reach {length} tokens; use shorter --lengths")
            position = round(len(docs) * depth / 100.0)
        else:
            n_docs = int(length)
            position = int(depth)
            if not 0 <= position < n_docs:
                raise InputError(f"gold position {position} is outside 0..{n_docs - 1} for {n_docs} documents")
            ids = self._distractor_ids(q, n_docs - 1)
            if len(ids) < n_docs - 1:
                raise InputError(f"only {len(ids)} distractors for {n_docs} documents; use fewer --lengths")
        ids = ids[:position] + [q["passage_id"]] + ids[position:]
        units = [self.unit(self.by_id[pid]) for pid in ids]
        sample = Sample(self.name, index, int(length), self.length_unit, depth, self.depth_unit, q["question"],
                        tuple(q["answers"]), tuple(units), (position,),
                        {"gold_passage_id": q["passage_id"], "passage_ids": tuple(ids)})
        sample.meta["context_tokens"] = counter.count(self.docs_block(units))
        return sample

    def ranking_texts(self, sample: Sample) -> list[str]:
        """The passages as `ragkit ask` reads a JSONL record: the title a field, the text as stored."""
        from ragkit.retrieve import ranked_text

        return [ranked_text(self.by_id[pid]["title"], self.by_id[pid]["text"]) for pid in sample.meta["passage_ids"]]

    @staticmethod
    def docs_block(units: Sequence[str]) -> str:
        return "\n".join(f"Document [{i + 1}]{u}" for i, u in enumerate(units))

    def render(self, sample: Sample, units: Sequence[str], *, retrieved: bool) -> str:
        return f"{self.prefix}\n\n{self.docs_block(units)}\n\nQuestion: {sample.question}\nAnswer:"


def _default_passage_search(corpus_path: Path, passages: list[dict]):
    """Nearest passages by ragkit's own retriever: the corpus folder's persistent index when the
    passages are JSONL records with ids (the bundled corpus), else an in-memory index."""
    from ragkit.evals.retrieval import corpus_searcher, passage_searcher

    if corpus_path.is_dir() and any(corpus_path.glob("*.jsonl")):
        return corpus_searcher(corpus_path, passages)
    return passage_searcher(passages)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(f"{path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---------------------------------------------------------------- key-value retrieval

class KVTask(Task):
    """Liu et al.'s synthetic key-value retrieval: a JSON object of UUID pairs, the gold key at a depth.

    Lengths are tokens: records of the bundled example are dropped, or seeded UUID pairs added, to
    reach the length; `source="generated"` uses only generated pairs.
    """

    name = "kv"
    system = "You extract values from JSON data. Reply with the value only."
    scorer_name = "contains"

    def __init__(self, path: Path | str | None = None, source: str = "bundled", seed: int = 0):
        if source not in ("bundled", "generated"):
            raise InputError(f"unknown kv source {source!r}: use bundled or generated")
        self.path = Path(path) if path else BUNDLED_KV
        self.source = source
        self.seed = seed
        self.examples = _read_jsonl(self.path) if source == "bundled" else []

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path), "source": self.source, "seed": self.seed}

    @staticmethod
    def record(key: str, value: str) -> str:
        return f'"{key}": "{value}"'

    def make_sample(self, counter: Counter, length: int, depth: float, index: int) -> Sample:
        rng = random.Random(f"kv/{self.seed}/{index}")
        new_uuid = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731
        if self.examples:
            ex = self.examples[index % len(self.examples)]
            pairs = [tuple(p) for p in ex["ordered_kv_records"]]
            key, value = ex["key"], ex["value"]
        else:
            pairs, key, value = [], new_uuid(), new_uuid()
        others = [p for p in pairs if p[0] != key]
        per_record = counter.count(self.record(key, value) + ",\n ")
        overhead = counter.count(self.render_records([], key)) + 2
        n_total = max(1, round((length - overhead) / per_record))
        while len(others) < n_total - 1:
            others.append((new_uuid(), new_uuid()))
        others = others[: n_total - 1]
        position = round(len(others) * depth / 100.0)
        records = others[:position] + [(key, value)] + others[position:]
        units = tuple(self.record(k, v) for k, v in records)
        sample = Sample(self.name, index, int(length), "tokens", depth, "percent", f'Key: "{key}"', (value,),
                        units, (position,), {"key": key, "n_records": len(records)})
        sample.meta["context_tokens"] = counter.count(self.render(sample, units, retrieved=False))
        return sample

    @staticmethod
    def render_records(units: Sequence[str], key: str) -> str:
        data = "{" + ",\n ".join(units) + "}"
        return ("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                f"JSON data:\n{data}\n\nKey: \"{key}\"\nCorresponding value:")

    def render(self, sample: Sample, units: Sequence[str], *, retrieved: bool) -> str:
        return self.render_records(units, sample.meta["key"])


def axis_units(task: str, options: dict) -> tuple[str, str]:
    """(length unit, depth unit) of a task with these options: qa counts documents and 0-based
    positions (the paper's setting) unless by_tokens; every other grid is tokens and percent."""
    if task == "qa" and not options.get("by_tokens"):
        return "docs", "position"
    return "tokens", "percent"


def make_task(name: str, **options) -> Task:
    """A task by name with its options (unknown options are a user error, not silently ignored)."""
    classes = {"needle": NeedleTask, "qa": QATask, "kv": KVTask}
    if name not in classes:
        raise InputError(f"unknown eval task {name!r}: use one of {', '.join(classes)}")
    try:
        return classes[name](**options)
    except TypeError as exc:
        raise InputError(f"bad options for task {name}: {exc}") from None
