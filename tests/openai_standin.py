"""An OpenAI-compatible chat-completions server for tests, on 127.0.0.1 at a free port.

It speaks the real protocol (`POST /v1/chat/completions`, a `chat.completion` object back) and answers
the listwise prompt deterministically: each document line `[id] text` is graded by the number after
`grade` in its text, best first. The requested `model` picks a behaviour, so one server covers every
case: `grader` (correct), `reverse`, `partial`, `duplicate`, `unknown`, `malformed`, `no-choices`,
`error` (HTTP 500), `slow` (answers after `delay_s`), `trickle` (the body a byte at a time, `delay_s`
apart). Requests missing the JSON-schema `response_format` are refused with 400, like a strict server.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LINE = re.compile(r"^\[(?P<id>[^\]]+)\] (?P<text>.*)$", re.MULTILINE)
GRADE = re.compile(r"grade (\d+)")


@dataclass
class StandIn:
    url: str
    delay_s: float = 2.0
    behaviour: str | None = None  # when set, answers as this model whatever the request names
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"headers": {...}, "body": {...}}


def graded(prompt: str) -> list[str]:
    """The prompt's document ids, highest grade first (ties keep prompt order)."""
    docs = [(m["id"], int(g[1]) if (g := GRADE.search(m["text"])) else 0) for m in LINE.finditer(prompt)]
    return [doc_id for doc_id, _ in sorted(docs, key=lambda d: -d[1])]


def answer(model: str, prompt: str) -> tuple[int, Any]:
    """Status and JSON (or raw text) content of the answer to one listwise prompt."""
    ids = graded(prompt)
    rankings = {"grader": ids, "slow": ids, "trickle": ids, "reverse": [m["id"] for m in LINE.finditer(prompt)][::-1],
                "partial": ids[: len(ids) // 2], "duplicate": [ids[0]] + ids[:-1],
                "unknown": ids[:1] + ["not-a-document"] + ids[1:]}
    if model == "error":
        return 500, {"error": {"message": "internal error", "type": "server_error"}}
    if model == "no-choices":
        return 200, {"object": "chat.completion", "choices": []}
    content = ("the best documents are the first ones" if model == "malformed"
               else json.dumps({"ranking": rankings[model]}))
    return 200, {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(ids), "total_tokens": 0}}


@contextmanager
def standin() -> Iterator[StandIn]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = StandIn(f"http://127.0.0.1:{server.server_address[1]}/v1")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read captured logs
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"headers": dict(self.headers), "body": body})
            if self.path != "/v1/chat/completions":
                return self.reply(404, {"error": {"message": f"no route {self.path}"}})
            if body.get("response_format", {}).get("type") != "json_schema":
                return self.reply(400, {"error": {"message": "response_format must be a json_schema"}})
            model = state.behaviour or body["model"]
            if model == "slow":
                time.sleep(state.delay_s)
            status, payload = answer(model, body["messages"][-1]["content"])
            self.reply(status, payload, trickle=model == "trickle")

        def reply(self, status: int, payload: Any, trickle: bool = False) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(0, len(data), 1 if trickle else len(data)):
                    self.wfile.write(data[i:i + 1] if trickle else data)
                    self.wfile.flush()
                    if trickle:
                        time.sleep(state.delay_s)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
