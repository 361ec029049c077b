"""Summarise a mutmut 3 run of one module (run from its clone) or the table of all modules (--table WORK).

    python summarize.py --module metrics --source src/agiqa/metrics.py [--json out.json] [--show] -- PATTERN...
    python summarize.py --table /tmp/mutwork

Score = killed / all mutants of the selected functions ("no tests" and "survived" both count against it; a timeout
counts as killed, as mutmut does). `--show` prints the diff of every surviving mutant (`mutmut show`).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

# mutmut 3 exit codes (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check",
          None: "not checked"}
KILLED = ("killed", "timeout", "caught by type check")


def summarize(source: str, patterns: list[str]) -> dict:
    meta = json.loads(Path("mutants", source + ".meta").read_text())
    codes = {k: v for k, v in meta["exit_code_by_key"].items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    statuses = {k: STATUS.get(v, "suspicious") for k, v in codes.items()}
    counts = Counter(statuses.values())
    killed = sum(counts[s] for s in KILLED)
    return {"source": source, "patterns": patterns, "total": len(codes), "killed": killed,
            "survived": counts["survived"], "no_tests": counts["no tests"], "timeout": counts["timeout"],
            "other": len(codes) - killed - counts["survived"] - counts["no tests"],
            "score": round(100 * killed / len(codes), 1) if codes else None,
            "not_killed": sorted((k for k, s in statuses.items() if s not in KILLED), key=_natural)}


def _natural(name: str):
    base, _, number = name.rpartition("_")
    return (base, int(number) if number.isdigit() else 0)


def table(work: Path) -> str:
    lines = ["| module | mutants | killed | survived | no tests | score |", "|---|---:|---:|---:|---:|---:|"]
    for path in sorted(work.glob("*/summary.json")):
        s = json.loads(path.read_text())
        lines.append(f"| {path.parent.name} (`{s['source']}`) | {s['total']} | {s['killed']} | {s['survived']} | "
                     f"{s['no_tests']} | {s['score']} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module")
    parser.add_argument("--source")
    parser.add_argument("--json")
    parser.add_argument("--show", action="store_true", help="print the diff of every mutant not killed")
    parser.add_argument("--table", metavar="WORK")
    parser.add_argument("patterns", nargs="*")
    args = parser.parse_args(argv)
    if args.table:
        print(table(Path(args.table)))
        return 0
    s = summarize(args.source, args.patterns or ["*"])
    print(f"   {args.module}: {s['killed']}/{s['total']} killed = {s['score']} % "
          f"({s['survived']} survived, {s['no_tests']} without tests, {s['timeout']} timeouts)")
    for name in s["not_killed"]:
        print(f"     not killed: {name}")
        if args.show:
            mutmut = Path(sys.executable).with_name("mutmut")
            diff = subprocess.run([str(mutmut), "show", name], capture_output=True, text=True).stdout
            print("       " + diff.strip().replace("\n", "\n       "))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(s, module=args.module), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
