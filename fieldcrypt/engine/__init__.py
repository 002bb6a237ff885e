"""The one rewrite engine and its transforms: protect, rotate, re-index (and history); verification and
the checks around a replace.
"""
