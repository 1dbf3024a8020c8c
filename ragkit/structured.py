"""Structured answers: a JSON Schema (or Pydantic model, or `llm`-style shorthand) the answer must match,
with, for every top-level field, the numbers of the sources it came from.

    spec = make_schema("title str, year int | null, people list[str]")
    spec.wire()          # what the model is asked for: {"answer": <the schema>, "citations": {field: [int]}}
    parsed = spec.parse(reply_text, n_sources=5)     # SchemaMismatch (the validation error) when it does not match

Providers enforce `wire()` as deep as their API goes (OpenAI strict json_schema, an Anthropic forced tool,
the local model's grammar); every reply is validated here all the same, and `complete_structured` sends one
repair turn (the validation error) before giving up with a clear error.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ragkit.errors import InputError, ProviderError

# The keywords ragkit can both enforce (OpenAI strict mode, Anthropic tools, the local grammar) and validate.
SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "items", "enum", "const", "anyOf", "additionalProperties",
    "$defs", "definitions", "$ref", "$schema", "$id", "title", "description", "default", "examples",
    "minimum", "maximum", "minItems", "maxItems",
})
_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}
ENFORCEMENTS = ("strict", "tool", "grammar", "validated")
MAX_REPAIRS = 1


class SchemaError(InputError):
    """The schema given is not one ragkit can enforce: bad JSON Schema, an unsupported keyword, bad shorthand."""


class StructuredOutputError(ProviderError):
    """The model's reply did not match the schema, even after the repair turn."""


class SchemaMismatch(ValueError):
    """One reply that does not match: the message is what is sent back in the repair turn."""


# --------------------------------------------------------------------------- building a schema

_SHORT_TYPES = {"str": {"type": "string"}, "string": {"type": "string"}, "int": {"type": "integer"},
                "integer": {"type": "integer"}, "float": {"type": "number"}, "number": {"type": "number"},
                "bool": {"type": "boolean"}, "boolean": {"type": "boolean"}}


def _short_type(text: str, where: str) -> dict:
    text = text.strip()
    parts = _split_top(text, "|")
    if len(parts) > 1:
        nullable = [p for p in parts if p.strip() in ("null", "none", "None")]
        rest = [_short_type(p, where) for p in parts if p.strip() not in ("null", "none", "None")]
        options = rest + ([{"type": "null"}] if nullable else [])
        return options[0] if len(options) == 1 else {"anyOf": options}
    m = re.fullmatch(r"list\[(.+)\]", text)
    if m:
        return {"type": "array", "items": _short_type(m.group(1), where)}
    if text in _SHORT_TYPES:
        return dict(_SHORT_TYPES[text])
    raise SchemaError(f"schema shorthand: unknown type {text!r} for {where}; use str, int, float, bool, "
                      f"list[TYPE] or TYPE | null, e.g. 'name str, year int | null, tags list[str]'.")


def _split_top(text: str, sep: str) -> list[str]:
    """Splits at `sep` outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def parse_shorthand(text: str) -> dict:
    """'name str, score float, tags list[str], year int | null: when it happened' -> a JSON Schema object.

    Like `llm --schema`: one field per line when there are several lines (a description may then hold
    commas), else fields separated by commas; the type after the name and any whitespace (str by default),
    an optional description after ':'. Every field is required (null where the type allows it).
    """
    props: dict[str, dict] = {}
    fields = text.splitlines() if "\n" in text.strip() else _split_top(text, ",")
    for raw in fields:
        item, _, desc = raw.partition(":")
        item = item.strip()
        if not item:
            continue
        name, typ = (re.split(r"\s+", item, maxsplit=1) + [""])[:2]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SchemaError(f"schema shorthand: {name!r} is not a field name; write fields like 'name str, score float'.")
        if name in props:
            raise SchemaError(f"schema shorthand: the field {name!r} is given twice; give each field once.")
        props[name] = _short_type(typ or "str", f"field {name!r}")
        if desc.strip():
            props[name]["description"] = desc.strip()
    if not props:
        raise SchemaError("the schema shorthand names no field; write e.g. 'name str, score float, tags list[str]'.")
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _load_text(text: str) -> dict:
    """JSON text, a JSON Schema file's path, or shorthand (what --schema takes)."""
    stripped = text.lstrip("\ufeff").strip()
    if stripped.startswith(("{", "[")):
        return _json(stripped, "the schema")
    path = Path(stripped)
    if stripped and path.is_dir():
        raise SchemaError(f"the schema file {path} is a directory; give a JSON Schema file or shorthand like 'name str'.")
    if stripped and path.is_file():
        return _read_file(path)
    if stripped.endswith(".json"):
        raise SchemaError(f"the schema file {path} does not exist; give a JSON Schema file or shorthand like 'name str'.")
    return parse_shorthand(stripped)


def _read_file(path: Path) -> dict:
    """A schema file holds JSON Schema: one JSON object (a UTF-8 byte-order mark is allowed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SchemaError(f"the schema file {path} is not UTF-8 text; save it as UTF-8 JSON.") from None
    except OSError as exc:
        raise SchemaError(f"cannot read the schema file {path}: {exc.strerror or exc}.") from None
    value = _json(text, f"the schema file {path}")
    if not isinstance(value, dict):
        raise SchemaError(f"the schema file {path} holds {_kind(value)}, not a JSON Schema object; write e.g. "
                          '{"type": "object", "properties": {"name": {"type": "string"}}}.')
    return value


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                          "fix it or use the shorthand, e.g. 'name str, score float'.") from None
    except RecursionError:
        raise SchemaError(f"{what} nests deeper than JSON can be read here; flatten it.") from None


MAX_DEPTH = 32  # nesting ragkit accepts: far past any real answer shape, well inside every recursion limit
_REF = re.compile(r"#/(\$defs|definitions)/([^/]+)")
_SUBSCHEMA_LISTS = ("anyOf",)
_SUBSCHEMA_MAPS = ("$defs", "definitions", "properties")  # defs first: a ref into a bad def names the def


def check_schema(schema) -> None:
    """Refuses, with one sentence, every schema ragkit could not enforce on each path (OpenAI strict, an
    Anthropic tool, the local grammar) or validate: not JSON Schema, a top level that is not an object, a
    keyword outside SUPPORTED_KEYWORDS, a true/false subschema, a $ref that does not point into the
    schema's own $defs, a schema that refers to itself without ever giving a value, or one no value can match."""
    from jsonschema import Draft202012Validator, SchemaError as BadSchema

    if not isinstance(schema, dict):
        raise SchemaError(f"the schema must be a JSON object (a JSON Schema), not {_kind(schema)}; e.g. "
                          '{"type": "object", "properties": {"name": {"type": "string"}}}.')
    _check_depth(schema)
    try:
        Draft202012Validator.check_schema(schema)
    except BadSchema as exc:
        where = "/".join(map(str, exc.path)) or "the top level"
        raise SchemaError(f"the schema is not valid JSON Schema at {where}: {exc.message}.") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise SchemaError('the schema\'s top level must be an object with properties ("type": "object", '
                          '"properties": {...}): each property is a field the answer cites sources for.')
    _check_node(schema, "the top level", schema)
    _check_ref_cycles(schema)
    _check_finite_defs(schema)


def _kind(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, bool) else type(value).__name__


def _check_depth(schema) -> None:
    stack = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SchemaError(f"the schema nests deeper than {MAX_DEPTH} levels; flatten it (use $defs and $ref "
                              "for shapes that repeat).")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children)


def _subschemas(node: dict, where: str):
    """(subschema, where) for every place in `node` that holds a schema (additionalProperties: true/false
    is a flag, not a subschema)."""
    prefix = "" if where == "the top level" else f"{where}."
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (node.get(key) or {}).items():
            yield sub, f"{prefix}{key}.{name}"
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key) or ()):
            yield sub, f"{prefix}{key}[{i}]"
    if "items" in node:
        yield node["items"], f"{prefix}items"
    if isinstance(node.get("additionalProperties"), dict):
        yield node["additionalProperties"], f"{prefix}additionalProperties"


def _check_node(node, where: str, root: dict) -> None:
    if not isinstance(node, dict):
        raise SchemaError(f"the schema at {where} is {_kind(node)}, not a schema object: ragkit cannot enforce "
                          'true/false schemas, so give it a type, e.g. {"type": "string"}.')
    for key in node:
        if key not in SUPPORTED_KEYWORDS:
            raise SchemaError(f"the schema keyword {key!r} (at {where}) is not supported: ragkit enforces only "
                              f"{', '.join(sorted(SUPPORTED_KEYWORDS - {'$schema', '$id', 'examples'}))}; "
                              "rewrite it with those (e.g. oneOf -> anyOf) or drop it.")
        if key in ("$schema", "$id") and node is not root:
            raise SchemaError(f"the schema keyword {key!r} (at {where}) is allowed only at the top level; drop it.")
    types = node.get("type")
    for t in types if isinstance(types, list) else [types] if types else []:
        if t not in _TYPES:
            raise SchemaError(f"the schema type {t!r} (at {where}) is not a JSON Schema type.")
    if "$ref" in node:
        ref_target(node["$ref"], root, where)
    _check_satisfiable(node, where)
    for sub, sub_where in _subschemas(node, where):
        _check_node(sub, sub_where, root)


def _check_satisfiable(node: dict, where: str) -> None:
    """Bounds and lists no value can meet: the model would be paid to fail."""
    if node.get("enum") == []:
        raise SchemaError(f'the schema at {where} has "enum": [], which no value matches; list the allowed values.')
    for low, high in (("minimum", "maximum"), ("minItems", "maxItems")):
        if low in node and high in node and node[low] > node[high]:
            raise SchemaError(f"the schema at {where} has {low} {node[low]} above {high} {node[high]}, which no "
                              "value matches; swap or fix them.")
    unknown = [name for name in node.get("required") or () if name not in (node.get("properties") or {})]
    if unknown:
        raise SchemaError(f"the schema at {where} requires {unknown[0]!r}, which is not one of its properties; "
                          "add it to properties or drop it from required.")


def ref_target(ref, root: dict, where: str = "the schema") -> dict:
    """The schema a $ref names. Only refs into the schema's own top-level $defs/definitions are honoured
    (the answer wrapper keeps those at its root, so every enforcement path resolves them the same way);
    anything else is refused with one sentence."""
    from urllib.parse import unquote

    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"the $ref {ref!r} (at {where}) points outside the schema and ragkit fetches nothing; "
                          "copy that schema into $defs and refer to it as #/$defs/NAME.")
    m = _REF.fullmatch(unquote(ref))
    if not m:
        raise SchemaError(f"the $ref {ref!r} (at {where}) is not supported: ragkit resolves only refs to "
                          "#/$defs/NAME (or #/definitions/NAME); move the schema it means there.")
    section, name = m.group(1), m.group(2).replace("~1", "/").replace("~0", "~")
    target = (root.get(section) or {}).get(name)
    if not isinstance(target, dict):
        raise SchemaError(f"the $ref {ref!r} (at {where}) points to nothing: the schema has no {section}.{name}; "
                          "add it or fix the ref.")
    return target


def _check_ref_cycles(root: dict) -> None:
    """A def that reaches itself through $ref/anyOf alone (no object or array in between) describes no value
    and sends validators into endless recursion."""
    def bare_refs(node) -> set[str]:
        if not isinstance(node, dict):
            return set()
        out = {node["$ref"]} if "$ref" in node else set()
        for sub in node.get("anyOf") or ():
            out |= bare_refs(sub)
        return out

    done: set[str] = set()

    def visit(ref: str, path: tuple[str, ...]) -> None:
        if ref in path:
            raise SchemaError(f"the $ref {ref!r} refers to itself ({' -> '.join(path[path.index(ref):] + (ref,))}) "
                              "without an object or array in between, so no value matches; give it a type.")
        if ref not in done:
            for nxt in bare_refs(ref_target(ref, root)):
                visit(nxt, path + (ref,))
            done.add(ref)

    for ref in _all_refs(root):
        visit(ref, ())


def _check_finite_defs(root: dict) -> None:
    """A def whose every value must hold itself again (a required property, or an item of an array with
    minItems, that refers back to it) has no finite value: the model would write until the token limit."""
    defs = [(section, name, d) for section in ("$defs", "definitions")
            for name, d in (root.get(section) or {}).items()]
    finite: set[int] = set()   # id() of the defs known to have a finite value
    grew = True
    while grew:                # a least fixpoint: a def is finite once what it needs is
        grew = False
        for _, _, d in defs:
            if id(d) not in finite and _has_finite_value(d, finite, root):
                finite.add(id(d))
                grew = True
    for section, name, d in defs:
        if id(d) not in finite:
            raise SchemaError(f"the schema's {section}.{name} has no finite value: each one must hold another "
                              "(a required property or a minItems array that refers back to it); make that "
                              "property optional or nullable, or allow an empty array.")


def _has_finite_value(node, finite: set[int], root: dict) -> bool:
    if not isinstance(node, dict):
        return True
    if "$ref" in node and id(ref_target(node["$ref"], root)) not in finite:
        return False
    if "anyOf" in node and not any(_has_finite_value(o, finite, root) for o in node["anyOf"]):
        return False
    types = node.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    if "enum" in node or "const" in node or not types or any(t not in ("object", "array") for t in types):
        return True   # a literal, or a scalar or null the type allows
    if "object" in types and all(_has_finite_value((node.get("properties") or {}).get(r, {}), finite, root)
                                 for r in node.get("required") or ()):
        return True
    items = node.get("items")
    return "array" in types and (not node.get("minItems") or _has_finite_value(items, finite, root))


def _all_refs(node) -> set[str]:
    if not isinstance(node, dict):
        return set()
    out = {node["$ref"]} if "$ref" in node else set()
    for sub, _ in _subschemas(node, "the top level"):
        out |= _all_refs(sub)
    return out


def make_schema(schema) -> "StructuredSpec":
    """A StructuredSpec from a Pydantic model class, a JSON Schema dict, a JSON Schema file path,
    JSON text or `llm`-style shorthand. Bad schemas raise SchemaError with one sentence."""
    if isinstance(schema, StructuredSpec):
        return schema
    model = None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):  # a Pydantic model class
        model, schema = schema, schema.model_json_schema()
    elif isinstance(schema, (str, Path)):
        schema = _load_text(str(schema))
    check_schema(schema)
    title = str(schema.get("title") or (model.__name__ if model else "answer"))
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", title)[:64] or "answer"
    return StructuredSpec(schema=schema, model=model, name=name)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Parsed:
    value: dict                        # the user's object, validated (JSON)
    data: object                       # the Pydantic instance when a model was given, else `value`
    citations: dict[str, tuple[int, ...]]
    dropped: dict[str, tuple[int, ...]]   # cited numbers that name no source sent


@dataclass(frozen=True)
class StructuredSpec:
    schema: dict                       # the user's JSON Schema, checked
    model: type | None = None          # the Pydantic model it came from
    name: str = "answer"               # the tool / json_schema name the APIs want
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.schema["properties"])

    def wire(self, *, strict: bool = False) -> dict:
        """What the model must return. strict: OpenAI strict-mode form (every property required, optional
        ones nullable, no extra properties, no defaults), also what the local grammar enforces."""
        key = ("wire", strict)
        if key not in self._cache:
            answer = _to_strict(self.schema) if strict else self.schema
            defs = {k: self.schema[k] for k in ("$defs", "definitions") if k in self.schema}
            answer = {k: v for k, v in answer.items() if k not in ("$defs", "definitions", "$schema", "$id")}
            cites = {"type": "object", "description": "for each field of answer, the numbers of the sources it came from",
                     "properties": {f: {"type": "array", "items": {"type": "integer"}} for f in self.fields},
                     "required": list(self.fields), "additionalProperties": False}
            wire = {"type": "object", "properties": {"answer": answer, "citations": cites},
                    "required": ["answer", "citations"], "additionalProperties": False}
            if defs:  # refs like #/$defs/X stay valid at the wrapper's root
                wire.update({k: (_to_strict_defs(v) if strict else v) for k, v in defs.items()})
            self._cache[key] = wire
        return self._cache[key]

    def instructions(self) -> str:
        """The reply-format block appended to the system prompt (rules 3 and 5 do not apply to JSON)."""
        return ("Reply format for this question (it replaces rules 3 and 5): reply with one JSON object and "
                "nothing else, no code fence, matching this JSON Schema:\n"
                + json.dumps(self.wire(), separators=(",", ":"), ensure_ascii=False) + "\n"
                "Fill `answer` only from the sources; where the sources do not say, use null if the schema "
                "allows it. `citations` maps every field of `answer` to the numbers of the sources it came "
                'from, e.g. {"title": [2]} ([] when none).')

    def frame(self, system: str, user: str) -> tuple[str, str]:
        """The answer prompt with the reply-format block: the one place a schema changes the prompt."""
        return system + "\n\n" + self.instructions(), user + "\n\nReply with the JSON object only."

    def answer_reserve(self, count: Callable[[str], int]) -> int:
        """Tokens to reserve for the reply: the size of a filled-in answer, judged from the schema's
        own size (a reply restates every key and fills each value), plus room for the citations."""
        return 128 + 2 * count(json.dumps(self.wire())) + 48 * len(self.fields)

    def parse(self, text: str, *, n_sources: int) -> Parsed:
        """The reply as a validated object + per-field citations; SchemaMismatch saying what is wrong."""
        try:
            reply = json.loads(_unfence(text))
        except json.JSONDecodeError as exc:
            where = "character" if exc.msg.endswith(" at") else "at character"  # "Unterminated string starting at"
            raise SchemaMismatch(f"the reply is not valid JSON ({exc.msg} {where} {exc.pos})") from None
        if isinstance(reply, dict) and isinstance(reply.get("answer"), dict):
            reply = {**reply, "answer": _from_strict(reply["answer"], self.schema, self.schema)}
        _validate(reply, self.wire())
        value = reply["answer"]
        data = value
        if self.model is not None:
            from pydantic import ValidationError

            try:
                data = self.model.model_validate(value)
            except ValidationError as exc:
                raise SchemaMismatch(f"answer: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        citations, dropped = {}, {}
        for name in self.fields:
            numbers = list(dict.fromkeys(reply["citations"].get(name) or []))
            citations[name] = tuple(n for n in numbers if 1 <= n <= n_sources)
            bad = tuple(n for n in numbers if not 1 <= n <= n_sources)
            if bad:
                dropped[name] = bad
        return Parsed(value=value, data=data, citations=citations, dropped=dropped)


def _unfence(text: str) -> str:
    """A reply wrapped in ```json ... ``` (common without API enforcement) read as the JSON inside."""
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.S)
    return m.group(1) if m else text


def _validate(reply, schema: dict) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(reply))
    if error is not None:
        where = ".".join(map(str, error.absolute_path)) or "the top level"
        raise SchemaMismatch(f"at {where}: {error.message}")


def _nullable(node: dict) -> bool:
    t = node.get("type")
    return t == "null" or (isinstance(t, list) and "null" in t) or any(
        isinstance(o, dict) and _nullable(o) for o in node.get("anyOf") or ()) or None in (node.get("enum") or ())


def _to_strict(node):
    """OpenAI strict mode: every object closed with all properties required (optional => nullable)."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k not in ("default", "examples", "$schema", "$id")}
    if "properties" in node:
        required = set(node.get("required") or ())
        props = {}
        for name, sub in node["properties"].items():
            sub = _to_strict(sub)
            if name not in required and not _nullable(sub):
                sub = {"anyOf": [sub, {"type": "null"}]}
            props[name] = sub
        out.update(properties=props, required=list(props), additionalProperties=False)
    if isinstance(node.get("items"), dict):
        out["items"] = _to_strict(node["items"])
    if "anyOf" in node:
        out["anyOf"] = [_to_strict(o) for o in node["anyOf"]]
    return out


def _to_strict_defs(defs: dict) -> dict:
    return {k: _to_strict(v) for k, v in defs.items()}


def _resolve(node, root: dict):
    if isinstance(node, dict) and "$ref" in node:
        return ref_target(node["$ref"], root)  # checked when the spec was made
    return node


def _from_strict(value, node, root):
    """Drops the nulls strict mode made the model write for optional properties the schema does not allow null."""
    node = _resolve(node, root)
    if isinstance(value, dict) and isinstance(node, dict) and "properties" in node:
        required = set(node.get("required") or ())
        out = {}
        for k, v in value.items():
            sub = _resolve(node["properties"].get(k, {}), root)
            if v is None and k not in required and not _nullable(sub):
                continue
            out[k] = _from_strict(v, sub, root)
        return out
    if isinstance(value, list) and isinstance(node, dict) and isinstance(node.get("items"), dict):
        return [_from_strict(v, node["items"], root) for v in value]
    return value


# --------------------------------------------------------------------------- calling with one repair


@dataclass(frozen=True)
class StructuredResult:
    parsed: Parsed
    completions: tuple             # every call made (the repair included), in order
    enforcement: str               # strict | tool | grammar | validated
    repairs: int


def repair_prompt(user: str, reply: str, error: str) -> str:
    """The repair turn: the original request, the reply that failed and why (one user turn, so every
    provider's single-turn `complete` can carry it)."""
    return (f"{user}\n\nYour previous reply was:\n{reply.strip()[:4000]}\n\nIt does not match the schema: {error}. "
            "Reply again with only the corrected JSON object.")


def complete_structured(provider, spec: StructuredSpec, system: str, user: str, *, max_tokens: int,
                        temperature: float, n_sources: int, on_call: Callable[[object], None]) -> StructuredResult:
    """Calls the provider with the schema, validates, and on a mismatch sends one repair turn.

    on_call gets every completed call (each is paid for: the caller records it), valid or not.
    """
    calls, prompt, error = [], user, None
    for attempt in range(1 + MAX_REPAIRS):
        done = provider.complete(system, prompt, max_tokens=max_tokens, temperature=temperature, schema=spec)
        calls.append(done)
        on_call(done)
        try:
            parsed = spec.parse(done.text, n_sources=n_sources)
        except SchemaMismatch as exc:
            error = str(exc)
            if done.finish_reason == "length":
                error += f" (the reply was cut at the {max_tokens:,}-token limit)"
            prompt = repair_prompt(user, done.text, error)
            continue
        enforcement = getattr(done, "enforcement", "") or "validated"
        return StructuredResult(parsed, tuple(calls), enforcement if enforcement in ENFORCEMENTS else "validated",
                                repairs=attempt)
    hint = (" Raise --answer-tokens." if calls[-1].finish_reason == "length"
            else " Try a stronger model or a simpler schema.")
    raise StructuredOutputError(f"the model's reply did not match the schema after {MAX_REPAIRS} repair round-trip "
                                f"({len(calls)} calls, all recorded in the cost ledger): {error}; no answer was "
                                f"returned.{hint}")
