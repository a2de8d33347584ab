"""Turn a finished run into a fully open release: a folder laid out as a Hugging Face model
repository (the final model, each kept checkpoint as a loadable revision named OLMo's way, the
card, the data manifest and order, logs and sums), checkable offline and pushable to the hub
with one branch per revision. It reads runs and checkpoints and is never imported by training.
"""
