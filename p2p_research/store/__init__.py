"""Storage layer: the SQLite ledger and the autoresearch-compatible results.tsv."""
