#!/usr/bin/env python3
"""Fuzz ``ocistore load`` for longer than ``make test`` does: the cases of
``tests/test_fuzz.py`` (same seeds, same mutations, same rule), as many as asked.

    .venv/bin/python scripts/fuzz.py --cases 5000 --seed 10
    .venv/bin/python scripts/fuzz.py --seed 10 --case 1234     # one case, to reproduce it

Prints a summary (cases loaded, refused, failed; the most frequent refusals) and, for
every case that broke the rule, its description and the reason; the failing input (the
archive or layout) is kept under ``--keep DIR/seed-S-case-N/`` with a ``case.txt``.
Cases listed in ``tests/test_fuzz.py``'s ``KNOWN`` (bugs not fixed yet, strict xfails
there) are reported apart, as are known cases that pass now. Exits 1 if any other case
failed. ``--seed 10`` with cases below 240 are those ``make test``
runs.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import test_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="how many cases (default 1000)")
    parser.add_argument("--seed", type=int, default=test_fuzz.SEED, help="the generator's seed")
    parser.add_argument("--start", type=int, default=0, help="the first case number")
    parser.add_argument("--case", type=int, action="append", help="run only this case (repeatable)")
    parser.add_argument(
        "--keep",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ocistore-fuzz-failures",
        help="where failing inputs are kept (default: ocistore-fuzz-failures in the "
        "temporary directory)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    parser.add_argument(
        "--watchdog",
        type=float,
        default=300,
        help="print every thread's stack when one case runs longer than this many seconds "
        "(a hang, or a bomb); default 300",
    )
    args = parser.parse_args()

    numbers = args.case or list(range(args.start, args.start + args.cases))
    loaded = refused = 0
    failures: list[tuple[int, str]] = []
    reasons: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ocistore-fuzz-", dir=test_fuzz.scratch_base()) as tmp:
        work = Path(tmp)
        corpus = test_fuzz.build_corpus(work / "corpus")
        for k, n in enumerate(numbers):
            case_dir = work / f"case-{n}"
            case_dir.mkdir()
            faulthandler.dump_traceback_later(args.watchdog)
            try:
                outcome = test_fuzz.run_case(corpus, args.seed, n, case_dir)
            except Exception as e:  # a CaseFailure, or a bug of the generator itself
                message = str(e) if isinstance(e, test_fuzz.CaseFailure) else repr(e)
                failures.append((n, message))
                kept = args.keep / f"seed-{args.seed}-case-{n}"
                shutil.rmtree(kept, ignore_errors=True)
                kept.mkdir(parents=True)
                for p in case_dir.iterdir():
                    if p.name.startswith(("archive", "layout")):
                        if p.is_dir():
                            shutil.copytree(p, kept / p.name, symlinks=True)
                        else:
                            shutil.copy2(p, kept / p.name)
                (kept / "case.txt").write_text(message + "\n")
                label = "KNOWN" if _known(corpus, args.seed, n) else "FAIL"
                print(f"{label} {message}", flush=True)
            else:
                if outcome.loaded:
                    loaded += 1
                else:
                    refused += 1
                    # Group refusals by their message with digests, numbers and names blurred.
                    key = re.sub(r"sha256:[0-9a-f]+|[0-9a-f]{12,}|\d+", "#", outcome.message)
                    reasons[key[:110]] += 1
                if args.verbose:
                    kind = "loaded " if outcome.loaded else "refused"
                    print(f"{n:6} {kind} {outcome.message[:120]}", flush=True)
            shutil.rmtree(case_dir, ignore_errors=True)
            if not args.verbose and (k + 1) % 500 == 0:
                print(f"... {k + 1} cases", flush=True)
    faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - started
    print(
        f"\nseed {args.seed}: {len(numbers)} cases in {elapsed:.1f} s: {loaded} loaded, "
        f"{refused} refused cleanly, {len(failures)} failed"
    )
    print("most frequent refusals:")
    for key, count in reasons.most_common(12):
        print(f"  {count:5}  {key}")
    known = [n for n, _ in failures if _known(corpus, args.seed, n)]
    fixed = [n for n in numbers if _known(corpus, args.seed, n) and n not in known]
    new = [(n, m) for n, m in failures if n not in known]
    if known:
        print(f"\nknown failures (strict xfails in tests/test_fuzz.py KNOWN): {known}")
    if fixed:
        print(f"\nknown cases that pass now (remove them from KNOWN): {fixed}")
    if new:
        print(f"\nfailing cases (inputs kept under {args.keep}/):")
        for n, message in new:
            print(f"  case {n}: {message.splitlines()[0]}")
            for line in message.splitlines()[1:4]:
                print(f"      {line}")
        return 1
    return 0


def _known(corpus: test_fuzz.Corpus, seed: int, n: int) -> bool:
    """Whether case ``n`` is one of ``test_fuzz.KNOWN``, as it was found."""
    if seed != test_fuzz.SEED or n not in test_fuzz.KNOWN:
        return False
    marks, _ = test_fuzz.KNOWN[n]
    case = test_fuzz.make_case(corpus, seed, n)
    said = f"{case.seed.label}: {'; '.join(case.steps)}"
    return all(m in said for m in marks)


if __name__ == "__main__":
    sys.exit(main())
