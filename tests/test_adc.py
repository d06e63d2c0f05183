"""Asymmetric scores from per-query byte tables (qama.adc) against the unpacking implementation and
a float64 numpy reference; the asymmetric full scan against scoring every row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qama.adc import (
    RERANK,
    FastScanCodes,
    adc_search,
    asymmetric_scores_reference,
    byte_tables,
    doc_lengths,
    lut_scores,
    query_bit_weights,
)
from qama.codes import make_plan, unpack
from qama.search import ThresholdEncoder, asymmetric_scores, top_by_score

PLANS = ["2bit", "1.5bit", "1bit", "0.5bit", "hybrid", "24:2,24:1.5,48:1", "8:2,10:1.5,2:1,76:0.5", "6:2,90:1"]


def _data(n: int = 400, d: int = 96, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) + 0.2
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class NormedEncoder(ThresholdEncoder):
    """A threshold encoder whose scores are cosines (``level_norms2``), as the adapter's are."""

    @property
    def level_norms2(self) -> np.ndarray:
        return self.centroids**2


def _float64_reference(weights, codes, cand, enc) -> np.ndarray:
    plan = enc.plan
    levels = unpack(np.asarray(codes)[np.maximum(cand, 0).reshape(-1)], plan).reshape(*cand.shape, plan.n_values)
    cent = np.asarray(enc.centroids, np.float64)[np.arange(plan.n_values), levels]
    scores = np.einsum("qmv,qv->qm", cent, np.asarray(weights, np.float64))
    norms2 = getattr(enc, "level_norms2", None)
    if norms2 is not None:
        lengths = np.sqrt(np.asarray(norms2, np.float64)[np.arange(plan.n_values), levels].sum(-1))
        scores = scores / np.maximum(lengths, 1e-12)
    return np.where(cand >= 0, scores, -np.inf)


@pytest.mark.parametrize("normed", [False, True])
@pytest.mark.parametrize("spec", PLANS)
@pytest.mark.parametrize("pad", [0, 3, "align8"])
def test_lut_scores_equal_unpacking_and_float64_reference(spec: str, pad, normed: bool) -> None:
    x = _data()
    plan = make_plan(spec, 96)
    enc = (NormedEncoder if normed else ThresholdEncoder).fit(x, plan)
    codes = enc.encode(x)
    extra = plan.row_size(8) - plan.code_size if pad == "align8" else pad
    rows = np.pad(codes, ((0, 0), (0, extra)))
    rng = np.random.default_rng(1)
    cand = rng.integers(-1, len(x), (6, 37))
    cand[2] = -1  # a query with no candidates at all
    cand[3, :5] = [0, 0, len(x) - 1, -1, 7]  # repeats, the last row
    queries = x[10:16] * 1.5 - 0.05
    w = enc.query_weights(queries)
    got = lut_scores(w, rows, cand, enc)
    assert got.dtype == np.float32 and got.shape == cand.shape
    assert np.isneginf(got[cand < 0]).all() and np.isfinite(got[cand >= 0]).all()
    valid = cand >= 0
    np.testing.assert_allclose(got[valid], _float64_reference(w, codes, cand, enc)[valid], rtol=2e-6, atol=2e-6)
    ref = asymmetric_scores_reference(w, codes, cand, enc)
    np.testing.assert_allclose(got[valid], ref[valid], rtol=2e-6, atol=2e-6)
    # the public entry point is the table path
    np.testing.assert_array_equal(asymmetric_scores(w, rows, cand, enc), got)


def test_byte_tables_sum_the_bits_of_each_byte() -> None:
    plan = make_plan("hybrid", 96)
    enc = ThresholdEncoder.fit(_data(), plan)
    const, bw = query_bit_weights(enc.query_weights(_data()[:2]), enc)
    t = byte_tables(bw)
    assert t.shape == (2, plan.code_size, 256)
    for b, v in [(0, 0), (0, 255), (3, 0b10100001), (plan.code_size - 1, 0b01000000)]:
        bits = [(v >> (7 - i)) & 1 for i in range(8)]  # MSB first
        np.testing.assert_allclose(t[:, b, v], (bw[:, 8 * b : 8 * b + 8] * bits).sum(1), rtol=1e-6, atol=1e-7)


def test_lut_scores_edge_cases() -> None:
    x = _data(50)
    enc = ThresholdEncoder.fit(x, make_plan("hybrid", 96))
    codes = enc.encode(x)
    w = enc.query_weights(x[:2])
    assert np.isneginf(lut_scores(w, codes[:0], np.array([[-1, 0], [1, -1]]), enc)).all()  # empty corpus
    assert lut_scores(w, codes, np.zeros((2, 0), np.int64), enc).shape == (2, 0)
    with pytest.raises(IndexError):
        lut_scores(w, codes, np.array([[0, 50], [1, 2]]), enc)
    with pytest.raises(ValueError):
        lut_scores(w, codes[:, :-1], np.array([[0], [1]]), enc)  # rows narrower than the code
    with pytest.raises(ValueError):
        lut_scores(w[:, :-1], codes, np.array([[0], [1]]), enc)
    # int32 candidates and a memory-mapped corpus are fine
    np.testing.assert_array_equal(
        lut_scores(w, codes, np.array([[3, 1], [0, -1]], np.int32), enc),
        lut_scores(w, codes, np.array([[3, 1], [0, -1]]), enc),
    )


def test_lut_scores_on_memory_map(tmp_path: Path) -> None:
    x = _data(80)
    enc = NormedEncoder.fit(x, make_plan("2bit", 96))
    codes = np.pad(enc.encode(x), ((0, 0), (0, 4)))
    np.save(tmp_path / "c.npy", codes)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    cand = np.array([[5, 79, -1, 0]])
    w = enc.query_weights(x[:1])
    np.testing.assert_array_equal(lut_scores(w, mm, cand, enc), lut_scores(w, codes, cand, enc))


@pytest.mark.parametrize("normed", [False, True])
@pytest.mark.parametrize("spec", ["hybrid", "1bit", "8:2,10:1.5,2:1,76:0.5"])
@pytest.mark.parametrize("n,k,block", [(700, 10, 64), (700, 25, 4096), (5, 10, 2), (1, 1, 4096)])
def test_adc_search_equals_scoring_every_row(spec: str, normed: bool, n: int, k: int, block: int) -> None:
    x = _data(max(n, 200))
    enc = (NormedEncoder if normed else ThresholdEncoder).fit(x, make_plan(spec, 96))
    codes = np.pad(enc.encode(x[:n]), ((0, 0), (0, 2)))
    codes = np.concatenate([codes, codes[:3]])  # duplicate rows: exact ties, broken by ascending id
    queries = np.concatenate([x[:3], x[-4:] + 0.1])
    s, i = adc_search(codes, enc, queries, k, exact=True, block=block)
    full = np.tile(np.arange(len(codes)), (len(queries), 1))
    ref_s, ref_i = top_by_score(lut_scores(enc.query_weights(queries), codes, full, enc), full, k)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(s, ref_s)
    # one query at a time, and with lengths computed beforehand: the same
    lengths = doc_lengths(codes, enc)
    assert (lengths is None) == (not normed)
    for qi in (0, len(queries) - 1):
        s1, i1 = adc_search(codes, enc, queries[qi : qi + 1], k, lengths=lengths, exact=True)
        np.testing.assert_array_equal(i1[0], i[qi])
        np.testing.assert_array_equal(s1[0], s[qi])
    # two passes (fast scan, then exact scores): every row a candidate gives the exact result; the
    # default number of candidates gives it here too
    fast = FastScanCodes(codes, enc.plan)
    for rerank in (len(codes), RERANK):
        s2, i2 = adc_search(codes, enc, queries, k, fast=fast, rerank=rerank)
        np.testing.assert_array_equal(i2, ref_i)
        np.testing.assert_array_equal(s2, ref_s)


def test_fast_scan_ranks_by_the_score_up_to_table_rounding() -> None:
    """The first pass orders rows as the exact score does, up to 8-bit table rounding."""
    x = _data(2000, seed=11)
    enc = ThresholdEncoder.fit(x, make_plan("hybrid", 96))
    codes = np.pad(enc.encode(x), ((0, 0), (0, 3)))
    q = x[:20] + 0.1
    w = enc.query_weights(q)
    _, bw = query_bit_weights(w, enc)
    cand = FastScanCodes(codes, enc.plan).candidates(bw, 50)
    full = np.tile(np.arange(len(codes)), (len(q), 1))
    exact = lut_scores(w, codes, full, enc)
    picked = np.take_along_axis(exact, cand, 1)
    # every picked row scores within the rounding of the 50th best exact score
    fiftieth = -np.sort(-exact, axis=1)[:, 49:50]
    spread = exact.max(1, keepdims=True) - exact.min(1, keepdims=True)
    assert (picked >= fiftieth - 0.02 * spread).all()
    _, top = adc_search(codes, enc, q, 10, exact=True)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cand, top, strict=True)]) >= 0.99


def test_adc_search_edge_cases() -> None:
    x = _data(20)
    enc = ThresholdEncoder.fit(x, make_plan("hybrid", 96))
    codes = enc.encode(x)
    for exact in (False, True):
        s, i = adc_search(codes[:0], enc, x[:2], 3, exact=exact)
        assert (i == -1).all() and np.isneginf(s).all()
        s, i = adc_search(codes[:2], enc, x[:2], 3, exact=exact)  # fewer rows than k
        assert (i[:, 2] == -1).all() and np.isneginf(s[:, 2]).all() and (i[:, :2] >= 0).all()
    with pytest.raises(ValueError):
        adc_search(codes, enc, x[:2], 0)
    s, i = adc_search(codes, enc, x[:0], 3)
    assert s.shape == (0, 3)


@pytest.mark.parametrize("normed", [False, True])
def test_adc_search_answers_queries_whose_tables_are_all_zero(tmp_path: Path, normed: bool) -> None:
    """Every row of equal score (an all-zero query; a corpus of one row, or of one vector repeated, whose
    every value has one level): faiss's fast scan returns no row for such a query. The full scan answers
    as the exact scan does: every row, ties by ascending id (before: ids -1 and scores -inf, for a 1-row
    index searched with ``mode="adc"`` too)."""
    from qama.index import QamaIndex

    x = _data(300)
    cls = NormedEncoder if normed else ThresholdEncoder
    queries = x[:4].copy()
    queries[1] = 0.0
    cases = [(x, queries), (x[:1], queries), (np.repeat(x[:1], 50, axis=0), queries)]
    for corpus, q in cases:
        enc = cls.fit(corpus, make_plan("hybrid", 96))
        codes = enc.encode(corpus)
        s, i = adc_search(codes, enc, q, 5)
        es, ei = adc_search(codes, enc, q, 5, exact=True)
        np.testing.assert_array_equal(i, ei)
        np.testing.assert_allclose(s, es, rtol=1e-6)
        assert ((i >= 0).sum(axis=1) == min(5, len(corpus))).all()
    index = QamaIndex.create(tmp_path / "one", ThresholdEncoder.fit(x[:1], make_plan("hybrid", 96)), x[:1], ["d0"])
    s, i = index.search(x[:3], 2, mode="adc")
    np.testing.assert_array_equal(i, [[0, -1]] * 3)
    assert np.isfinite(s[:, 0]).all() and np.isneginf(s[:, 1]).all()


def test_omp_num_threads_bounds_numba_and_torch_after_an_asymmetric_search() -> None:
    """numba's OpenMP layer started one thread per core whatever ``OMP_NUM_THREADS`` said and set the
    process's OpenMP count, which torch shares: with ``OMP_NUM_THREADS=1`` torch ran 2 threads after the
    first asymmetric search."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, torch, qama, numba\n"
        "from qama.adc import adc_search\n"
        "x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)\n"
        "enc = qama.encoders.fit_encoder(x, '2bit')\n"
        "adc_search(enc.encode(x), enc, x[:20], 5)\n"
        "print(numba.get_num_threads(), torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_qama_imported_after_numba_ran_its_threads_leaves_numba_thread_count_alone() -> None:
    """A numba imported (and its threads started) before ``import qama`` keeps its own count: qama set
    ``NUMBA_NUM_THREADS`` from ``OMP_NUM_THREADS`` all the same, and numba, which re-reads it at each
    compilation, raised ``Cannot set NUMBA_NUM_THREADS to a different value once the threads have been
    launched`` at the next jit compilation (qama's own kernels included)."""
    import os
    import subprocess
    import sys

    script = (
        "import os, numba, numpy as np\n"
        "@numba.njit(parallel=True)\n"
        "def total(x):\n"
        "    s = 0.0\n"
        "    for i in numba.prange(len(x)):\n"
        "        s += x[i]\n"
        "    return s\n"
        "total(np.ones(10))\n"
        "import qama\n"
        "@numba.njit\n"
        "def plus_one(x):\n"
        "    return x + 1\n"
        "print(plus_one(1), os.environ.get('NUMBA_NUM_THREADS'))\n"
    )
    # a count other than numba's own (one thread per core)
    omp = str(len(os.sched_getaffinity(0)) + 1)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": omp}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-300:]
    assert out.stdout.split() == ["2", "None"]
