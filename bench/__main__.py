"""Run the benchmarks, print the table, write it as JSON (and Markdown).

``python -m bench`` runs all seven at full size; ``--small`` runs each once at
a small size (what CI does, so that they keep working); ``--only latency,burst``
picks some. Times are never asserted here: a benchmark reports, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .benchmarks import ALL, FULL, SMALL, Result

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(text: str, readme: Path = README) -> None:
    """Put the tables between the README's bench markers."""
    page = readme.read_text()
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{readme}: no {BEGIN} marker")
    readme.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        parts = [f"{k} {_cell(v)}" for k, v in value.items() if k != "n"]
        return " / ".join(parts)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown tables: one per benchmark, then the targets."""
    out = [
        f"Measured {meta['date']} on {meta['machine']} ({meta['size']} size,"
        f" load before {meta['load_before']}, after {meta['load_after']}).",
        "",
    ]
    targets: list[tuple[str, dict[str, Any]]] = []
    for res in results:
        out.append(f"**{res['title']}**" + (" (FAILED)" if res.get("error") else ""))
        out.append("")
        rows = res["rows"]
        if rows:
            keys: list[str] = []
            for row in rows:
                keys.extend(k for k in row if k not in keys)
            out.append("| " + " | ".join(keys) + " |")
            out.append("|" + "---|" * len(keys))
            for row in rows:
                out.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
            out.append("")
        for note in res.get("notes", []):
            out.append(f"- {note}")
        if res.get("error"):
            out.append(f"- error: {res['error']}")
        out.append("")
        targets.extend((res["name"], t) for t in res["targets"])
    out.append("**Targets**")
    out.append("")
    out.append("| benchmark | target | figure | met |")
    out.append("|---|---|---|---|")
    for name, t in targets:
        met = {True: "yes", False: "**MISSED**", None: "-"}[t["met"]]
        out.append(f"| {name} | {t['target']} | {_cell(t['figure'])} | {met} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--small", action="store_true", help="every benchmark, once, small"
    )
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(ALL))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--readme", action="store_true", help="also put the tables in README.md"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    size = SMALL if args.small else FULL
    names = [n for n in args.only.split(",") if n] or list(ALL)
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out = args.out or RESULTS / ("small.json" if args.small else "latest.json")

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}"
        f" {platform.release()}, Python {platform.python_version()}",
        "size": size.name,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": "the machine is shared with other work; clients run on it too",
    }
    results: list[dict[str, Any]] = []
    failed = False
    for name in names:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            res = ALL[name](size)
            res.seconds = time.monotonic() - start
            results.append(res.as_dict())
        except Exception as exc:
            failed = True
            traceback.print_exc()
            empty = Result(name, name)
            empty.seconds = time.monotonic() - start
            results.append({**empty.as_dict(), "error": repr(exc)[:500]})
        print(
            f"   {name}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True
        )
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = markdown(results, meta)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(f"written: {out}", file=sys.stderr)
    if args.readme:
        update_readme(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
