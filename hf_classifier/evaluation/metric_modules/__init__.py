"""`evaluate` metric modules bundled with the package, so metrics load without the Hub.

Each folder holds one module script in evaluate's format; `hf_classifier.evaluation.metrics` loads them by path.
The scripts compute nothing themselves: they call the functions of `hf_classifier.evaluation.metrics`
(NumPy; the Hub versions need scikit-learn).
"""
