"""A real HTTP server on 127.0.0.1 that speaks the OpenAI Chat Completions and Anthropic Messages
wire formats (plain and streaming, plus Anthropic count_tokens), for tests of the real SDKs.

Why a real server: openai/anthropic use httpx2, which respx cannot intercept, and a real socket
also exercises the SDKs' own retry, timeout and parsing code.

    from llm_server import LLMServer, Fault, Reply, scripted   # tests/ is on sys.path under pytest

    with LLMServer(responder=lambda req: "Paris [1]") as srv:
        srv.openai_base_url      # "http://127.0.0.1:PORT/v1"   (what the openai SDK wants)
        srv.anthropic_base_url   # "http://127.0.0.1:PORT"      (anthropic posts to /v1/messages)
        srv.requests             # list[ChatRequest] received, in order (faulted ones included)

A responder is `fn(request: ChatRequest) -> str | Reply | Fault`:
  * str    -> a normal answer; usage is counted by the server (see `count_words`)
  * Reply  -> a normal answer with explicit usage numbers / finish reason
  * Fault  -> Fault.rate_limited(retry_after_s=0), Fault.server_error(), Fault.status(401),
              Fault.slow(delay_s, then="text"), Fault.malformed(), and faults that break a normal
              answer on the wire: Fault.hang(), Fault.short_body(), Fault.cut_stream(end_marker=False),
              Fault.reset(), Fault.bad_events() (see each for what it sends)
`scripted(a, b, ...)` answers with a, then b, ..., repeating the last one forever.
The responder runs on the server's threads: keep it thread-safe (it may be called concurrently).
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

__all__ = ["LLMServer", "ChatRequest", "Reply", "Fault", "scripted", "count_words"]


def count_words(text: str) -> int:
    """The server's own 'tokenizer': whitespace words. Deterministic, so tests can predict usage."""
    return len(text.split())


@dataclass(frozen=True)
class ChatRequest:
    """One request as the server received it, normalised across the two wire formats."""

    api: str                      # "openai" | "anthropic" | "anthropic_count_tokens"
    path: str
    model: str
    system: str                   # system prompt text ("" if none)
    messages: tuple[dict, ...]    # ({"role": ..., "content": <text>}, ...) excluding OpenAI system messages
    stream: bool
    max_tokens: int | None
    temperature: float | None
    headers: dict                 # lower-cased header names
    body: dict                    # the raw JSON body

    @property
    def prompt(self) -> str:
        """All user-message text joined (what a simulated reader reads)."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def input_words(self) -> int:
        return count_words(self.system) + sum(count_words(m["content"]) for m in self.messages)


@dataclass(frozen=True)
class Reply:
    """A normal answer with explicit usage. None -> counted by `count_words`."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str = "stop"   # OpenAI spelling; mapped to Anthropic's "end_turn"/"max_tokens"
    tool_input: dict | None = None   # Anthropic only: reply with a tool_use block (the request's forced tool)


@dataclass(frozen=True)
class Fault:
    """A failure the server should produce instead of an answer."""

    kind: str                     # "status" | "slow" | "malformed" | "hang" | "short" | "cut" | "reset" | "bad_events"
    status: int = 500
    retry_after_s: float | None = None
    delay_s: float = 0.0
    then: Union[str, Reply, None] = None
    message: str = "simulated failure"
    mid_stream: bool = False      # hang/reset: after the first piece of the answer instead of before any byte
    end_marker: bool = False      # cut: the stream's end marker is sent before the clean close

    @classmethod
    def rate_limited(cls, retry_after_s: float = 0.0) -> "Fault":
        return cls("status", status=429, retry_after_s=retry_after_s, message="rate limited")

    @classmethod
    def server_error(cls, status: int = 500) -> "Fault":
        return cls("status", status=status, message="internal server error")

    @classmethod
    def status(cls, status: int, message: str = "simulated failure") -> "Fault":  # type: ignore[override]
        return cls("status", status=status, message=message)

    @classmethod
    def slow(cls, delay_s: float, then: Union[str, Reply] = "slow answer") -> "Fault":
        return cls("slow", delay_s=delay_s, then=then)

    @classmethod
    def malformed(cls) -> "Fault":
        return cls("malformed")

    # Faults on the wire: the answer `then` is rendered normally, then broken as it is sent.
    @classmethod
    def hang(cls, mid_stream: bool = False, then: Union[str, Reply] = "The answer is cut") -> "Fault":
        """Sends nothing (or, mid_stream, the first piece of the answer) and holds the connection open."""
        return cls("hang", mid_stream=mid_stream, then=then)

    @classmethod
    def short_body(cls, then: Union[str, Reply] = "The answer is complete") -> "Fault":
        """Declares the full Content-Length, sends half the body (JSON or SSE), then closes cleanly."""
        return cls("short", then=then)

    @classmethod
    def cut_stream(cls, then: Union[str, Reply] = "The answer is ", end_marker: bool = False) -> "Fault":
        """Streams: all of `then`, then a clean close. Without end_marker no finish_reason/usage/[DONE]
        (OpenAI) or content_block_stop/message_delta/message_stop (Anthropic); with it, everything but
        [DONE]. A plain request gets `then` as a normal answer (its end is the Content-Length)."""
        return cls("cut", then=then, end_marker=end_marker)

    @classmethod
    def reset(cls, mid_stream: bool = False, then: Union[str, Reply] = "The answer is cut") -> "Fault":
        """A TCP reset (RST) before any byte, or mid_stream after the first piece of the answer."""
        return cls("reset", mid_stream=mid_stream, then=then)

    @classmethod
    def bad_events(cls) -> "Fault":
        """A stream of valid JSON in the wrong shape: Anthropic text deltas with no message_start;
        OpenAI objects that are not chat.completion.chunk. A plain request gets a JSON object of neither."""
        return cls("bad_events")


Responder = Callable[[ChatRequest], Union[str, Reply, Fault]]


def scripted(*items: Union[str, Reply, Fault]) -> Responder:
    """A responder answering with items in order, then repeating the last (thread-safe)."""
    if not items:
        raise ValueError("scripted() needs at least one item")
    lock = threading.Lock()
    state = {"i": 0}

    def responder(_request: ChatRequest) -> Union[str, Reply, Fault]:
        with lock:
            item = items[min(state["i"], len(items) - 1)]
            state["i"] += 1
        return item

    return responder


def _text_of(content: Any) -> str:
    """Message content as plain text: a string, or a list of {type: text, text} parts/blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _chunks(text: str, n: int = 3) -> list[str]:
    """Splits an answer into a few stream deltas (keeps whitespace, so joining restores it)."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _sse_bytes(data: str, event: str | None = None) -> bytes:
    return ((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode()


WIRE_FAULTS = ("hang", "short", "cut", "reset")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall each

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), extra=extra)

    def _start_sse(self, content_length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if content_length is not None:
            self.send_header("Content-Length", str(content_length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, data: str, event: str | None = None) -> None:
        self.wfile.write(_sse_bytes(data, event))
        self.wfile.flush()

    # ---- wire faults: a normal answer, broken as it is sent ----------------------------------
    def _hold(self) -> None:
        """Keeps the connection open, silent, until the client gives up or the server stops."""
        self.server.stopping.wait()
        self.close_connection = True

    def _reset(self) -> None:
        """Closes with a TCP RST instead of a FIN (SO_LINGER 0): the client sees 'connection reset'."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _deliver_json(self, obj: dict) -> None:
        """Sends a plain answer, or breaks it per the request's wire fault."""
        fault, body = self._wire_fault, json.dumps(obj).encode()
        if fault is None or fault.kind == "cut":
            self._send(200, body)
            return
        if fault.kind in ("hang", "reset") and not fault.mid_stream:
            self._hold() if fault.kind == "hang" else self._reset()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))  # the full length, then only half of it
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        {"hang": self._hold, "reset": self._reset}.get(fault.kind, lambda: None)()

    def _deliver_stream(self, events: list[tuple[str, str | None, str]]) -> None:
        """Sends (data, event name, role) SSE events; role is head | text | end | done. A wire fault
        decides how far it gets: see Fault.hang/short_body/cut_stream/reset."""
        fault = self._wire_fault
        if fault is not None and fault.kind in ("hang", "reset") and not fault.mid_stream:
            self._hold() if fault.kind == "hang" else self._reset()
            return
        if fault is not None and fault.kind == "short":
            wire = b"".join(_sse_bytes(data, event) for data, event, _role in events)
            self._start_sse(content_length=len(wire))
            self.wfile.write(wire[: len(wire) // 2])
            self.wfile.flush()
            return
        if fault is not None and fault.kind == "cut":
            keep = ("head", "text", "end") if fault.end_marker else ("head", "text")
            events = [e for e in events if e[2] in keep]
        elif fault is not None:  # hang / reset mid-stream: after the first piece of the answer
            first_text = next(i for i, e in enumerate(events) if e[2] == "text")
            events = events[: first_text + 1]
        self._start_sse()
        for data, event, _role in events:
            self._sse(data, event)
        if fault is not None and fault.kind in ("hang", "reset"):
            self._hold() if fault.kind == "hang" else self._reset()

    def _bad_events(self, request: ChatRequest, api: str) -> None:
        if not request.stream:
            self._send_json(200, {"unexpected": "neither a chat completion nor a message"})
            return
        self._start_sse()
        if api == "anthropic":  # text deltas and a stop, but no message_start to hang them on
            for name, obj in (("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "The"}}),
                              ("message_stop", {})):
                self._sse(json.dumps({"type": name, **obj}), event=name)
        else:
            self._sse(json.dumps({"unexpected": "not a chat.completion.chunk"}))
            self._sse("[DONE]")

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": []})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/chat/completions"):
            self._openai(path, body, headers)
        elif path.endswith("/messages/count_tokens"):
            self._count_tokens(path, body, headers)
        elif path.endswith("/messages"):
            self._anthropic(path, body, headers)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    # ---- common fault handling ------------------------------------------------------------
    def _resolve(self, request: ChatRequest, api: str) -> Reply | None:
        """Runs the responder; sends the fault response and returns None, or returns the Reply."""
        self.server.record(request)
        try:
            outcome = self.server.responder(request)
        except Exception as exc:  # a broken responder is a 500, visible in the test
            outcome = Fault.status(500, f"responder raised {exc!r}")
        self._wire_fault = None
        if isinstance(outcome, Fault) and outcome.kind == "slow":
            # Interruptible sleep so stopping the server never waits out a long delay.
            if self.server.stopping.wait(outcome.delay_s):
                return None
            outcome = outcome.then if outcome.then is not None else "slow answer"
        if isinstance(outcome, Fault) and outcome.kind == "bad_events":
            self._bad_events(request, api)
            return None
        if isinstance(outcome, Fault) and outcome.kind in WIRE_FAULTS:
            self._wire_fault, outcome = outcome, outcome.then
        if isinstance(outcome, Fault):
            if outcome.kind == "malformed":
                if request.stream:  # a stream whose first event is cut-off JSON
                    self._start_sse()
                    self._sse('{"id": "broken", "choices": [ {"delta": ',
                              event="message_start" if api == "anthropic" else None)
                    self._sse("[DONE]")
                else:
                    self._send(200, b'{"id": "broken", "choices": [ {"message": ', "application/json")
                return None
            extra = {}
            if outcome.retry_after_s is not None:
                extra["retry-after"] = f"{outcome.retry_after_s:g}"
                extra["retry-after-ms"] = str(int(outcome.retry_after_s * 1000))
            if api == "openai":
                err = {"error": {"message": outcome.message, "type": "server_error",
                                 "code": str(outcome.status)}}
            else:
                err = {"type": "error", "error": {"type": "api_error", "message": outcome.message}}
            self._send_json(outcome.status, err, extra)
            return None
        if isinstance(outcome, str):
            outcome = Reply(outcome)
        if not isinstance(outcome, Reply):
            self._send_json(500, {"error": {"message": f"responder returned {type(outcome).__name__}"}})
            return None
        return Reply(
            text=outcome.text,
            input_tokens=request.input_words if outcome.input_tokens is None else outcome.input_tokens,
            output_tokens=count_words(outcome.text) if outcome.output_tokens is None else outcome.output_tokens,
            finish_reason=outcome.finish_reason, tool_input=outcome.tool_input,
        )

    # ---- OpenAI Chat Completions -----------------------------------------------------------
    def _openai(self, path: str, body: dict, headers: dict) -> None:
        msgs = body.get("messages") or []
        system = "\n".join(_text_of(m.get("content")) for m in msgs if m.get("role") in ("system", "developer"))
        rest = tuple({"role": m.get("role", "user"), "content": _text_of(m.get("content"))}
                     for m in msgs if m.get("role") not in ("system", "developer"))
        request = ChatRequest(
            api="openai", path=path, model=str(body.get("model", "")), system=system, messages=rest,
            stream=bool(body.get("stream")),
            max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            temperature=body.get("temperature"), headers=headers, body=body,
        )
        reply = self._resolve(request, "openai")
        if reply is None:
            return
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time()), request.model
        usage = {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                 "total_tokens": reply.input_tokens + reply.output_tokens}
        if not request.stream:
            self._deliver_json({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason, "logprobs": None}],
                "usage": usage,
            })
            return

        def chunk(delta: dict, finish: str | None) -> str:
            return json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                               "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        events = [(chunk({"role": "assistant", "content": ""}, None), None, "head")]
        events += [(chunk({"content": piece}, None), None, "text") for piece in _chunks(reply.text)]
        events.append((chunk({}, reply.finish_reason), None, "end"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "choices": [], "usage": usage}), None, "end"))
        events.append(("[DONE]", None, "done"))
        self._deliver_stream(events)

    # ---- Anthropic Messages -----------------------------------------------------------------
    def _anthropic_request(self, api: str, path: str, body: dict, headers: dict) -> ChatRequest:
        msgs = tuple({"role": m.get("role", "user"), "content": _text_of(m.get("content"))}
                     for m in body.get("messages") or [])
        return ChatRequest(
            api=api, path=path, model=str(body.get("model", "")), system=_text_of(body.get("system")),
            messages=msgs, stream=bool(body.get("stream")), max_tokens=body.get("max_tokens"),
            temperature=body.get("temperature"), headers=headers, body=body,
        )

    def _count_tokens(self, path: str, body: dict, headers: dict) -> None:
        request = self._anthropic_request("anthropic_count_tokens", path, body, headers)
        self.server.record(request)
        self._send_json(200, {"input_tokens": request.input_words})

    def _anthropic(self, path: str, body: dict, headers: dict) -> None:
        request = self._anthropic_request("anthropic", path, body, headers)
        reply = self._resolve(request, "anthropic")
        if reply is None:
            return
        mid, model = f"msg_{uuid.uuid4().hex[:12]}", request.model
        stop = {"stop": "end_turn", "length": "max_tokens"}.get(reply.finish_reason, reply.finish_reason)
        content = [{"type": "text", "text": reply.text}]
        if reply.tool_input is not None:
            tool = (request.body.get("tool_choice") or {}).get("name", "tool")
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": tool,
                        "input": reply.tool_input}]
            stop = "tool_use"
        if not request.stream:
            self._deliver_json({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": content,
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
            })
            return
        ev = lambda name, obj, role: (json.dumps({"type": name, **obj}), name, role)  # noqa: E731
        events = [
            ev("message_start", {"message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1}}}, "head"),
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}, "head"),
            ev("ping", {}, "head"),
        ]
        events += [ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}, "text")
                   for piece in _chunks(reply.text)]
        events += [
            ev("content_block_stop", {"index": 0}, "end"),
            ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                 "usage": {"output_tokens": reply.output_tokens}}, "end"),
            ev("message_stop", {}, "end"),
        ]
        self._deliver_stream(events)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, responder: Responder):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.responder = responder
        self.requests: list[ChatRequest] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (timeouts, fault tests) is expected: no traceback on stderr."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def record(self, request: ChatRequest) -> None:
        with self._lock:
            self.requests.append(request)


@dataclass
class LLMServer:
    """Context manager running the fake LLM server on a random 127.0.0.1 port."""

    responder: Responder = field(default=lambda req: "ok")
    _server: _Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _port: int | None = field(default=None, init=False, repr=False)

    def start(self) -> "LLMServer":
        self._server = _Server(self.responder)
        self._port = self._server.server_address[1]
        self._requests: list[ChatRequest] = self._server.requests
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def __enter__(self) -> "LLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port (still readable after the server stopped, for messages that name the URL)."""
        assert self._port is not None, "server not started"
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.root_url

    @property
    def requests(self) -> list[ChatRequest]:
        """Requests received so far (a copy; still readable after the server stopped)."""
        assert self._port is not None, "server not started"
        if self._server is None:
            return list(self._requests)
        with self._server._lock:
            return list(self._server.requests)

    def set_responder(self, responder: Responder) -> None:
        """Swaps the responder while running (e.g. between phases of one test)."""
        self.responder = responder
        if self._server is not None:
            self._server.responder = responder
