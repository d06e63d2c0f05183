"""Readers search one index folder while a writer commits: every answer must be the exact answer
of a committed version, never of a torn one; a second writer is refused.

The writer starts from ``base`` documents and commits ``commits`` times, each adding ``step``
documents. Version ``v`` therefore holds the first ``base + v * step`` rows of one fixed set of codes,
so a reader can rebuild the exact answer of the version it opened with the numpy reference
(``hamming_search_reference``) and compare it with what the index returned.

Two concurrent creators of one new folder (``--creator-trials``): exactly one must win, the other be
refused (the folder holds an index, or its writer lock is held), and the index left must be the
winner's, whole (every checksum verified, exact answers). Run::

    python stress/concurrency_test.py --readers 4 --queries 1000 --commits 10 --creator-trials 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qama.codes import make_plan
from qama.index import IndexLockedError, QamaIndex, writer_lock
from qama.search import ThresholdEncoder, hamming_search_reference

DIM, K = 64, 10


def data(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reader(path: str, n_total: int, n_queries: int, seed: int, out: mp.Queue) -> None:
    emb = data(n_total)
    rng = np.random.default_rng(seed)
    bad, versions = 0, set()
    all_codes = QamaIndex.open(path, verify=False).encoder.encode(emb)  # the encoder is the same in every version
    for _ in range(n_queries):
        index = QamaIndex.open(path, verify=False)
        q = emb[rng.integers(n_total)][None] + 0.05 * rng.standard_normal((1, DIM)).astype(np.float32)
        qc = index.encoder.encode(q)
        dist, rows = index.search_codes(qc, K)
        n = len(index)
        versions.add(n)
        ref_d, ref_rows = hamming_search_reference(all_codes[:n], qc, K)
        ids_ok = [index.doc_id(int(r)) for r in rows[0]] == [f"d{int(r)}" for r in ref_rows[0]]
        if not (np.array_equal(dist, ref_d) and ids_ok):
            bad += 1
    out.put((bad, sorted(versions)))


def creator(path: str, seed: int, n: int, go: mp.Event, out: mp.Queue) -> None:
    """Create the index at ``path`` from seed ``seed``'s documents; report the outcome."""
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    encoder = ThresholdEncoder.fit(x, make_plan("hybrid", DIM))
    go.wait()
    try:
        QamaIndex.create(path, encoder, x, [f"s{seed}-{i}" for i in range(n)])
        out.put((seed, "created"))
    except (FileExistsError, IndexLockedError) as e:
        out.put((seed, type(e).__name__))


def two_creators(trials: int, n: int) -> tuple[int, int]:
    """``(trials with exactly one winner and a whole index of its documents, torn or wrong outcomes)``."""
    good = bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(trials):
            path = str(Path(tmp) / f"ix{t}")
            go, out = mp.Event(), mp.Queue()
            procs = [mp.Process(target=creator, args=(path, s, n, go, out)) for s in (1, 2)]
            for p in procs:
                p.start()
            go.set()
            outcomes = dict(out.get() for _ in procs)
            for p in procs:
                p.join()
            winners = [s for s, o in outcomes.items() if o == "created"]
            ok = len(winners) == 1
            if ok:
                index = QamaIndex.open(path, verify=True)
                x = np.random.default_rng(winners[0]).standard_normal((n, DIM)).astype(np.float32)
                q = x[:5]
                ref_d, ref_rows = hamming_search_reference(index.encoder.encode(x), index.encoder.encode(q), K)
                dist, rows = index.search_codes(index.encoder.encode(q), K)
                ok = (
                    len(index) == n
                    and index.doc_id(0) == f"s{winners[0]}-0"
                    and np.array_equal(dist, ref_d)
                    and np.array_equal(rows, ref_rows)
                )
            good, bad = good + ok, bad + (not ok)
    return good, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--base", type=int, default=20_000)
    parser.add_argument("--step", type=int, default=2_000)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between commits")
    parser.add_argument("--creator-trials", type=int, default=10, help="races of two creators of one new index")
    args = parser.parse_args()
    n_total = args.base + args.commits * args.step
    emb = data(n_total)
    ids = [f"d{i}" for i in range(n_total)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index"
        encoder = ThresholdEncoder.fit(emb, make_plan("hybrid", DIM))
        index = QamaIndex.create(path, encoder, emb[: args.base], ids[: args.base])
        out: mp.Queue = mp.Queue()
        procs = [
            mp.Process(target=reader, args=(str(path), n_total, args.queries, s, out)) for s in range(args.readers)
        ]
        start = time.time()
        for p in procs:
            p.start()
        refused = 0
        for c in range(args.commits):
            lo = args.base + c * args.step
            with writer_lock(path):  # a second writer meanwhile is refused
                try:
                    QamaIndex.open(path, verify=False).add(emb[lo : lo + args.step], ids[lo : lo + args.step])
                except IndexLockedError:
                    refused += 1
            index.add(emb[lo : lo + args.step], ids[lo : lo + args.step])
            time.sleep(args.interval)
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
    bad = sum(r[0] for r in results)
    seen = sorted({v for r in results for v in r[1]})
    print(
        f"{args.readers} readers x {args.queries} queries, {args.commits} commits in {time.time() - start:.0f} s: "
        f"{bad} inconsistent answers; readers saw {len(seen)} versions ({seen[0]}..{seen[-1]} documents); "
        f"second writer refused {refused}/{args.commits} times"
    )
    won, torn = two_creators(args.creator_trials, args.base)
    races = args.creator_trials
    print(f"two concurrent creators of one index, {races} races: {won} with one whole winner, {torn} torn")
    return 1 if bad or refused != args.commits or torn else 0


if __name__ == "__main__":
    sys.exit(main())
