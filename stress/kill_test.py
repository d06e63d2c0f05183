"""SIGKILL a writer at random moments; every file left behind must be a complete version.

A worker process writes versions 1, 2, 3, ... of a ``.npy`` (as the embedding cache does) and a
JSON file (as configs and manifests are written), each through qama's atomic writes, and commits
to an index folder (adding and deleting documents), forever. The parent kills it with SIGKILL after
a random delay, then checks that each file is absent (killed before the first rename) or holds one
whole version, never a mix, and that the index opens with every checksum verified and answers a
search exactly as the numpy reference does on the documents it holds. Run::

    python stress/kill_test.py --runs 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS, DIM = 20_000, 64  # 5 MB a version: a write takes long enough to be killed inside it


def index_data() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"d{i}" for i in range(4000)]


def worker(folder: Path) -> None:
    from qama._io import save_npy, write_json
    from qama.codes import make_plan
    from qama.index import QamaIndex
    from qama.search import ThresholdEncoder

    emb, ids = index_data()
    if (folder / "index" / "manifest.json").exists():
        index = QamaIndex.open(folder / "index")
    else:
        encoder = ThresholdEncoder.fit(emb, make_plan("hybrid", 32))
        index = QamaIndex.create(folder / "index", encoder, emb[:2000], ids[:2000], keep_vectors=True, overwrite=True)
    (folder / "ready").touch()
    version = 0
    while True:
        version += 1
        save_npy(folder / "emb.npy", np.full((ROWS, DIM), version, dtype=np.float32))
        write_json(folder / "meta.json", {"version": version, "pad": "x" * 100_000, "end": version})
        n = len(index)
        if n < 3500:
            index.add(emb[n : n + 500], ids[n : n + 500])
        else:
            index.delete(ids[n - 1500 : n])


def check_index(folder: Path) -> str | None:
    from qama.index import QamaIndex
    from qama.search import hamming_search_reference

    if not (folder / "index" / "manifest.json").exists():
        return None
    try:
        index = QamaIndex.open(folder / "index", verify=True)
    except Exception as e:  # noqa: BLE001
        return f"index does not open: {e}"
    emb, ids = index_data()
    n = len(index)
    if [index.doc_id(i) for i in range(n)] != ids[:n]:
        return f"index holds {n} documents that are not a committed prefix"
    q = emb[:5]
    dist, rows = index.search_codes(index.encoder.encode(q), 10)
    ref_d, ref_rows = hamming_search_reference(index.encoder.encode(emb[:n]), index.encoder.encode(q), 10)
    if not (np.array_equal(dist, ref_d) and np.array_equal(rows, ref_rows)):
        return "index search differs from the reference"
    return None


def check(folder: Path) -> str | None:
    """None if every file is absent or a whole version, else what is torn."""
    emb, meta = folder / "emb.npy", folder / "meta.json"
    if emb.exists():
        try:
            a = np.load(emb, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is a torn file
            return f"emb.npy unreadable: {e}"
        if a.shape != (ROWS, DIM) or not np.all(a == a[0, 0]):
            return f"emb.npy mixes versions: {np.unique(a)[:5]}"
    if meta.exists():
        try:
            m = json.loads(meta.read_text())
        except Exception as e:  # noqa: BLE001
            return f"meta.json unreadable: {e}"
        if m["version"] != m["end"]:
            return "meta.json mixes versions"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--max-delay", type=float, default=1.5, help="seconds before the kill, at most")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    rng = random.Random(0)
    torn, versions = 0, []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for run in range(args.runs):
            p = subprocess.Popen([sys.executable, __file__, "--worker", str(folder)], env={**os.environ})
            deadline = time.time() + 120
            while not (folder / "ready").exists() and time.time() < deadline and p.poll() is None:
                time.sleep(0.02)  # start-up (imports, opening the index) is not the point of the test
            time.sleep(rng.uniform(0.0, args.max_delay))
            p.send_signal(signal.SIGKILL)
            p.wait()
            (folder / "ready").unlink(missing_ok=True)
            problem = check(folder) or check_index(folder)
            if problem:
                torn += 1
                print(f"run {run}: TORN: {problem}")
            if (folder / "meta.json").exists():
                versions.append(json.loads((folder / "meta.json").read_text())["version"])
            for tmp_file in list(folder.glob(".*")) + list(folder.glob("index/.*")):
                tmp_file.unlink()  # temporary files of the killed write: never read as data
    print(
        f"{args.runs} kills in {time.time() - start:.0f} s: {torn} torn states; "
        f"last committed version per run: min {min(versions, default=0)}, max {max(versions, default=0)}"
    )
    return 1 if torn else 0


if __name__ == "__main__":
    sys.exit(main())
