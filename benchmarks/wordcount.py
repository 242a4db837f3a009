"""The word count over a few hundred MB of text: regrow's pipeline against dask.bag on
dask.distributed and PySpark's ``local[2]``, side by side in the same run (Ray has no
counterpart here). PySpark runs where it and a Java runtime are installed
(``pip install -e ".[bench]"``, Debian's ``default-jre-headless``), else its cells say
``skipped``.

The corpus (made once per run, untimed, in a temporary directory): ``N_FILES`` files of
``FILE_MB`` MB each, lines of about 80 characters of words drawn from a vocabulary of
``VOCABULARY`` made-up words with Zipf-like frequencies (as words in text have). The
exact count of every word is known from making it, and every repetition's result is
checked against it.

- **regrow**: a 2-stage ``regrow.pipeline``: stage ``count`` (``split``: one task per
  file, its records the file's lines) counts the words of its file (``init``/
  ``process``) and writes ``(word, n)`` under a label chosen by the word's crc32
  (``done``: a combiner, as a MapReduce word count has); stage ``sum`` (``group_label``,
  one task per label, ``PARTITIONS`` labels) adds them up: ``examples/wordcount.py``'s
  "reduce" stage.
- **dask**: ``dask.bag.read_text(files, blocksize=None)`` (one partition per file)
  ``.str.split().flatten().frequencies()``, computed on the distributed cluster: the
  word count of dask's documentation.
- **PySpark**, two ways, a row each (regrow and dask run again for each row, so each
  row is one side-by-side measurement): its DataFrame API (``spark.read.text``,
  ``explode(split(value, " "))``, ``groupBy().count()``: the words are counted in the
  JVM, Spark's fastest way) and its RDD API (``textFile().flatMap(str.split)
  .map((w, 1)).reduceByKey(add)``: Python functions, as the regrow and dask versions
  are; the word count of Spark's own examples).

Timed: from submitting to having every ``(word, count)`` in the client. Words/s is
the corpus's words over that time.

Run alone: ``python -m benchmarks.wordcount``.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from examples.wordcount import reduce_count, reduce_emit, reduce_init

from benchmarks.common import (
    REQUIRES,
    Report,
    System,
    Workload,
    check,
    main,
    run_workloads,
    spark_version,
    times_better,
)

N_FILES = 40
FILE_MB = 5
VOCABULARY = 20_000
PARTITIONS = 8


def count_lines(interface: Any, state: Any, label: Any, lines: Any) -> None:
    # One Counter.update over all the words: its loop is C's, not one Python call a line.
    state.update(itertools.chain.from_iterable(map(str.split, lines)))


def count_done(interface: Any, state: Any) -> None:
    for word, n in state.items():
        # crc32, not hash(): the partition must not depend on the process.
        interface.output(zlib.crc32(word.encode()) % PARTITIONS).add(word, n)


def _pipeline() -> Any:
    """A Counter per file, written out per label by a combiner (``count_done``); its
    "sum" stage is examples/wordcount.py's "reduce"."""
    from regrow.pipeline import Pipeline, Stage, group_label, split

    return Pipeline(
        [
            (split, Stage("count", init=reduce_init, process=count_lines, done=count_done)),
            (
                group_label,
                Stage("sum", init=reduce_init, process=reduce_count, done=reduce_emit),
            ),
        ]
    )


def make_corpus(directory: str) -> tuple[list[str], dict[str, int]]:
    """The files, and the count of every word in them."""
    import numpy as np

    rng = np.random.default_rng(2026)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = sorted(
        {"".join(rng.choice(letters, size=int(n))) for n in rng.integers(3, 11, VOCABULARY * 2)}
    )[:VOCABULARY]
    words = np.array(vocab, dtype=object)
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    total = np.zeros(len(vocab), dtype=np.int64)
    paths = []
    per_file = FILE_MB * 1_000_000 // 8  # ~7 characters and a space a word
    for f in range(N_FILES):
        index = rng.choice(len(vocab), size=per_file, p=weights)
        total += np.bincount(index, minlength=len(vocab))
        chosen = words[index]
        lines = [" ".join(chosen[i : i + 12]) for i in range(0, len(chosen), 12)]
        path = os.path.join(directory, f"part-{f:03}.txt")
        with open(path, "w") as out:
            out.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths, {w: int(n) for w, n in zip(vocab, total, strict=True) if n}


class Corpus:
    paths: list[str] = []
    counts: dict[str, int] = {}
    words = 0


@contextlib.contextmanager
def corpus() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="regrow-wordcount-") as directory:
        start = time.perf_counter()
        Corpus.paths, Corpus.counts = make_corpus(directory)
        Corpus.words = sum(Corpus.counts.values())
        size = sum(os.path.getsize(p) for p in Corpus.paths)
        print(
            f"  corpus: {len(Corpus.paths)} files, {size / 1e6:,.0f} MB, {Corpus.words:,} "
            f"words, {len(Corpus.counts):,} distinct (made in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        yield


def _counts(system: System, spark_api: str) -> dict[str, int]:
    """Every word's count, by ``system`` (PySpark by its ``spark_api``: "sql" or "rdd")."""
    if system.name == "regrow":
        from regrow.pipeline import Files, run_pipeline

        return dict(run_pipeline(system.client, _pipeline(), Files(Corpus.paths)).gather())
    if system.name == "dask":
        import dask.bag as db

        bag = db.read_text(Corpus.paths, blocksize=None).str.split().flatten().frequencies()
        return dict(system.client.compute(bag).result())
    if spark_api == "sql":
        from pyspark.sql import functions as F

        lines = system.client.read.text(Corpus.paths)
        words = lines.select(F.explode(F.split(lines.value, " ")).alias("word"))
        rows = words.where(words.word != "").groupBy("word").count().collect()
        return {row["word"]: row["count"] for row in rows}
    context = system.client.sparkContext
    rdd = context.textFile(",".join(Corpus.paths), minPartitions=len(Corpus.paths))
    return dict(rdd.flatMap(_split_words).map(_one).reduceByKey(operator.add).collect())


def _split_words(line: str) -> list[str]:
    return line.split()


def _one(word: str) -> tuple[str, int]:
    return word, 1


def word_count(spark_api: str) -> Callable[[System], float]:
    """Words a second of ``_counts``, checked against the corpus."""

    def run(system: System) -> float:
        start = time.perf_counter()
        counts = _counts(system, spark_api)
        elapsed = time.perf_counter() - start
        check(counts == Corpus.counts, f"{system.name}: the counts differ from the corpus's")
        return Corpus.words / elapsed

    return run


WORKLOADS = [
    Workload(
        f"word count: {N_FILES} files of {FILE_MB} MB (pipeline vs dask.bag vs Spark SQL)",
        "words/s",
        True,
        word_count("sql"),
        target=times_better(text="ahead of dask.bag and PySpark", dask=1.0, spark=1.0),
        warmups=1,  # the JVM's first run compiles its code
    ),
    Workload(
        f"word count: {N_FILES} files of {FILE_MB} MB (pipeline vs dask.bag vs Spark RDD)",
        "words/s",
        True,
        word_count("rdd"),
        target=times_better(text="ahead of dask.bag and PySpark", dask=1.0, spark=1.0),
        warmups=1,
    ),
]


def run(systems: Sequence[str], reps: int) -> Report:
    """Ray has no word count here; PySpark joins dask wherever it can run."""
    systems = [s for s in systems if s != "ray"]
    skipped = []
    if "dask" in systems and "spark" not in systems:
        if spark_version() is None:
            print(f"{REQUIRES['spark']} is not installed: spark skipped.", flush=True)
            skipped.append("spark")
        else:
            systems.append("spark")
    with corpus():
        return Report(rows=run_workloads(WORKLOADS, systems, reps), skipped=skipped)


if __name__ == "__main__":
    main("wordcount", run)
