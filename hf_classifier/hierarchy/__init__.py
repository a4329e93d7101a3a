"""The label hierarchy as an extension: a coarser label column (phylum, order, ...) as an extra
head (multitask), as routing (experts), and the comparison with and without it.
"""
