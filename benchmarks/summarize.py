"""A Markdown table of `hone bench train` reports, for the READMEs: each row read from its
result file, so that every figure quoted there can be traced back (and regenerated).

    python benchmarks/summarize.py benchmarks/results/bench-qa-minilm-cpu-speed2.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    report = json.loads(path.read_text())
    settings, systems = report["settings"], report["systems"]
    hone, base = systems["hone"], systems["transformers"]
    ratio = report["hone_vs_transformers"]
    spread = ratio.get("samples_per_second_ratio_spread") or {}
    repeats = len(ratio.get("samples_per_second_ratio_per_repeat") or [1])
    steps = len(hone["step_times_s"])
    memory = ratio.get("peak_memory_ratio")
    return " | ".join([
        f"| {settings['task']}", settings["hardware"]["name"], report["data"].get("baseline_padding", ""),
        f"{hone['samples_per_second']:.2f}", f"{base['samples_per_second']:.2f}",
        f"**{ratio['samples_per_second_ratio']:.2f}x**",
        f"{spread['min']:.2f}-{spread['max']:.2f}" if spread else "",
        f"{repeats} x {steps // repeats}", f"{memory:.2f}" if memory else "", f"`{path.name}` |"])


def main(paths: list[str]) -> None:
    print("| task | hardware | baseline padding | hone samples/s | transformers samples/s | ratio | ratio per repeat "
          "(min-max) | repeats x timed steps | peak memory (hone / transformers) | file |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        print(row(Path(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
