"""Finding out what happened in a run: which documents a step trained on."""
