"""Data: documents (dolma JSONL), tokenizers, token files, training instances."""
