"""Reading datasets (arXiv abstracts, QA, chat, preference) and building splits.

Modules: `records` (record types, format names, shared helpers), `files` (decoding, JSON/JSONL
iteration), `readers` (one reader per format, detection, `load_examples`), `build` (`data build`),
`check` (`data check`), `textsplit` (sentence splitter).
"""
