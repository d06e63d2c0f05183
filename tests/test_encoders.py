"""The shared pieces of every store: encoder state, the compatibility check, one two-stage search."""

from __future__ import annotations

import numpy as np
import pytest

from qama.codes import make_plan, value_dims
from qama.encoders import (
    AdapterEncoder,
    ThresholdEncoder,
    check_encoder,
    open_encoder,
    state_bytes,
    state_from_bytes,
)
from qama.errors import IndexCorruptError, IndexMismatchError
from qama.search import hamming_search, search_rescored


@pytest.fixture
def corpus() -> np.ndarray:
    x = np.random.default_rng(3).normal(size=(200, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_value_dims_layout() -> None:
    plan = make_plan("2:2,2:1,4:0.5", 8)
    np.testing.assert_array_equal(value_dims(plan), [[0, -1], [1, -1], [2, -1], [3, -1], [4, 5], [6, 7]])
    assert len(value_dims(make_plan("hybrid", 384))) == make_plan("hybrid", 384).n_values


def test_threshold_state_round_trip(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("hybrid", 32))
    again = ThresholdEncoder.from_state(enc.plan, state_from_bytes(state_bytes(enc), "x"))
    assert again.checksum == enc.checksum
    np.testing.assert_array_equal(again.encode(corpus), enc.encode(corpus))
    with pytest.raises(IndexCorruptError, match="^where: unreadable encoder state"):
        state_from_bytes(b"not safetensors", "where")


def test_check_encoder_messages(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("hybrid", 32))
    check_encoder(enc, enc.plan, enc.checksum, "w")
    with pytest.raises(IndexMismatchError, match=r"^w: the encoder given .* is not the one this index was built"):
        check_encoder(enc, enc.plan, "0" * 64, "w", "index")
    with pytest.raises(IndexMismatchError, match=r"^w: holds 4-byte codes of plan 32:1, the encoder makes"):
        check_encoder(enc, make_plan("1bit", 32), enc.checksum, "w")


def test_open_encoder_paths(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("2bit", 32))
    record = {"kind": "thresholds", "checksum": enc.checksum}
    state = enc.state
    assert open_encoder(record, enc.plan, lambda: state, "w").checksum == enc.checksum
    with pytest.raises(IndexCorruptError, match="do not match the checksum"):
        open_encoder({"kind": "thresholds", "checksum": "0" * 64}, enc.plan, lambda: state, "w")
    with pytest.raises(IndexCorruptError, match="malformed stored thresholds"):
        open_encoder(record, enc.plan, lambda: None, "w")
    adapter_record = {"kind": "adapter", "checksum": "0" * 64, "path": "/a"}
    with pytest.raises(IndexMismatchError, match=r"^w: this collection was built with a trained adapter at /a "):
        open_encoder(adapter_record, enc.plan, lambda: None, "w", what="collection")


def test_adapter_encoder_state_round_trip(corpus: np.ndarray) -> None:
    from qama.adapter import AdapterConfig, QamaAdapter

    adapter = QamaAdapter(AdapterConfig(dim=32, nested_dims=(16, 32)))
    adapter.calibrate(corpus)
    enc = AdapterEncoder(adapter, "hybrid", fit_emb=corpus)
    record = {"kind": "adapter", "checksum": enc.checksum}
    again = open_encoder(record, enc.plan, lambda: state_from_bytes(state_bytes(enc), "w"), "w", adapter=adapter)
    assert again.checksum == enc.checksum
    np.testing.assert_array_equal(again.query_weights(corpus[:3]), enc.query_weights(corpus[:3]))


def test_search_rescored_oversample_contract(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("hybrid", 32))
    codes, q = enc.encode(corpus), corpus[:5]
    # 0: Hamming only, scores are negated distances
    s, i = search_rescored(codes, enc, q, 7, oversample=0)
    d, ref = hamming_search(codes, enc.encode(q), 7)
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_array_equal(s, -d.astype(np.float32))
    # a store's own first stage gives the same answer as the exact scan
    calls = []

    def first(qc: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(m)
        return hamming_search(codes, qc, m)

    a = search_rescored(codes, enc, q, 7, oversample=3, candidates=first)
    b = search_rescored(codes, enc, q, 7, oversample=3)
    assert calls == [21]
    np.testing.assert_array_equal(a[1], b[1])
    # vectors: auto uses them, asymmetric ignores them, "vectors" needs them
    v = search_rescored(codes, enc, q, 7, oversample=3, vectors=corpus)
    assert not np.array_equal(v[0], b[0])
    np.testing.assert_array_equal(search_rescored(codes, enc, q, 7, 3, corpus, rescore="asymmetric")[0], b[0])
    with pytest.raises(ValueError, match="rescore='vectors' needs"):
        search_rescored(codes, enc, q, 7, oversample=3, rescore="vectors")
    with pytest.raises(ValueError, match="rescore must be one of"):
        search_rescored(codes, enc, q, 7, oversample=3, rescore="exact")


def test_fitting_refuses_a_corpus_with_nan_or_inf_no_rows_or_not_a_matrix(corpus: np.ndarray) -> None:
    """Untrained thresholds are quantiles of the corpus: a NaN made a dimension's thresholds NaN, so that
    every value of it took level 0 (before: fitted silently, as was an inf, whose level's centroid was
    inf); no rows or a vector was numpy's ``IndexError``. Each is a one-line ``ValueError`` now."""
    from qama.encoders import fit_encoder

    plan = make_plan("hybrid", 32)
    nan, inf = corpus.copy(), corpus.astype(np.float64)
    nan[7, 3] = np.nan
    inf[150:152, 0] = np.inf
    for fit in (lambda c: ThresholdEncoder.fit(c, plan), lambda c: fit_encoder(c, "hybrid")):
        with pytest.raises(ValueError, match=r"corpus embeddings: row 7 has NaN or inf values \(1 rows\)"):
            fit(nan)
        with pytest.raises(ValueError, match=r"corpus embeddings: row 150 has NaN or inf values \(2 rows\)"):
            fit(inf)
        with pytest.raises(ValueError, match="corpus embeddings: no rows to fit the thresholds on"):
            fit(corpus[:0])
        with pytest.raises(ValueError, match=r"corpus embeddings must be a matrix \(n, d\), got shape \(32,\)"):
            fit(corpus[0])
        with pytest.raises(ValueError, match="corpus embeddings must be real numbers, got dtype <U1"):
            fit(np.full((3, 32), "a"))
    # what is refused here was fitted as thresholds before: the finite corpus still fits the same
    np.testing.assert_array_equal(
        ThresholdEncoder.fit(corpus, plan).encode(corpus), fit_encoder(corpus, plan).encode(corpus)
    )
