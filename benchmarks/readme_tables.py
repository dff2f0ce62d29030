"""The README's results section, generated from committed result files (no number in it is typed by hand).

Reads the newest ``benchmarks/results/quality-cpu-budget-*.json`` that holds a label-savings curve (the product's
answer, several seeds: benchmarks/quality.py), the newest ``make_run_summary-*.txt`` (what a cold ``make run``
printed, one seed: benchmarks/make_run_summary.py) and the newest ``multirank-cpu-*.json`` (benchmarks/multirank.py),
and writes the block between the ``results:begin`` and ``results:end`` markers of README.md.

    python benchmarks/readme_tables.py           # rewrite the block
    python benchmarks/readme_tables.py --check   # exit 1 when README.md differs (tests/test_readme.py runs it)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- results:begin", "<!-- results:end -->"


def newest(pattern: str) -> Path:
    """The result file matching ``pattern`` with the latest date in its name (YYYYMMDD, or YYYYMMDDTHHMM: later that
    day)."""
    files = sorted(RESULTS.glob(pattern), key=lambda path: re.findall(r"\d{8}(?:T\d{4})?", path.name)[-1])
    if not files:
        raise FileNotFoundError(f"no committed result matches benchmarks/results/{pattern}")
    return files[-1]


def make_run_block(path: Path) -> list[str]:
    """The header facts, the results table and the label-saving lines of a make run summary file."""
    lines = path.read_text().splitlines()
    header = {
        key: value
        for key, value in (line[2:].split(": ", 1) for line in lines if line.startswith("# ") and ": " in line)
    }
    table = [line for line in lines if line.startswith("|")]
    start = next(
        i for i, line in enumerate(lines) if line.startswith(("This run's verdicts", "Labels saved"))
    )  # the latter: older summaries
    saving = lines[start : lines.index("", start)]
    cpu = f" ({header['cpu']})" if "cpu" in header else ""
    load = header.get("load average at the end (1, 5, 15 min)", "?")
    return [
        f"`make run`, one seed, cold, on a {header['machine'].replace(', cpu', ', no GPU')}{cpu}"
        f" (`{path.relative_to(RESULTS.parent.parent)}`, commit {header['commit']}"
        f"{' (dirty)' if header['dirty'] == 'True' else ''}, {header['date']}, load {load}):"
        f" `make run` wall time {header['wall time']}{_shared_machine(header['machine'], load)}.",
        "",
        *table,
        "",
        *[f"- {line}" if i else f"{line}" for i, line in enumerate(saving)],
    ]


def _shared_machine(machine: str, load: str) -> str:
    """A caveat when the 15-minute load average at the end was above the machine's cores: other work shared them, so
    the wall time is not the pipeline's own ("" otherwise, or when the header does not say)."""
    cores, loads = re.match(r"(\d+)-core", machine), re.findall(r"[\d.]+", load)
    if cores is None or len(loads) != 3 or float(loads[2]) <= int(cores.group(1)):
        return ""
    return f" (taken while other work shared the {cores.group(1)} cores: not the pipeline's own time)"


def quality_block(path: Path) -> list[str]:
    """The headline (labels saved against each baseline, with its interval and verdict), the curves as a table, and
    the chart beside the result file."""
    record = json.loads(path.read_text())
    machine, seeds = record["machine"], record["seeds_done"]
    where = path.relative_to(RESULTS.parent.parent)
    lines = [
        "How many labels self-supervision saves: `benchmarks/quality.py --cpu-budget`,"
        f" {len(seeds)} seeds {seeds} (each pretrains, fine-tunes and self-trains anew), on {machine['cpu_model']}"
        f" ({machine['torch_cpu_capability']} kernels), commit {machine['commit']}"
        f"{' (dirty)' if machine['dirty'] else ''} (`{where}`)."
        " Labels used = training + validation folds of the budget; every arm chosen on"
        " validation; intervals: 95%, bootstrap over test cases (PROXY cases: MNIST has no patients) and seeds.",
        "",
    ]
    for baseline, found in record["labels_saved"].items():
        lines.append(
            f"- labels saved against {baseline}: {found['labels_saved']};"
            f" target >= {found['target']:g}x: {found['verdict']}"
        )
    curves = record["curves"]
    fractions = sorted({f for curve in curves.values() for f in curve["fractions"]})
    lines += ["", "| fraction | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for fraction in fractions:
        cells = []
        for curve in curves.values():
            if fraction in curve["fractions"]:
                i = curve["fractions"].index(fraction)
                cells.append(
                    f"{curve['accuracy'][i]:.4f} [{curve['low'][i]:.4f}, {curve['high'][i]:.4f}]"
                    f" ({curve['labels'][i]} labels, {curve['arms'][i]})"
                )
            else:
                cells.append("-")
        lines.append(f"| {fraction:g} | " + " | ".join(cells) + " |")
    return lines + ["", f"![label-savings curve]({where.with_suffix('.png').as_posix()})"]


def newest_quality() -> Path | None:
    """The newest quality-cpu-budget result that holds a label-savings curve, or None."""
    files = sorted(
        RESULTS.glob("quality-cpu-budget-*.json"), key=lambda path: re.findall(r"\d{8}(?:T\d{4})?", path.name)[-1]
    )
    with_curve = [path for path in files if "labels_saved" in json.loads(path.read_text())]
    return with_curve[-1] if with_curve else None


def multirank_block(path: Path) -> list[str]:
    """One line per method and world size of a multirank result: exact coverage, steps, agreement across ranks,
    resume."""
    record = json.loads(path.read_text())
    machine = record["machine"]
    by_method = (
        record["results"] if "W1" not in record["results"] else {"simclr": record["results"]}
    )  # older results: SimCLR only
    lines = [
        f"Many ranks, one model, on CPU with gloo (`{path.relative_to(RESULTS.parent.parent)}`,"
        f" commit {machine['commit']}{' (dirty)' if machine['dirty'] else ''}):"
        f" {sum(record['shard_sizes'])} images in {len(record['shard_sizes'])} uneven shards.",
        "",
    ]
    lines += [
        "| method | ranks | every image once per epoch (+ padding) | steps per rank per epoch | images/s per rank"
        " | same model on every rank | killed and resumed: bitwise equal weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, results in by_method.items():
        for result in results.values():
            resumed = str(result["resume_bitwise_equal"]) if "resume_bitwise_equal" in result else "-"
            same = str(result.get("method_state_identical_across_ranks", "-"))
            steps = sorted({tuple(rank) for rank in result["steps_per_rank"]})
            rates = ", ".join(f"{rate:.0f}" for rate in result["images_per_second_per_rank"])
            lines.append(
                f"| {method} | {result['world_size']} | {result['coverage_exact']}"
                f" (+{result['padded_images_per_epoch']}) | {' / '.join(map(str, steps))}"
                f" | {rates} | {same} | {resumed} |"
            )
    return lines


def block() -> str:
    quality = newest_quality()
    lines = [
        *(quality_block(quality) + [""] if quality else []),
        *make_run_block(newest("make_run_summary-*.txt")),
        "",
        *multirank_block(newest("multirank-cpu-*.json")),
    ]
    return "\n".join(lines) + "\n"


def updated(readme: str) -> str:
    start, end = readme.index(BEGIN), readme.index(END)
    opening = readme[start : readme.index("\n", start) + 1]
    return readme[:start] + opening + block() + readme[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is not what the results give")
    args = parser.parse_args()
    current = README.read_text()
    wanted = updated(current)
    if args.check:
        sys.exit(
            0
            if wanted == current
            else "README.md's results section differs from the committed results: "
            "run python benchmarks/readme_tables.py"
        )
    README.write_text(wanted)


if __name__ == "__main__":
    main()
