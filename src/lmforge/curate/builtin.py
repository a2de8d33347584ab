"""Importing this module registers lmforge's built-in curation steps."""

from lmforge.curate import decontam, dedup, filters, minhash, paragraphs  # noqa: F401
