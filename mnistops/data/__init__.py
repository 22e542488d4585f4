"""Data: the catalog (catalog.py: a split by name, verified, read once per process), mirrors and
checksums (mirrors.py: fetch, verify by content, cache), IDX parsing (idx.py), in-memory batches and
the Lightning DataModule (datamodule.py)."""
