"""Importing this module registers lmforge's built-in curation steps."""

from lmforge.curate import classifier, decontam, dedup, filters, language, minhash, paragraphs, pii, select  # noqa: F401
