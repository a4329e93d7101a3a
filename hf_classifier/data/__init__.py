"""Data: `schema` (the `ImageData` every stage receives) <- `sources` (folders, CSVs, Hub data sets,
split folders), resolved through `resolve` (the one path from user input to image references, shared
with `streaming` and predict); `images` (the one image opener); `scan` (the one pass over the images,
shared by `checks`, `inspection` and the `prepared` cache); `splits`, `duplicates`, `sampling`.
"""
