"""Raw files (mirrors.py: fetch, verify, cache), IDX parsing (idx.py), in-memory batches and the
Lightning DataModule (datamodule.py)."""
