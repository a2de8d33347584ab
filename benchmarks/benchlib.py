"""What every benchmark here does the same way: run the cases interleaved (so machine noise
hits all alike), take medians, print one line per case plus the ratio and the command, and
keep the numbers as JSON in benchmarks/results/."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing, too


def run_interleaved(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each case's measurements over `repeats` rounds; within a round the cases run in turn."""
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            results[name].append(case())
    return results


def report(name: str, results: dict[str, list[float]], *, unit: str, ours: str, peer: str, command: str,
           extra: dict | None = None) -> float:
    """Print medians and the ours/peer ratio (higher is better); write results/NAME.json."""
    medians = {case: statistics.median(values) for case, values in results.items()}
    width = max(map(len, medians))
    for case, value in medians.items():
        print(f"{case:<{width}}  {value:12,.2f} {unit}  (median of {len(results[case])})")
    ratio = medians[ours] / medians[peer]
    print(f"{'ratio ' + ours + ' / ' + peer:<{width}}  {ratio:12.2f}x")
    print(f"command: {command}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    payload = {"unit": unit, "runs": results, "median": medians, "ratio": ratio, "command": command, **(extra or {})}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    return ratio
