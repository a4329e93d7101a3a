"""Data: sources (folder, CSV, shards) -> image references, the one image opener, checks, the prepared
cache, streaming, splits, duplicates, inspection.
"""
