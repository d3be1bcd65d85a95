"""``make fuzz``: a longer fault-simulation campaign, or the replay of one seed.

    python -m tests.sim.fuzz --seed 22                # replay seed 22: verdict + minimal schedule
    python -m tests.sim.fuzz --count 20000 --workers 2  # campaign from a random first seed
    python -m tests.sim.fuzz --seed 1000 --count 5000   # campaign from seed 1000

Prints progress, every failing seed as it is found, and the shrunk schedule of the first
failures; exits 1 when any schedule broke an invariant.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from tests.sim.harness import DEFAULT_LENGTH, campaign, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="first seed (alone: replay this seed)")
    parser.add_argument("--count", type=int, help="how many seeds (default 10000)")
    parser.add_argument("--length", type=int, default=DEFAULT_LENGTH, help="steps per schedule")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--shrink", type=int, default=3, help="failures to minimise")
    args = parser.parse_args(argv)
    if args.seed is not None and args.count is None:
        failure = run_seed(args.seed, args.length)
        print(failure.describe() if failure else f"seed {args.seed}: every invariant holds")
        return 1 if failure else 0
    first = args.seed if args.seed is not None else random.randrange(10**9)
    count = args.count or 10_000
    print(
        f"fuzz: seeds {first}..{first + count - 1}, {args.length} steps, {args.workers} worker(s)"
    )
    started = time.monotonic()
    failed: list[int] = []

    def progress(seed: int, violation: str | None) -> None:
        done = seed - first + 1
        if violation is not None:
            failed.append(seed)
            print(f"FAIL seed {seed}: {violation}", flush=True)
        if done % 500 == 0 or done == count:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"  {done}/{count} schedules, {len(failed)} failing, {rate:.0f}/s", flush=True)

    result = campaign(
        range(first, first + count),
        args.length,
        workers=args.workers,
        progress=progress,
        minimise=args.shrink,
    )
    for failure in result.shrunk:
        print(failure.describe())
    print(f"fuzz: {len(failed)} failing seed(s): {' '.join(map(str, failed)) or '-'}")
    return 1 if result.failing else 0


if __name__ == "__main__":
    sys.exit(main())
