"""The runtime around every tier call: budget, observability, PII, chunking, cache.

Each module reads what a tier declares about itself (``extract.tiers.base``) instead of
keeping its own copy of a tier's rules. Nothing here imports the pipeline or the front, and
no concrete tier. This ``__init__`` imports nothing, so importing one runtime module does
not import the others.
"""
