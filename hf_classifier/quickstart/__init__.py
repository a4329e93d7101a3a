"""`hf-classifier quickstart`: the whole pipeline on an embedded, procedurally drawn data set,
apart from the library path.
"""
