"""The cache of generated texts that `data prefs`, compare, the judge and gap drafts share, and the
one helper they generate through (`generate_cached`).

One SQLite file per folder (each command keeps its own file), keyed by one convention for every
command: the model's identity (the backend's `weights_id`), the conversation (a bare prompt is one
user turn), the decoding parameters and the seed. A re-run only generates what is missing and an
interrupted run keeps every generation it finished.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.params import DecodingParams
from toolkit.runtime.backends import BackendSpec, backend_class
from toolkit.runtime.generation import Messages, as_messages


@dataclass
class Request:
    """One generation to make: a conversation and its decoding parameters (the seed among them),
    and optionally the JSON schema its reply must follow (`schema`: sent through the backend's
    JSON/grammar mode where it has one, `Capabilities.json_mode`; elsewhere the prompt alone asks)."""

    conversation: Messages
    params: DecodingParams
    schema: dict | None = None

    @classmethod
    def of(cls, prompt: str | Messages, params: DecodingParams, system: str | None = None, schema: dict | None = None) -> Request:
        """A prompt as a conversation: a bare prompt is one user turn, after `system` when given."""
        return cls(as_messages(prompt, system), params, schema)


class GenerationCache:
    """Generations keyed by (model identity, conversation, parameters, seed) in one SQLite file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @staticmethod
    def key(model_id: str, request: Request) -> str:
        """The one key convention: the same request through any command is the same key (a schema
        counts only when set, so requests without one keep the keys they always had)."""
        params = request.params.to_dict()
        seed = params.pop("seed")  # stated on its own: a different seed is a different sample
        fields = {"model": model_id, "conversation": as_messages(request.conversation), "params": params, "seed": seed}
        if request.schema is not None:
            fields["schema"] = request.schema
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM generations WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        with self._db:  # one transaction per write: an interrupted run keeps what it generated
            self._db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        self._db.close()


def generate_cached(backend: BackendSpec, requests: Sequence[Request], cache: GenerationCache, label: str) -> tuple[list[dict], int]:
    """Every request's generation (`Generation.to_dict()`), in the requests' order, and how many
    were generated now rather than read from `cache`.

    The backend is opened only when something is missing (with the context `backend.n_ctx`, else
    the largest `num_ctx` asked), sized for those prompts (`reserve`), and runs up to its
    `parallel` at once (`generate_stream`); each generation is cached as it finishes, so an
    interrupted run loses none. A request's `schema` goes to the backend's JSON/grammar mode where
    it has one (`Capabilities.json_mode`); elsewhere the prompt alone asks for the format. `label`
    names the progress bar.
    """
    from toolkit.console import progress

    model = backend.weights_id()
    keys = [GenerationCache.key(model, r) for r in requests]
    done = [cache.get(k) for k in keys]
    missing = [i for i, d in enumerate(done) if d is None]
    if missing:
        asked = [requests[i].params for i in missing]
        n_ctx = backend.n_ctx or max(p.num_ctx for p in asked)
        with backend.open(n_ctx) as engine, progress() as bar:
            task = bar.add_task(label, total=len(missing), info="")
            engine.reserve([as_messages(requests[i].conversation) for i in missing], max(p.max_tokens for p in asked))  # KV room sized to these prompts
            for schema, todo in _by_schema(requests, missing, backend_class(backend.name).capabilities.json_mode):
                # no schema, no argument: a backend's own generate_stream need not take one
                extra = {} if schema is None else {"schema": schema}
                for i, gen in engine.generate_stream(lambda todo=todo: todo.popleft() if todo else None, **extra):
                    done[i] = gen.to_dict()
                    cache.put(keys[i], done[i])
                    bar.advance(task)
    return done, len(missing)  # type: ignore[return-value]  # every None was filled


def _by_schema(requests: Sequence[Request], missing: list[int], json_mode: bool) -> list[tuple[dict | None, deque]]:
    """The missing requests as jobs, one queue per schema (a backend constrains a whole stream
    alike); without a JSON mode every request is one plain queue."""
    queues: dict[str, tuple[dict | None, deque]] = {}
    for i in missing:
        r = requests[i]
        schema = r.schema if json_mode else None
        queues.setdefault(json.dumps(schema, sort_keys=True), (schema, deque()))[1].append((i, as_messages(r.conversation), r.params))
    return list(queues.values())
