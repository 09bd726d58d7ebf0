"""The cache of generated texts that `data prefs`, compare, the judge and gap drafts share: one
SQLite file per folder, keyed by (model identity, decoding parameters, prompt or conversation), so a
re-run only generates what is missing and an interrupted run keeps every generation it finished.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from toolkit.params import DecodingParams


class GenerationCache:
    """Generations keyed by (model digest, parameters, prompt) in one SQLite file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @staticmethod
    def key(model_id: str, params: DecodingParams, prompt: str | list[dict]) -> str:
        blob = json.dumps([model_id, params.to_dict(), prompt], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM generations WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        with self._db:  # one transaction per write: an interrupted run keeps what it generated
            self._db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        self._db.close()


def model_id(backend: str, model: str, url: str) -> str:
    """What identifies a model's weights: the GGUF digest in process, the name at a server otherwise."""
    if backend == "llamacpp":
        from toolkit.models import resolve

        return resolve(model, hf=False).weights_id()  # the LoRA's digest too, for a Modelfile with an ADAPTER
    return f"{backend}:{url}:{model}"
