"""Word count over the .py files of Python's standard library, as a 2-stage pipeline.

    python examples/wordcount.py [--files N] [--workers N]

Stage "map" (one task per file) writes (word, 1) records under a label chosen by
the word's hash; stage "reduce" (one task per label) sums them. The result is
checked against collections.Counter over the same files.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Any

from regrow import Client, LocalCluster, progress
from regrow.pipeline import Files, Interface, Pipeline, Stage, group_label, run_pipeline, split

WORD = re.compile(r"[A-Za-z_]+")
PARTITIONS = 8


def map_words(interface: Interface, state: Any, label: Any, lines: Any) -> None:
    for line in lines:
        for word in WORD.findall(line):
            w = word.lower()
            # crc32, not hash(): the partition must not depend on the process.
            interface.output(zlib.crc32(w.encode()) % PARTITIONS).add(w, 1)


def reduce_init(interface: Interface, params: Any) -> collections.Counter[str]:
    return collections.Counter()


def reduce_count(interface: Interface, state: Any, label: Any, records: Any) -> None:
    for word, n in records:
        state[word] += n


def reduce_emit(interface: Interface, state: Any) -> None:
    for word, n in state.items():
        interface.output(0).add(word, n)


def pipeline() -> Pipeline:
    return Pipeline(
        [
            (split, Stage("map", process=map_words)),
            (
                group_label,
                Stage("reduce", init=reduce_init, process=reduce_count, done=reduce_emit),
            ),
        ]
    )


def stdlib_files(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return files[:limit]


def serial_count(files: list[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                counts.update(w.lower() for w in WORD.findall(line.rstrip("\n")))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    files = stdlib_files(args.files)
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        start = time.perf_counter()
        result = run_pipeline(client, pipeline(), Files(files))
        progress(result)
        print()
        counts = collections.Counter(dict(result.gather()))
        elapsed = time.perf_counter() - start
    expected = serial_count(files)
    ok = counts == expected
    print(f"{len(files)} files, {sum(counts.values()):,} words, {len(counts):,} distinct, "
          f"{elapsed:.2f} s; matches collections.Counter: {'yes' if ok else 'NO'}")  # fmt: skip
    print("top:", ", ".join(f"{w} {n}" for w, n in counts.most_common(8)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
