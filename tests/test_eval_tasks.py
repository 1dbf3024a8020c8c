"""Task generators: exact token lengths, needles on sentence boundaries at the asked depth, the paper's
document rendering with the gold passage at its position, key-value records around the gold key."""
from __future__ import annotations

import random
import re

import pytest

from ragkit.evals.scoring import normalize_answer
from ragkit.evals.tasks import KVTask, Needle, NeedleTask, QATask, _has_answer, sentence_boundaries
from ragkit.tokens import counter_for

COUNTER = counter_for("gpt-4o-mini")  # o200k, the model's own tokenizer


@pytest.mark.parametrize("length", [500, 2000, 6000])
def test_needle_context_has_the_exact_token_length(length):
    task = NeedleTask()
    s = task.make_sample(COUNTER, length, 50, 0)
    text = "".join(s.units)
    # the haystack is cut to length - needle tokens; joining needle and haystack may merge a token or two
    assert abs(COUNTER.count(text) - length) <= 3
    assert s.meta["needles"][0] in text
    assert s.answers[0] in s.meta["needles"][0]
    assert task.score(s.answers[0], s) == 1.0


@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_needle_sits_at_its_depth_on_a_sentence_boundary(depth):
    task = NeedleTask()
    s = task.make_sample(COUNTER, 4000, depth, 1)
    text = "".join(s.units)
    needle = s.meta["needles"][0]
    start = text.index(needle)
    at = COUNTER.count(text[:start]) / COUNTER.count(text)
    assert abs(at - depth / 100) < 0.05, (depth, at)
    before = text[:start].rstrip(" ")
    assert before == "" or before[-1] in ".!?\n", before[-30:]  # starts a sentence, never splits one
    assert s.gold_units and needle in s.units[s.gold_units[0]]


def test_needles_are_deterministic_and_vary_by_sample():
    task = NeedleTask()
    a, b, c = (task.make_sample(COUNTER, 1000, 50, i) for i in (0, 0, 1))
    assert a.units == b.units and a.question == b.question
    assert a.question != c.question


def test_custom_and_multiple_needles():
    mine = NeedleTask(needles=[Needle("The build server is named Orca.", "What is the build server named?", ("Orca",)),
                               Needle("The backup server is named Kestrel.", "What is the backup named?", ("Kestrel",))])
    s = mine.make_sample(COUNTER, 1500, 0, 0)
    text = "".join(s.units)
    assert text.index("named Orca") < text.index("named Kestrel")
    assert s.answers == ("Orca", "Kestrel")
    assert mine.score("Orca\nKestrel", s) == 1.0 and mine.score("Orca", s) == 0.5
    three = NeedleTask(n_needles=3).make_sample(COUNTER, 2000, 25, 0)
    assert len(three.answers) == 3 and all(n in "".join(three.units) for n in three.meta["needles"])


def test_sentence_boundaries():
    text = "One. Two? Three!\nFour"
    assert sentence_boundaries(text) == [0, 5, 10, 17, 21]


def test_qa_paper_setting_renders_documents_with_gold_at_position():
    task = QATask(distractors="random")
    s = task.make_sample(COUNTER, 10, 4, 0)
    prompt = task.render(s, s.units, retrieved=False)
    docs = re.findall(r"^Document \[(\d+)\]\(Title: ", prompt, flags=re.M)
    assert docs == [str(i) for i in range(1, 11)]
    assert prompt.startswith("Write a high-quality answer for the given question using only the provided search results")
    assert prompt.endswith(f"Question: {s.question}\nAnswer:")
    gold = task.by_id[s.meta["gold_passage_id"]]
    assert s.units[4] == QATask.unit(gold) and s.gold_units == (4,)
    answers = [normalize_answer(a) for a in s.answers]
    for i, unit in enumerate(s.units):
        if i != 4:  # distractors never contain an answer
            assert not any(a in normalize_answer(unit) for a in answers)
    grid = task.samples(COUNTER, [10, 20], [0, 9, 14, 19], 1)
    assert sorted((x.length, int(x.depth)) for x in grid) == [(10, 0), (10, 9), (20, 0), (20, 9), (20, 14), (20, 19)]


def test_qa_by_tokens_pads_with_distractors_to_the_length():
    task = QATask(distractors="random", by_tokens=True)
    s = task.make_sample(COUNTER, 3000, 100, 2)
    assert 3000 <= s.meta["context_tokens"] <= 3000 + 400  # one passage past the length at most
    assert s.gold_units == (len(s.units) - 1,)


def test_qa_hard_distractors_come_from_the_search_and_skip_answers():
    calls, returned = [], []

    def search(question, k):
        """A retriever whose ranking is known and unlike the corpus order: the gold passage and one that
        holds the answer first (both must be skipped), then a seeded shuffle."""
        calls.append((question, k))
        q = next(q for q in task.questions if q["question"] == question)
        answering = next(p["id"] for p in task.passages
                         if p["id"] != q["passage_id"] and _has_answer(p["text"], q["answers"]))
        rest = [p["id"] for p in task.passages if p["id"] not in (q["passage_id"], answering)]
        random.Random(7).shuffle(rest)
        returned[:] = [q["passage_id"], answering, *rest][:k]
        return list(returned)

    task = QATask(distractors="hard", search=search)
    s = task.make_sample(COUNTER, 10, 0, 0)
    assert calls and calls[0][0] == s.question
    by_unit = {QATask.unit(p): p["id"] for p in task.passages}
    distractor_ids = [by_unit[u] for u in s.units[1:]]
    assert s.meta["gold_passage_id"] not in distractor_ids and returned[1] not in distractor_ids
    expected = [pid for pid in returned[2:] if not _has_answer(task.by_id[pid]["text"], s.answers)][:9]
    assert distractor_ids == expected  # the retriever's best, kept in its rank order
    ids = [p["id"] for p in task.passages]
    assert distractor_ids != sorted(distractor_ids, key=ids.index)  # (so corpus order would not pass)


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_kv_gold_key_at_depth_and_length(depth):
    task = KVTask()
    s = task.make_sample(COUNTER, 4000, depth, 3)
    prompt = task.render(s, s.units, retrieved=False)
    assert abs(s.meta["context_tokens"] - 4000) < 150
    key = s.meta["key"]
    keys = [u.split('"')[1] for u in s.units]
    assert keys.index(key) == s.gold_units[0] == round((len(keys) - 1) * depth / 100)
    assert prompt.startswith("Extract the value corresponding to the specified key in the JSON object below.")
    assert prompt.endswith(f'Key: "{key}"\nCorresponding value:')
    assert task.score(f"{s.answers[0]}", s) == 1.0 and len(set(keys)) == len(keys)


def _small_corpus(tmp_path, n=40):
    """The first n bundled passages and their questions, as a folder ragkit can index."""
    import json as _json

    from ragkit.evals.tasks import BUNDLED_QUESTIONS, load_passages

    passages = load_passages()[:n]
    ids = {p["id"] for p in passages}
    folder = tmp_path / "wiki"
    folder.mkdir()
    (folder / "passages.jsonl").write_text("".join(_json.dumps(p) + "\n" for p in passages))
    questions = [q for q in map(_json.loads, BUNDLED_QUESTIONS.read_text().splitlines()) if q["passage_id"] in ids]
    (tmp_path / "q.jsonl").write_text("".join(_json.dumps(q) + "\n" for q in questions))
    return folder, tmp_path / "q.jsonl", passages


def test_qa_hard_distractors_are_ragkits_nearest_passages_without_an_answer(tmp_path):
    from ragkit.corpus import build_memory_index

    folder, questions, passages = _small_corpus(tmp_path)
    task = QATask(corpus=folder, questions=questions, distractors="hard")  # the folder's persistent index
    s = task.make_sample(COUNTER, 10, 9, 0)
    assert s.units[9] == QATask.unit(task.by_id[s.meta["gold_passage_id"]])
    answers = [normalize_answer(a) for a in s.answers]
    assert not any(a in normalize_answer(u) for u in s.units[:9] for a in answers)
    # The nearest passage by an independent in-memory index is among the distractors (when answer-free).
    index = build_memory_index([f"{p['title']}\n{p['text']}" for p in passages], [p["id"] for p in passages])
    by_id = {p["id"]: p for p in passages}
    nearest = [h.doc_id for h in index.search(s.question, k=len(passages))
               if h.doc_id != s.meta["gold_passage_id"]
               and not any(a in normalize_answer(by_id[h.doc_id]["text"]) for a in answers)]
    assert QATask.unit(by_id[nearest[0]]) in s.units[:9]
    assert (folder / ".ragkit").is_dir()  # built once, reused by the next run
