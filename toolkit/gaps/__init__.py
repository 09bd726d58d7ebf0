"""`toolkit gaps`: find under-explored areas in a corpus of abstracts, backtest the claim, draft directions."""
