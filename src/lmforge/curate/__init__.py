"""Data curation: quality filters, deduplication, decontamination and mixing of dolma-format
documents, run as a sharded, resumable pipeline (`lmforge data curate PIPELINE.yaml`)."""
