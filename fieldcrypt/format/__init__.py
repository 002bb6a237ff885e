"""Bytes on disk: the cell and wrapped-key formats, padding, masks, attribute paths, Arrow column
helpers, the cell kernel, canonical JSON, the file's own metadata, and the column-chunk splice.
"""
