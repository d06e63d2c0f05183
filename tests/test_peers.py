"""Peers (qama.evaluation.peers): rows computed by faiss / sentence-transformers themselves, in the report's
tables, plot, summary and speed table."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from qama.config import ExperimentConfig
from qama.data import load_dataset
from qama.evaluation.metrics import Evaluator
from qama.evaluation.peers import build_peer, check_peers, peer_rows, summary
from qama.evaluation.study import run_report

PNG = b"\x89PNG\r\n\x1a\n"


def _inputs(root, emb):
    ds = load_dataset(root)
    ev = Evaluator(ds)
    return np.load(emb / "corpus.npy"), np.load(emb / "queries.npy")[ev.rows], ev


def test_pq_row_equals_a_direct_faiss_call(small):
    corpus, queries, ev = _inputs(*small)
    (row,) = peer_rows(corpus, queries, ev, ["pq8"])
    index = faiss.IndexPQ(32, 8, 8, faiss.METRIC_INNER_PRODUCT)  # what a faiss user writes
    index.train(corpus)
    index.add(corpus)
    scores, ids = index.search(queries, 100)
    assert row.metrics == ev.from_ranking(ids, scores)
    assert (row.format, row.plan, row.dims, row.bytes_per_vector, row.rescore) == ("faiss-pq", "M8", 32, 8, None)


def test_ubinary_rows_equal_direct_sentence_transformers_calls(small):
    from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

    corpus, queries, ev = _inputs(*small)
    sym, rescored = peer_rows(corpus, queries, ev, ["st-ubinary", "st-ubinary-rescore"])
    codes = quantize_embeddings(corpus, precision="ubinary")
    for row, rescore in ((sym, False), (rescored, True)):
        results, _ = semantic_search_faiss(
            queries, corpus_embeddings=codes, corpus_precision="ubinary", top_k=100, rescore=rescore,
            rescore_multiplier=4,
        )  # fmt: skip
        ids = np.array([[h["corpus_id"] for h in r] for r in results])
        scores = np.array([[(h["score"] if rescore else -h["score"]) for h in r] for r in results])
        assert row.metrics == ev.from_ranking(ids, scores)
    assert sym.bytes_per_vector == 4 and (sym.rescore, rescored.rescore) == (None, 4)


def test_rabitq_uses_float_queries_and_its_code_size():
    x = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)
    peer = build_peer("rabitq2", x)
    index = faiss.IndexRaBitQ(64, faiss.METRIC_INNER_PRODUCT, 2)
    index.qb = 0
    index.train(x)
    index.add(x)
    assert peer.bytes_per_vector == index.code_size
    np.testing.assert_array_equal(peer.search(x[:5], 10)[1], index.search(x[:5], 10)[1])


def test_peer_names_are_checked():
    assert check_peers(["pq16", "rabitq4", "st-int8"]) == ["pq16", "rabitq4", "st-int8"]
    for bad in ("pq", "rabitq0", "st-binary", "lsh"):
        with pytest.raises(ValueError, match=f"unknown peer '{bad}'"):
            check_peers([bad])
    with pytest.raises(ValueError, match="unknown peer"):
        ExperimentConfig(datasets=[{"path": "x"}], peers=["nope"])
    with pytest.raises(ValueError, match=r"M dividing the dimension \(32 % 48"):
        build_peer("pq48", np.zeros((10, 32), np.float32))


def test_report_with_peers_writes_every_table_and_plot(small, tmp_path):
    root, emb = small
    root2 = shutil.copytree(root, tmp_path / "ds2")
    peers = ["pq8", "pq48", "rabitq1", "rabitq2", "st-ubinary", "st-ubinary-rescore", "st-int8"]
    config = ExperimentConfig(
        datasets=[{"path": str(root), "embeddings": str(emb)}, {"path": str(root2), "embeddings": str(emb)}],
        nested_dims=[32, 16],
        plans=["2bit", "hybrid"],
        train={"steps": 3, "batch_size": 64},
        ablation=False,
        speed_vectors=3000,
        speed_queries=40,
        peers=peers,
    )
    out = tmp_path / "report"
    results = run_report(config, out, command="test", progress=False)
    for name in ("report.md", "results.json", "retention_vs_bits.png", "retention_vs_dims.png", "storage_quality.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    keys = {(e["format"], e["plan"], e["rescore"]) for e in saved["main"]}
    assert {("faiss-pq", "M8", None), ("faiss-rabitq", "1bit", None), ("st-ubinary", None, 4)} <= keys
    assert not any(e["plan"] == "M48" for e in saved["main"])  # 48 does not divide 32: left out, with a warning
    pq = next(e for e in saved["main"] if e["plan"] == "M8")
    assert set(pq["ndcg@10"]) == {"ds", "ds2"} and 0 < pq["mean_retention"] <= 1.01
    methods = [r["method"] for r in saved["speed"]]
    assert methods[0].startswith("fp32") and "hybrid Hamming + rescore 4x" in methods
    assert any(m.startswith("faiss IndexPQ M8") for m in methods) and any("RaBitQ 2bit" in m for m in methods)
    assert not any("int8" in m for m in methods)  # no int8 scan in faiss: left out of the speed table
    md = (out / "report.md").read_text()
    assert md.index("## Summary") < md.index("## Main table") and "| faiss-pq | M8 |" in md
    assert "faiss IndexPQ M8" in md and results["main"] == saved["main"]
    again = run_report(config, out, command="test", progress=False)  # resumes: peers cached
    assert again["main"] == results["main"]


def test_summary_names_the_best_format_per_budget():
    def entry(fmt, plan, nbytes, ret, rescore=None):
        return {"format": fmt, "plan": plan, "dims": 384, "rescore": rescore, "bytes_per_vector": nbytes,
                "mean_retention": ret}  # fmt: skip

    main = [
        entry("fp32", None, 1536, 1.0),
        entry("qama", "hybrid", 78, 0.97, rescore=4),
        entry("qama", "1bit", 48, 0.90),
        entry("faiss-pq", "M64", 64, 0.977),
        entry("st-ubinary", None, 48, 0.85),
    ]
    text = "\n".join(summary(main, budgets=(48, 64, 96)))
    assert "**≤ 48 B**: qama 1bit @ 384 dims (symmetric Hamming), 48 B, 90.0%" in text
    assert "**≤ 64 B**: faiss IndexPQ M64 (float query, ADC), 64 B, 97.7%" in text
    assert "qama is ahead of every peer at: ≤ 48 B (+5.0 points)" in text
    assert "A peer is ahead of qama at: ≤ 64 B (-7.7 points), ≤ 96 B (-0.7 points)" in text
