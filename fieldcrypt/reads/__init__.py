"""Decrypting reads: the one read rule, reveal and dispatch."""
