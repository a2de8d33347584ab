"""Importing this module registers lmforge's built-in curation steps."""

from lmforge.curate import decontam, dedup, filters, language, minhash, paragraphs, pii  # noqa: F401
