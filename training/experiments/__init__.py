"""Experiments: recipes that call the training library (``training``) and write reports.

``demo`` (``quads-demo``: the shipped FSC model, end to end), ``context_build`` and
``context_report`` (``quads-demo --context``: a model for your own commands), ``table2`` and
``table2_probe`` (the paper's Table 2 analog). The library never imports this package.
"""
