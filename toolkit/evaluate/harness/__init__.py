"""`toolkit eval`: lm-evaluation-harness tasks scored on the user's own models, offline."""
