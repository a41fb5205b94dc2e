"""How long ``ocstream --help``, each command's ``--help`` and ``--version`` take, in one run.

    python benchmarks/cli_help.py [--rounds N]

Each command is run ``--rounds`` times as a fresh ``python -m ocstream`` process in an empty
temporary directory; the median wall time is printed. Two baselines are measured in the same
run, in the same way:

* ``python -c pass``: the interpreter's own start, the floor of any command;
* ``python -c "import faust.cli.faust"``: what it costs only to load faust's command line, which
  the help used to go through (faust's help, after building the app).

The ratio column is the command's time over the interpreter's start. The script also checks that
no command left a file in the directory (printing help starts nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS: list[list[str]] = [
    ["--help"],
    ["--version"],
    ["worker", "--help"],
    ["ingress", "--help"],
    ["record", "--help"],
    ["topology", "--help"],
    ["agents", "--help"],
    ["send", "--help"],
]


def timed(argv: list[str], cwd: Path, env: dict[str, str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCSTREAM_")}
    env["PYTHONPATH"] = str(REPO)
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        base = timed([python, "-c", "pass"], cwd, env, args.rounds)
        faust_cli = timed([python, "-c", "import faust.cli.faust"], cwd, env, args.rounds)
        rows = [
            (
                " ".join(["ocstream", *cmd]),
                timed([python, "-m", "ocstream", *cmd], cwd, env, args.rounds),
            )
            for cmd in COMMANDS
        ]
        left = sorted(p.name for p in cwd.iterdir())
    print(f"median of {args.rounds} runs each, {os.cpu_count()} CPUs")
    print(f"{'command':<28} {'seconds':>8} {'ratio':>7}")
    print(f"{'(python -c pass)':<28} {base:8.3f} {1:7.1f}")
    print(f"{'(import faust.cli.faust)':<28} {faust_cli:8.3f} {faust_cli / base:7.1f}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds:8.3f} {seconds / base:7.1f}")
    slowest = max(seconds for _, seconds in rows)
    print(
        f"slowest: {slowest:.3f} s (target: under 1.5 s); files left in the cwd: {left or 'none'}"
    )


if __name__ == "__main__":
    main()
