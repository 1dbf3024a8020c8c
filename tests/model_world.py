"""Stand-in models with known accuracies, for `ragkit compare` and routing tests (no mocks: the real
openai SDK over real HTTP to tests/llm_server.py).

A tiny corpus of N item codes, a golden set asking for each code, and models registered in the user's
overrides whose base_url is the stand-in server. The server answers by the model named in the request
and the item number in the question, with a fixed rule, so each model's accuracy is exact:

    big     wrong when i % 10 == 0                         90%, expensive
    twin    the same questions as big                      90%, a tenth of big's price
    close   wrong when i % 10 in (0, 5)                    80%
    small   abstains when i % 10 == 0, wrong on 3 and 6    70%, cheapest
    slow    always right, each answer after `SLOW_S`       100%
    limited always 429 (rate-limited forever)
    judge   grades (ragkit.judge): CORRECT when the candidate holds the reference's item code
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from llm_server import Fault, LLMServer, Reply

N_ITEMS = 40
INPUT_TOKENS, OUTPUT_TOKENS = 1000, 10     # what the server reports for every answer
SLOW_S = 1.5
# model id -> (input $/Mtok, output $/Mtok, ttft_s in the registry)
PRICES = {"big": (10.0, 30.0, 0.8), "twin": (1.0, 3.0, 0.4), "close": (0.5, 1.5, 0.4), "small": (0.1, 0.4, 0.3),
          "slow": (0.05, 0.2, 3.0), "limited": (0.01, 0.02, 0.2), "judge": (2.0, 8.0, 0.3)}
JUDGE_INPUT_TOKENS, JUDGE_OUTPUT_TOKENS = 200, 2
WRONG = {"big": {0}, "twin": {0}, "close": {0, 5}, "small": {3, 6}, "slow": set(), "limited": set()}


def code(i: int) -> str:
    return f"K{i}Z"


def make_corpus(root: Path) -> Path:
    folder = root / "codes"
    folder.mkdir()
    (folder / "codes.txt").write_text("".join(f"Item {i} has the code {code(i)}.\n" for i in range(N_ITEMS)))
    return folder


def make_golden(root: Path, n: int = N_ITEMS) -> Path:
    path = root / "golden.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is the code of item {i}?", "answers": [code(i)],
                                        "gold": ["codes.txt"]}) + "\n" for i in range(n)))
    return path


def register_models(server: LLMServer, *, practical_limit: int = 4000, extra: str = "") -> None:
    """The stand-ins in the user's overrides (RAGKIT_CONFIG, isolated per test by conftest)."""
    tables = []
    for model, (inp, out, ttft) in PRICES.items():
        tables.append(f"""
[models."{model}"]
name = "{model.title()} (stand-in)"
provider = "openai"
api_model = "{model}-served"
base_url = "{server.openai_base_url}"
context_window_tokens = 16000
practical_limit_tokens = {practical_limit}
max_output_tokens = 64
input_usd_per_mtok = {inp}
output_usd_per_mtok = {out}
ttft_s = {ttft}
latency_source = "measured: test stand-in"
encoding = "cl100k_base"
exact_tokens = false
token_margin = 0.1
""")
    Path(os.environ["RAGKIT_CONFIG"]).write_text("".join(tables) + extra)


def item_of(request) -> int:
    question = request.prompt.split("\nQuestion: ", 1)[1].split("\n", 1)[0]
    return int(re.search(r"item (\d+)", question).group(1))


def judge_reply(request) -> Reply:
    """The stand-in judge reads the reference and the candidate out of ragkit.judge's prompt."""
    references = request.prompt.split("Reference answers:\n", 1)[1].split("\n\nCandidate answer:", 1)[0]
    candidate = request.prompt.split("Candidate answer:\n", 1)[1].split("\n\nVerdict", 1)[0]
    wanted = re.search(r"K\d+Z", references).group(0)
    verdict = "CORRECT" if re.search(rf"\b{wanted}\b", candidate) else "INCORRECT"
    return Reply(verdict, input_tokens=JUDGE_INPUT_TOKENS, output_tokens=JUDGE_OUTPUT_TOKENS)


def make_free_form_golden(root: Path, n: int = N_ITEMS) -> Path:
    """References as sentences: no answer is an exact subspan of them, so only a judge can grade."""
    path = root / "free-form.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is the code of item {i}?",
                                        "answers": [f"According to the inventory, item {i} carries code {code(i)}"]})
                            + "\n" for i in range(n)))
    return path


def responder(request):
    model = request.model.removesuffix("-served")
    if model == "judge":
        return judge_reply(request)
    if model == "limited":
        return Fault.rate_limited()
    i = item_of(request)
    if model == "small" and i % 10 == 0:
        text = "The sources do not contain the answer."
    elif i % 10 in WRONG[model]:
        text = "The code is Q0Q [1]."
    else:
        text = f"The code is {code(i)} [1]."
    reply = Reply(text, input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
    return Fault.slow(SLOW_S, then=reply) if model == "slow" else reply


def cost_per_task(model: str) -> float:
    inp, out, _ = PRICES[model]
    return (INPUT_TOKENS * inp + OUTPUT_TOKENS * out) / 1e6
