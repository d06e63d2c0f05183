"""Time appends to an index folder: ``--appends`` appends of ``--step`` rows onto ``--n`` rows.

For each append: the seconds :meth:`QamaIndex.add` took (encode, write, fsync, checksum, commit) and
the bytes of the files it created or replaced. Then the search time of the final index (100 queries
as a batch, and one query at a time), and, where the index has segments, the same after
:meth:`QamaIndex.compact`. ``--delete M`` first times deletes of ``M`` ids after the appends: ids drawn
from the rows before the last append, from a freshly opened index object, then others on the same
object; then ids of the rows the last append wrote (the searches are then of what is left). Uses
only ``create``, ``open``, ``add``, ``delete`` and ``search``, so the same script times an older qama
(put it first on ``PYTHONPATH``). Synthetic unit vectors (the timing does not depend on their
values). Run::

    python benchmarks/bench_append.py --n 200000 --step 10000 --appends 10 --vectors
    python benchmarks/bench_append.py --n 1000000 --step 1000 --appends 3 --delete 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _files(folder: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in folder.iterdir():
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _search_times(index, queries: np.ndarray) -> tuple[float, float]:
    """(ms for the batch of queries, median ms of one query), Hamming top-10, after a warm-up."""
    index.search(queries, 10)
    t = time.perf_counter()
    index.search(queries, 10)
    batch = (time.perf_counter() - t) * 1e3
    one = []
    for q in queries[:30]:
        t = time.perf_counter()
        index.search(q[None], 10)
        one.append((time.perf_counter() - t) * 1e3)
    return batch, statistics.median(one)


def _deletes(path: Path, ids: list[str], newest: int, m: int) -> list[dict]:
    """Time three deletes of ``m`` ids from the index at ``path`` (``ids``: its ids in row order; ``newest``:
    the first row the last append wrote): ids drawn from the rows before ``newest``, on a freshly opened
    index object, then others on the same object; then ids drawn from the last append's rows. Prints a
    table; its rows."""
    from qama.index import QamaIndex

    rng = np.random.default_rng(2)
    spread = rng.choice(newest, size=2 * m, replace=False)
    last = newest + rng.choice(len(ids) - newest, size=min(m, len(ids) - newest), replace=False)
    cases = [
        ("spread, index just opened", spread[:m]),
        ("spread, same object", spread[m:]),
        ("last append's rows", last),
    ]
    t = time.perf_counter()
    index = QamaIndex.open(path, verify=False)
    print(f"\nopen (verify=False): {time.perf_counter() - t:.3f} s")
    print(f"\n| delete of {m:,} ids | rows before | seconds | MB written | files written |\n|---|---|---|---|---|")
    out = []
    for what, rows in cases:
        gone = [ids[r] for r in rows]
        before, n = _files(path), len(index)
        t = time.perf_counter()
        removed = index.delete(gone)
        seconds = time.perf_counter() - t
        after = _files(path)
        changed = {name: st[2] for name, st in after.items() if before.get(name) != st and name != "writer.lock"}
        assert removed == len(gone), (removed, len(gone))
        print(f"| {what} | {n:,} | {seconds:.3f} | {sum(changed.values()) / 1e6:.1f} | {len(changed)} |")
        out.append({"what": what, "seconds": seconds, "written": sum(changed.values()), "files": len(changed)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows of the index before the appends")
    parser.add_argument("--step", type=int, default=10_000, help="rows per append")
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--plan", default="hybrid")
    parser.add_argument("--vectors", action="store_true", help="keep the float32 vectors (for rescoring)")
    parser.add_argument("--dir", type=Path, help="where to write the index (default: a temporary folder)")
    parser.add_argument("--delete", type=int, default=0, help="ids per timed delete (default: no deletes)")
    args = parser.parse_args()

    import qama
    from qama.codes import make_plan
    from qama.index import QamaIndex
    from qama.search import ThresholdEncoder

    total = args.n + args.step * args.appends
    corpus = synthetic(total, args.dim, 0)
    ids = [f"doc{i:08d}" for i in range(total)]
    encoder = ThresholdEncoder.fit(corpus[: min(args.n, 100_000)], make_plan(args.plan, args.dim))
    queries = synthetic(100, args.dim, 1)
    print(
        f"qama from {Path(qama.__file__).parent}; {args.n:,} rows, {args.appends} appends of {args.step:,}, "
        f"{args.plan} {args.dim}, vectors {'kept' if args.vectors else 'not kept'}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        index = QamaIndex.create(Path(tmp) / "ix", encoder, corpus[: args.n], ids[: args.n], keep_vectors=args.vectors)
        print(f"create: {time.perf_counter() - t:.2f} s")
        print("\n| append | rows before | seconds | MB written | files written |\n|---|---|---|---|---|")
        times, written = [], []
        for a in range(args.appends):
            lo = args.n + a * args.step
            before = _files(index.path)
            t = time.perf_counter()
            index.add(corpus[lo : lo + args.step], ids[lo : lo + args.step])
            times.append(time.perf_counter() - t)
            after = _files(index.path)
            changed = {name: st[2] for name, st in after.items() if before.get(name) != st and name != "writer.lock"}
            written.append(sum(changed.values()))
            print(f"| {a + 1} | {lo:,} | {times[-1]:.3f} | {written[-1] / 1e6:.1f} | {len(changed)} |")
        segments = len(index.manifest.get("segments", [None]))
        if times:
            print(
                f"\ntotal {sum(times):.2f} s, mean {statistics.mean(times):.3f} s, max {max(times):.3f} s, "
                f"{sum(written) / 1e6:.0f} MB written; {segments} segment(s) at the end"
            )
        deletes = []
        if args.delete:  # needs an append: its rows are the third delete's
            deletes = _deletes(index.path, ids[:total], total - args.step, args.delete)
        if deletes:
            index = QamaIndex.open(index.path, verify=False)
            segments = len(index.manifest.get("segments", [None]))
        batch, one = _search_times(index, queries)
        print(f"search, Hamming top-10: 100 queries {batch:.1f} ms, one query {one:.2f} ms (median)")
        result = {"times": times, "written": written, "segments": segments, "batch_ms": batch, "one_ms": one}
        if deletes:
            result["deletes"] = deletes
        if hasattr(index, "compact") and segments > 1:
            t = time.perf_counter()
            index.compact()
            compact_s = time.perf_counter() - t
            batch, one = _search_times(index, queries)
            print(f"after compact() ({compact_s:.2f} s): 100 queries {batch:.1f} ms, one query {one:.2f} ms (median)")
            result.update(compact_s=compact_s, compact_batch_ms=batch, compact_one_ms=one)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
