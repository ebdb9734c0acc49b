"""Package data: the hand-written built-in task files (JSONL)."""
