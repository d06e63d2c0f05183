"""Metrics against hand-computed values, and the FP32 reference figures of the shared benchmarks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qama.data import load_dataset
from qama.embeddings import load_embeddings
from qama.evaluation.metrics import Evaluator, evaluate_run, per_query_metrics, run_from_scores
from qama.evaluation.rows import Row
from qama.evaluation.tables import breakdown_markdown, loss_breakdown
from tests.conftest import shared_dataset


def test_hand_computed_ndcg_mrr_recall():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"x": 1}}
    run = {"q1": {"a": 0.9, "c": 0.8, "b": 0.7}}  # q2 retrieved nothing: it counts as 0
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3)
    ndcg_q1 = 2.0 / (2.0 + 1.0 / math.log2(3))
    m = evaluate_run(qrels, run)
    assert m["ndcg@10"] == pytest.approx(ndcg_q1 / 2)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@100"] == pytest.approx(0.5)


def test_per_query_figures_follow_the_qrels_order_and_a_missing_query_scores_zero():
    qrels = {"q2": {"x": 1}, "q1": {"a": 1, "b": 2}}
    run = {"q1": {"a": 0.9, "c": 0.8, "b": 0.7}}
    per_query = per_query_metrics(qrels, run)
    assert per_query["ndcg@10"].tolist() == pytest.approx([0.0, 2.0 / (2.0 + 1.0 / math.log2(3))])
    assert per_query["mrr@10"].tolist() == [0.0, 1.0]
    assert per_query["recall@100"].tolist() == [0.0, 1.0]
    assert evaluate_run(qrels, run)["ndcg@10"] == per_query["ndcg@10"].mean()


def test_breakdown_compares_with_untrained_codes_query_by_query():
    def row(fmt, plan, ndcg):
        per_query = np.array(ndcg)
        return Row(fmt, plan, 8, 2.0, 2, metrics={"ndcg@10": per_query.mean()}, per_query_ndcg=per_query)

    rows = [
        row("fp32", None, [1.0, 1.0, 1.0, 1.0]),
        row("qama", None, [1.0, 1.0, 1.0, 1.0]),
        row("threshold-qcal", "2bit", [0.5, 0.5, 0.5, 0.5]),
        row("qama", "2bit", [0.6, 0.7, 0.6, 0.7]),  # differences 0.1, 0.2, 0.1, 0.2
        row("threshold", "1bit", [0.5, 0.5, 0.5, 0.5]),
        row("qama", "1bit", [0.9, 0.1, 0.5, 0.5]),  # differences 0.4, -0.4, 0, 0
    ]
    two, one = loss_breakdown(rows)
    assert two["untrained_diff"] == pytest.approx(0.15)
    assert two["untrained_stderr"] == pytest.approx(np.std([0.1, 0.2, 0.1, 0.2], ddof=1) / 2)
    assert one["untrained_diff"] == pytest.approx(0.0)
    assert one["untrained_stderr"] == pytest.approx(np.std([0.4, -0.4, 0, 0], ddof=1) / 2)
    table = breakdown_markdown([two, one])
    assert "| 2bit | 8 | 100.0% | 65.0% | — | 130.0% | +15.0 ± 2.9 (better) |" in table
    assert "| 1bit | 8 | 100.0% | 50.0% | — | 100.0% | +0.0 ± 16.3 |" in table
    same = dict(two, untrained_diff=0.1, untrained_stderr=0.0)  # every query 0.1 better: no noise at all
    assert "+10.0 ± 0.0 (better) |" in breakdown_markdown([same])
    assert breakdown_markdown([dict(same, untrained_diff=0.0)]).endswith("+0.0 ± 0.0 |\n")
    # rows read back from JSON have no per-query figures: no paired column
    for r in rows:
        r.per_query_ndcg = None
    assert [b["untrained_diff"] for b in loss_breakdown(rows)] == [None, None]
    assert "s.e." not in breakdown_markdown(loss_breakdown(rows))


def test_breakdown_of_rows_of_several_datasets_pairs_each_dataset_with_itself():
    def row(dataset, fmt, plan, ndcg):
        per_query = np.array(ndcg)
        metrics = {"ndcg@10": float(per_query.mean())}
        return Row(fmt, plan, 8, 2.0, 2, metrics=metrics, per_query_ndcg=per_query, dataset=dataset)

    one = [  # a dataset with a single judged query, listed first
        row("one", "fp32", None, [0.9]),
        row("one", "qama", None, [0.9]),
        row("one", "threshold", "2bit", [0.1]),
        row("one", "qama", "2bit", [0.3]),
    ]
    three = [
        row("three", "fp32", None, [0.5, 0.5, 0.5]),
        row("three", "qama", None, [0.5, 0.5, 0.5]),
        row("three", "threshold", "2bit", [0.4, 0.5, 0.6]),
        row("three", "qama", "2bit", [0.4, 0.5, 0.6]),
    ]
    two = [row("two", name, plan, [x, x]) for name, plan, x in [("qama", "2bit", 0.8), ("threshold", "2bit", 0.4)]]
    b_one, b_three, b_two = loss_breakdown(one + three + two)
    assert (b_one["dataset"], b_three["dataset"], b_two["dataset"]) == ("one", "three", "two")
    assert b_one["untrained"] == pytest.approx(3.0) and b_one["untrained_diff"] is None
    assert b_three["untrained"] == pytest.approx(1.0) and b_three["transform"] == pytest.approx(1.0)
    assert b_three["untrained_diff"] == pytest.approx(0.0)
    assert b_two["untrained"] == pytest.approx(2.0) and b_two["transform"] is None
    assert b_two["untrained_diff"] == pytest.approx(0.4)
    # rows of two splits under one dataset name: per-query figures of other queries do not pair
    other_split = [row("two", "qama", "2bit", [0.8, 0.8, 0.8]), row("two", "threshold", "2bit", [0.4, 0.4])]
    assert loss_breakdown(other_split)[0]["untrained_diff"] is None


def test_ties_follow_trec_eval_order():
    # Equal scores: trec_eval ranks the larger doc id first, so "m" is at rank 2.
    m = evaluate_run({"q": {"m": 1}}, {"q": {"m": 1.0, "n": 1.0}})
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_mrr_is_cut_at_10():
    run = {"q": {f"d{i:02d}": 100.0 - i for i in range(20)}}
    assert evaluate_run({"q": {"d10": 1}}, run)["mrr@10"] == 0.0
    assert evaluate_run({"q": {"d09": 1}}, run)["mrr@10"] == pytest.approx(0.1)


def test_run_from_scores_keeps_the_top():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    run = run_from_scores(scores, ["q1", "q2"], ["a", "b", "c"], top=2)
    assert run == {"q1": {"b": 0.9, "c": 0.5}, "q2": {"a": 0.3, "b": pytest.approx(0.2)}}
    with pytest.raises(ValueError, match=r"scores shape \(2, 3\) != \(2, 2\)"):
        run_from_scores(scores, ["q1", "q2"], ["a", "b"])


@pytest.mark.parametrize(("name", "expected"), [("scifact", 0.649), ("cranfield", 0.382)])
def test_fp32_reference_figures(name, expected):
    data_dir, emb_dir = shared_dataset(name)
    ds = load_dataset(data_dir)
    corpus, queries = load_embeddings(emb_dir, ds)
    ev = Evaluator(ds)
    scores = queries[ev.rows] @ corpus.T
    assert ev.from_scores(scores)["ndcg@10"] == pytest.approx(expected, abs=0.002)


@pytest.mark.parametrize("name", ["cranfield", "scifact"])
def test_figures_equal_pytrec_eval_over_every_score(name):
    """FP32 rows of the shared benchmarks (Cranfield: graded judgments 1-4) against pytrec_eval over every
    document's score, and MRR@10 by hand in trec_eval's order: the same figures, query by query."""
    import pytrec_eval

    from qama.evaluation.rows import baseline_rows

    data_dir, emb_dir = shared_dataset(name)
    ds = load_dataset(data_dir)
    corpus, queries = load_embeddings(emb_dir, ds)
    ev = Evaluator(ds)
    (row,) = baseline_rows(corpus, queries[ev.rows], ev, [384], plans=())[:1]
    scores = (queries[ev.rows] @ corpus.T).astype(np.float64)
    run = {q: dict(zip(ds.doc_ids, map(float, s), strict=True)) for q, s in zip(ev.query_ids, scores, strict=True)}
    ref = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    ndcg = np.array([ref[q]["ndcg_cut_10"] for q in ds.qrels])
    np.testing.assert_allclose(row.per_query_ndcg, ndcg, atol=1e-6)
    assert row.metrics["recall@100"] == pytest.approx(np.mean([ref[q]["recall_100"] for q in ds.qrels]), abs=1e-9)
    rr = []
    for q in ds.qrels:
        top = sorted(run[q].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]
        rr.append(next((1 / i for i, (d, _) in enumerate(top, 1) if ds.qrels[q].get(d, 0) > 0), 0.0))
    assert row.metrics["mrr@10"] == pytest.approx(np.mean(rr), abs=1e-9)
