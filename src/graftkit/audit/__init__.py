"""The data audit: duplicates, leaks across splits, label conflicts and likely label errors,
imbalance, outliers and odd inputs (``findings``: the analysis; ``run``: ``graft audit``)."""
