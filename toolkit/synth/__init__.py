"""`toolkit data synth`: synthetic research questions and answers from a local model, screened
(malformed, length, near-duplicates, leakage into the real splits, grounding, an optional judge),
optionally reviewed by a person, written in the format `train` reads."""
