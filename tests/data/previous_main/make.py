"""Write the fixtures of this folder with the qama on the path: ``python make.py TAG``."""

import sys

import numpy as np

import qama
from qama.codes import make_plan
from qama.index import QamaIndex
from qama.search import ThresholdEncoder

tag = sys.argv[1]
x = np.random.default_rng(0).normal(size=(60, 32)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
np.save("queries.npy", x[:5])
ids = [f"d{i}" for i in range(60)]
QamaIndex.create(f"index_thresholds_{tag}", ThresholdEncoder.fit(x, make_plan("hybrid", 32)), x, ids)
qama.fit(x, out=f"adapter_{tag}", steps=2, batch_size=32, progress=False)
qama.build_index(f"index_adapter_{tag}", f"adapter_{tag}", x, ids, plan="2bit")
# titles, vectors and a few commits (written from e0baec2 on: the last main of format version 1)
titles = [f"title {i}" for i in range(60)]
encoder = ThresholdEncoder.fit(x, make_plan("hybrid", 32))
full = QamaIndex.create(f"index_full_{tag}", encoder, x[:50], ids[:50], titles=titles[:50], keep_vectors=True)
full.add(x[50:], ids[50:], titles=titles[50:])
full.delete(["d7"])
