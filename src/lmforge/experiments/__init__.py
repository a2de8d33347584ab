"""Experiments that train several models: they sit below cli and above train/eval/analysis.

This layer may import `lmforge.train`, `lmforge.eval` and `lmforge.analysis`; nothing in those
imports it. `ladder` (with `ladder_config`): a grid of model sizes × token budgets trained as
ordinary runs, then scaling laws fitted and a larger model's loss predicted (`lmforge ladder`).
`ablate` (with `ablate_config`, `ablate_report`): one recipe trained on several data sets ×
seeds at equal tokens, compared against the seed spread (`lmforge ablate`). `runner`: training
planned runs, shared by ladder and ablate. `coord_check`: µP coordinate checks across widths
(`lmforge analyze coord-check`).
"""
