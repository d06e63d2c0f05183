"""SIGKILL a writer at random moments; every file left behind must be a complete version.

A worker process writes versions 1, 2, 3, ... of a ``.npy`` (as the embedding cache does) and a
JSON file (as configs and manifests are written), each through qama's atomic writes, forever.
The parent kills it with SIGKILL after a random delay, then checks that each file is absent (killed
before the first rename) or holds one whole version, never a mix; and that no temporary file is
taken for a real one. Run::

    python benchmarks/kill_test.py --runs 200
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


def worker(folder: Path) -> None:
    from qama._io import save_npy, write_json

    version = 0
    while True:
        version += 1
        save_npy(folder / "emb.npy", np.full((ROWS, DIM), version, dtype=np.float32))
        write_json(folder / "meta.json", {"version": version, "pad": "x" * 100_000, "end": version})


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
            time.sleep(rng.uniform(0.2, args.max_delay))
            p.send_signal(signal.SIGKILL)
            p.wait()
            problem = check(folder)
            if problem:
                torn += 1
                print(f"run {run}: TORN: {problem}")
            if (folder / "meta.json").exists():
                versions.append(json.loads((folder / "meta.json").read_text())["version"])
            leftovers = [f.name for f in folder.iterdir() if f.name.startswith(".")]
            for name in leftovers:  # temporary files of the killed write: never read as data
                (folder / name).unlink()
    print(
        f"{args.runs} kills in {time.time() - start:.0f} s: {torn} torn states; "
        f"last committed version per run: min {min(versions, default=0)}, max {max(versions, default=0)}"
    )
    return 1 if torn else 0


if __name__ == "__main__":
    sys.exit(main())
