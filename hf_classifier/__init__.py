"""hf_classifier: fine-tune Hugging Face vision models on image folders or a metadata CSV.

Data flows one way: sources -> images -> transforms -> model -> training -> evaluation -> card/push.
"""

__version__ = "0.1.0"
