"""Reading datasets (arXiv abstracts, QA, chat, preference) and building splits."""
