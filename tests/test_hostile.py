"""Issue #16 (hardening round 2) and #17: every hostile input of the issue, through the command line
and the Python API: a one-line error naming the file and the problem (exit status 2), or a correct
answer; never a traceback, never unbounded memory, never a silent wrong answer; files left as they were."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from qama.adapter import AdapterConfig, QamaAdapter
from qama.cli import main
from qama.index import MANIFEST, IndexCorruptError, QamaIndex


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["-q", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qama: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def built(tiny: Path, tmp_path: Path, capsys) -> tuple[Path, Path, Path]:
    """(dataset, embeddings, index folder) of the tiny dataset, indexed without an adapter."""
    emb = tiny.parent / "tiny-emb"
    rc, _, err = _run(capsys, "index", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(tmp_path / "ix"))
    assert rc == 0, err
    return tiny, emb, tmp_path / "ix"


# ---------------------------------------------------------------------- 2. bounded memory
@pytest.mark.parametrize("score", ["3000000000", "99999999999999999999", "-5000"])
def test_qrels_relevance_out_of_range(tiny, capsys, score):
    qrels = tiny / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + f"q0\td9\t{score}\n")
    rc, _, err = _run(capsys, "eval", "--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"))
    assert rc == 2
    _one_line_error(err, "qrels/test.tsv:12: relevance", score, "is out of range (-1000..1000)")


def test_search_k_is_clamped_to_the_index(built, tmp_path, capsys):
    _, emb, ix = built
    q = tmp_path / "q.npy"
    np.save(q, np.load(emb / "queries.npy")[:2])
    for k in ("10000000", "1000000000"):
        rc, out, err = _run(capsys, "search", "--index", str(ix), "--queries", str(q), "-k", k, "--json")
        assert rc == 0, err
        assert [len(r["hits"]) for r in json.loads(out)] == [40, 40]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--oversample", "1000000000"), "oversample must be at most 1000, got 1000000000"),
        (("--oversample", "-1"), "oversample must be >= 0, got -1"),
        (("-k", "0"), "k must be positive, got 0"),
    ],
)
def test_search_absurd_numbers_are_refused(built, tmp_path, capsys, extra, message):
    _, emb, ix = built
    q = tmp_path / "q.npy"
    np.save(q, np.load(emb / "queries.npy")[:2])
    rc, _, err = _run(capsys, "search", "--index", str(ix), "--queries", str(q), *extra)
    assert rc == 2
    _one_line_error(err, message)


def test_api_search_bounds(built):
    _, emb, ix = built
    index = QamaIndex.open(ix)
    q = np.load(emb / "queries.npy")
    with pytest.raises(ValueError, match=r"k=1000000000 for 6 queries asks for more than 16777216 results"):
        index.search(q, 10**9)
    with pytest.raises(ValueError, match=r"oversample must be at most 1000, got 1000000000"):
        index.search(q, 10, oversample=10**9)
    s, r = index.search(q, 100, oversample=1000)  # candidates clamped to the index: a correct answer
    assert r.shape == (6, 100) and (r[:, :40] >= 0).all() and (r[:, 40:] == -1).all()
    assert np.array_equal(np.sort(r[:, :40], axis=1), np.tile(np.arange(40), (6, 1)))


def test_eval_rescore_factor_is_bounded_before_any_work(tiny, capsys):
    rc, _, err = _run(
        capsys, "eval", "--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"), "--oversample", "1000000"
    )
    assert rc == 2
    _one_line_error(err, "oversample must be at most 1000, got 1000000")


def test_npy_header_claiming_a_huge_shape(tmp_path, built, capsys):
    _, _, ix = built
    bad = tmp_path / "huge.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 16)}
    with open(bad, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    rc, _, err = _run(capsys, "search", "--index", str(ix), "--queries", str(bad))
    assert rc == 2
    _one_line_error(err, "huge.npy: unreadable or truncated .npy file (its header claims float32 (1000000000000, 16)")


def test_manifest_linked_to_an_endless_file(built, capsys):
    _, _, ix = built
    (ix / MANIFEST).unlink()
    os.symlink("/dev/zero", ix / MANIFEST)
    with pytest.raises(IndexCorruptError, match=r"manifest.json: not a regular file"):
        QamaIndex.open(ix)
    rc, _, err = _run(capsys, "search", "--index", str(ix), "hello")
    assert rc == 2
    _one_line_error(err, "manifest.json: not a regular file (a device, pipe or socket)")


# ---------------------------------------------------------------------- 3. no silent wrong answers
def test_queries_of_the_wrong_dimension(built, tmp_path, capsys):
    _, emb, ix = built
    q = tmp_path / "q.npy"
    np.save(q, np.ones((2, 48), np.float32))  # 48 >= 16: once accepted, truncated
    rc, out, err = _run(capsys, "search", "--index", str(ix), "--queries", str(q))
    assert rc == 2 and out == ""
    _one_line_error(err, "queries must be (nq, 16) to search this index, got shape (2, 48)")


def test_nan_query(built, tmp_path, capsys):
    _, _, ix = built
    q = tmp_path / "q.npy"
    np.save(q, np.full((1, 16), np.nan, np.float32))
    rc, out, err = _run(capsys, "search", "--index", str(ix), "--queries", str(q))
    assert rc == 2 and out == ""
    _one_line_error(err, f"{q}: row 0 has NaN or inf values (1 rows)")
    with pytest.raises(ValueError, match="NaN or inf"):
        QamaIndex.open(ix).search(np.array([[np.inf] * 16], np.float32), 3)


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.init_linear(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    return adapter.save(tmp_path / "ad")


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_adapter_without_weights_sha256_is_refused(adapter_dir):
    _edit(adapter_dir / "config.json", lambda c: c.pop("weights_sha256"))
    with pytest.raises(
        ValueError, match=r"config.json: field 'weights_sha256' must be the SHA-256 of model.safetensors \(missing\)"
    ):
        QamaAdapter.load(adapter_dir)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("nested_dims", [4, 8.5, 16], "nested_dims must be an integer, got 8.5"),
        ("plans", ["bogus"], "plans: 'bogus' fits none of the sizes 4, 8, 16"),
        ("drop_mean_direction", "no", "drop_mean_direction must be true or false, got 'no'"),
        ("dim", 16.0, "dim must be an integer, got 16.0"),
        ("expansion", 2.5, "expansion must be an integer, got 2.5"),
        ("merge_hidden", True, "merge_hidden must be an integer, got True"),
        ("dim", 10**9, "dim must be in 2..65536, got 1000000000"),
        ("expansion", 1000, "dim 16 and expansion 1000 need at least"),
        ("init", ["pca"], "init must be a string"),
    ],
)
def test_adapter_config_field_types(adapter_dir, capsys, tiny, field, value, message):
    _edit(adapter_dir / "config.json", lambda c: c["adapter"].update({field: value}))
    with pytest.raises(ValueError, match="config.json: ") as e:
        QamaAdapter.load(adapter_dir)
    assert message in str(e.value)
    rc, _, err = _run(
        capsys,
        "eval",
        "--dataset",
        str(tiny),
        "--embeddings",
        str(tiny.parent / "tiny-emb"),
        "--adapter",
        str(adapter_dir),
    )
    assert rc == 2
    _one_line_error(err, "config.json", message)


def test_adapter_config_api_types():
    with pytest.raises(ValueError, match="nested_dims must be an integer, got 384.5"):
        AdapterConfig(dim=384, nested_dims=(96, 384.5))
    with pytest.raises(ValueError, match="plans: 'bogus' fits none"):
        AdapterConfig(dim=16, plans=("bogus",))


@pytest.mark.parametrize(
    "plans, message",
    [
        (("bogus",), "--plans: cannot read plan 'bogus'"),
        (("384:3",), "--plans: plan '384:3': unsupported precision 3 bits"),
        (("384:2",), "--plans: '384:2' fits none of the sizes of"),
    ],
)
def test_eval_plans_that_give_no_row_are_refused(tiny, adapter_dir, capsys, plans, message):
    emb = tiny.parent / "tiny-emb"
    rc, out, err = _run(
        capsys,
        "eval",
        "--dataset",
        str(tiny),
        "--embeddings",
        str(emb),
        "--adapter",
        str(adapter_dir),
        "--plans",
        *plans,
    )
    assert rc == 2 and out == ""
    _one_line_error(err, message)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--dims", "8", "8"), "--dims: 8 is given twice"),
        (("--oversample", "4", "2", "4"), "--oversample: 4 is given twice"),
        (("--plans", "2bit"), "--plans: the plans of the adapter's rows; give --adapter (without one every plan is"),
    ],
)
def test_eval_options_given_twice_or_without_their_adapter_are_refused(tiny, tmp_path, capsys, extra, message):
    """``qama eval --dims 8 8`` measured and printed every row of that size twice; ``--plans`` without ``--adapter``
    was ignored, silently (the baselines measure every built-in plan). Refused before the dataset is read."""
    rc, out, err = _run(capsys, "eval", "--dataset", str(tmp_path / "nowhere"), *extra)
    assert rc == 2 and out == ""
    _one_line_error(err, message)


def test_manifest_naming_a_file_outside_the_folder(built, tmp_path):
    _, _, ix = built
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((ix / MANIFEST).read_text())
    name = m["segments"][0]["files"]["codes"]["name"]
    shutil.copy(ix / name, other / name)
    m["segments"][0]["files"]["codes"]["name"] = f"../other/{name}"
    (ix / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match=r"segments\[0\].files.codes: file name '../other/codes-000001-1.npy'"):
        QamaIndex.open(ix)


def test_meta_json_dimension_must_match_the_embeddings(tiny, capsys):
    emb = tiny.parent / "tiny-emb"
    (emb / "meta.json").write_text(json.dumps({"model": "org/m", "dimension": 768, "normalized": True}))
    rc, _, err = _run(capsys, "eval", "--dataset", str(tiny), "--embeddings", str(emb))
    assert rc == 2
    _one_line_error(err, "meta.json: dimension 768, but corpus.npy has 16-dimensional rows")
    (emb / "meta.json").write_text(json.dumps({"model": 7}))
    rc, _, err = _run(capsys, "eval", "--dataset", str(tiny), "--embeddings", str(emb))
    assert rc == 2
    _one_line_error(err, "meta.json: field 'model' must be a string, got 7 (int)")


def test_meta_json_model_travels_with_the_embeddings(tiny, tmp_path, capsys, monkeypatch):
    """#17: the model of meta.json is recorded in the index; search "text" uses it without --model;
    a contradicting --model is refused with the reason (index, search, train, eval)."""
    import qama.embeddings

    emb = tiny.parent / "tiny-emb"
    (emb / "meta.json").write_text(json.dumps({"model": "org/the-model", "dimension": 16, "normalized": True}))
    ix = tmp_path / "ix"
    common = ("--dataset", str(tiny), "--embeddings", str(emb), "--query-sample", "none")  # (no model to load)
    rc, _, err = _run(capsys, "index", *common, "--model", "org/another", "--out", str(ix))
    assert rc == 2 and not ix.exists()
    _one_line_error(err, "meta.json: the embeddings are of org/the-model, but --model is org/another")
    assert _run(capsys, "index", *common, "--out", str(ix))[0] == 0
    assert QamaIndex.open(ix).manifest["meta"]["model"] == "org/the-model"

    used = {}
    monkeypatch.setattr(qama.embeddings, "load_model", lambda name: used.setdefault("model", name))
    monkeypatch.setattr(qama.embeddings, "encode", lambda m, texts, **kw: np.load(emb / "queries.npy")[: len(texts)])
    rc, out, err = _run(capsys, "search", "--index", str(ix), "some text")
    assert rc == 0 and used["model"] == "org/the-model" and "query: some text" in out
    rc, _, err = _run(capsys, "search", "--index", str(ix), "--model", "org/another", "some text")
    assert rc == 2
    _one_line_error(err, "the documents were embedded with org/the-model; queries embedded with --model org/another")
    rc, _, err = _run(capsys, "eval", *common, "--model", "another")
    assert rc == 2
    adapter = QamaAdapter(AdapterConfig(dim=16, model_name="org/yet-another"))
    adapter.save(tmp_path / "ad")
    rc, _, err = _run(capsys, "eval", *common, "--adapter", str(tmp_path / "ad"))
    assert rc == 2
    _one_line_error(err, "the adapter was trained on embeddings of org/yet-another, these are of org/the-model")
    rc, _, err = _run(capsys, "index", *common, "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "ix2"))
    assert rc == 2 and not (tmp_path / "ix2").exists()
    _one_line_error(err, "the adapter was trained on embeddings of org/yet-another, these are of org/the-model")


# ---------------------------------------------------------------------- 4. one-line errors, not tracebacks
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(plan="hybrid"), "field 'plan' must be an object, got \"hybrid\" (str)"),
        (lambda m: m["files"].update(encoder="encoder-000001.safetensors"), "field 'files.encoder' must be an object"),
        (
            lambda m: m["segments"][0]["files"].update(codes="codes-000001-1.npy"),
            "field 'segments[0].files.codes' must be an object",
        ),
        (lambda m: m.update(segments={}), "field 'segments' must be a list, got {}"),
        (lambda m: m["segments"].append(None), "field 'segments[1]' must be an object, got null"),
        (lambda m: m["segments"][0].update(count=41), "the segments hold 41 rows, but field 'count' is 40"),
        (lambda m: m.update(version=3), "index format version 3, this qama reads versions 1, 2"),
        (
            lambda m: m["plan"]["segments"].__setitem__(0, None),
            "field 'plan.segments[0]' must be [dims, bits], got None",
        ),
        (lambda m: m.update(meta="x"), "field 'meta' must be an object, got \"x\" (str)"),
        (lambda m: m.update(count="40"), "field 'count' must be an integer, got \"40\" (str)"),
        (lambda m: m.update(count=True), "field 'count' must be an integer, got true (bool)"),
        (lambda m: m["encoder"].update(kind=3), "field 'encoder.kind' must be a string"),
        (
            lambda m: m["segments"][0]["files"]["codes"].update(bytes=-1),
            "field 'segments[0].files.codes.bytes' must be in 0..inf, got -1",
        ),
        (lambda m: m["plan"]["segments"].__setitem__(0, [16, 3]), "field 'plan': unsupported precision 3.0 bits"),
        (lambda m: m["meta"].update(model=5), "field 'meta.model' must be a string, got 5 (int)"),
    ],
)
def test_manifest_field_types(built, capsys, edit, message):
    _, emb, ix = built
    m = json.loads((ix / MANIFEST).read_text())
    edit(m)
    (ix / MANIFEST).write_text(json.dumps(m))
    before = _snapshot(ix)
    with pytest.raises(IndexCorruptError) as e:
        QamaIndex.open(ix)
    assert message in str(e.value) and "manifest.json" in str(e.value)
    rc, _, err = _run(capsys, "search", "--index", str(ix), "--queries", str(emb / "queries.npy"))
    assert rc == 2
    _one_line_error(err, "manifest.json", message)
    assert _snapshot(ix) == before


def test_deeply_nested_json_corpus_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    rc, _, err = _run(capsys, "index", "--corpus", str(corpus), "--out", str(tmp_path / "ix"))
    assert rc == 2
    _one_line_error(err, "c.jsonl:2: malformed JSON (nested too deeply)")
    assert not (tmp_path / "ix").exists()


# ---------------------------------------------------------------------- 5. messages that help
def test_corpus_path_that_is_a_folder(tmp_path, capsys):
    rc, _, err = _run(capsys, "index", "--corpus", str(tmp_path), "--out", str(tmp_path / "ix"))
    assert rc == 2
    _one_line_error(err, f"{tmp_path}: is a folder, expected a file")


def test_index_corpus_accepts_a_bom_like_dataset(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    lines = [json.dumps({"id": f"d{i}", "title": f"t{i}", "text": f"text {i}"}) for i in range(20)]
    corpus.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    emb = tmp_path / "e.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32))
    rc, _, err = _run(capsys, "index", "--corpus", str(corpus), "--embeddings", str(emb), "--out", str(tmp_path / "ix"))
    assert rc == 0, err
    assert QamaIndex.open(tmp_path / "ix").doc_id(0) == "d0"
    corpus.write_text('{"_id": "a", "text": "x"}\n{"text": "no id"}\n')
    rc, _, err = _run(capsys, "index", "--corpus", str(corpus), "--out", str(tmp_path / "ix2"))
    assert rc == 2
    _one_line_error(err, "c.jsonl:2: missing '_id' or 'id'")


def test_qrels_linked_to_dev_zero(tiny, capsys):
    qrels = tiny / "qrels" / "test.tsv"
    qrels.unlink()
    os.symlink("/dev/zero", qrels)
    rc, _, err = _run(capsys, "eval", "--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"))
    assert rc == 2
    _one_line_error(err, "qrels/test.tsv: not a regular file (a device, pipe or socket), expected a file")


def test_a_plan_that_does_not_parse_is_refused_before_any_work(tmp_path, capsys):
    """``qama index --plan bogus`` read the dataset, embedded its corpus and titles, then refused the plan."""
    rc, _, err = _run(capsys, "index", "--dataset", str(tmp_path / "nowhere"), "--plan", "bogus", "--out", "ix")
    assert rc == 2
    _one_line_error(err, "--plan: cannot read plan 'bogus': expected a built-in name")


def test_plan_that_does_not_parse(tiny, tmp_path, capsys):
    rc, _, err = _run(
        capsys,
        "index",
        "--dataset",
        str(tiny),
        "--embeddings",
        str(tiny.parent / "tiny-emb"),
        "--plan=384:..",
        "--out",
        str(tmp_path / "ix"),
    )
    assert rc == 2
    _one_line_error(err, "cannot read plan '384:..': expected a built-in name")


def test_overwrite_message_names_the_option(built, capsys):
    tiny, emb, ix = built
    rc, _, err = _run(capsys, "index", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(ix))
    assert rc == 2
    _one_line_error(err, "an index already exists here (--overwrite")


def test_files_follow_the_umask(tiny, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        emb = tiny.parent / "tiny-emb"
        assert (
            _run(capsys, "index", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(tmp_path / "ix"))[0]
            == 0
        )
        adapter = QamaAdapter(AdapterConfig(dim=16))
        adapter.save(tmp_path / "ad")
    finally:
        os.umask(old)
    for p in [*(tmp_path / "ix").iterdir(), *(tmp_path / "ad").iterdir()]:
        if p.name != "writer.lock":
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_output_file_that_is_a_folder_is_refused_before_work(tiny, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    for opt in ("--json", "--markdown"):
        rc, out, err = _run(
            capsys,
            "eval",
            "--dataset",
            str(tiny),
            "--embeddings",
            str(tiny.parent / "tiny-emb"),
            opt,
            str(tmp_path / "out"),
        )
        assert rc == 2 and out == ""
        _one_line_error(err, "out: is a folder; give the path of a file to write")


def test_an_existing_output_file_is_kept_unless_overwrite(tiny, tmp_path, capsys):
    """``--json`` / ``--markdown`` replaced a file already there: a slip such as ``--json corpus.jsonl`` lost
    the user's file. It is refused before any work, ``--overwrite`` replaces it, and one file given as
    both outputs is refused."""
    mine = tmp_path / "corpus.jsonl"
    mine.write_text("the user's own lines\n")
    data = ["--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"), "--query-sample", "none"]
    for opt in ("--json", "--markdown"):
        rc, out, err = _run(capsys, "eval", *data, opt, str(mine))
        assert rc == 2 and out == ""
        _one_line_error(err, f"{mine}: exists; add --overwrite to replace it")
        assert mine.read_text() == "the user's own lines\n"
    rc, out, err = _run(capsys, "search", "--index", str(tmp_path / "ix"), "a query", "--json", str(mine))
    assert rc == 2
    _one_line_error(err, f"{mine}: exists; add --overwrite to replace it")
    rc, out, err = _run(capsys, "eval", *data, "--json", str(tmp_path / "t"), "--markdown", str(tmp_path / "t"))
    assert rc == 2 and not (tmp_path / "t").exists()
    _one_line_error(err, f"{tmp_path / 't'}: given as two outputs; give each its own file")
    # both printed (before: the JSON, then the Markdown table, on stdout: unreadable as JSON)
    rc, out, err = _run(capsys, "eval", *data, "--json", "-", "--markdown", "-")
    assert (rc, out) == (2, "")
    _one_line_error(err, "-: given as two outputs; give each its own file")
    rc, out, err = _run(capsys, "eval", *data, "--json", str(mine), "--overwrite")
    assert rc == 0 and json.loads(mine.read_text())["dataset"] == "tiny"


# ---------------------------------------------------------------------- neighbours: the Milvus backend
def test_milvus_never_adopts_a_collection_it_did_not_create(request):
    from tests.milvus_fixtures import collection_name, require_milvus

    require_milvus()
    from pymilvus import DataType, MilvusClient

    from qama.backends import open_backend
    from qama.codes import make_plan
    from qama.search import ThresholdEncoder

    uri, mine = request.getfixturevalue("milvus_uri"), collection_name("mine")
    client = MilvusClient(uri=uri)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    index = client.prepare_index_params()
    index.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(mine, schema=schema, index_params=index)
    client.insert(mine, [{"pk": i, "vec": [float(i)] * 4} for i in range(5)])
    emb = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", 16))
    with pytest.raises(FileExistsError, match=rf"collection '{mine}' exists and has no qama manifest"):
        open_backend(uri, "milvus", enc, create=True, collection=mine, timeout=3)
    assert not client.has_collection(f"{mine}_qama")
    client.load_collection(mine)
    assert len(client.query(mine, filter="pk >= 0", output_fields=["pk"])) == 5
    client.close()


# ---------------------------------------------------------------------- neighbours: the API and the report config
def test_api_refuses_nan_documents(tmp_path):
    from qama.codes import make_plan
    from qama.search import ThresholdEncoder

    emb = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", 16))
    bad = emb.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"embeddings: row 3 has NaN or inf values \(1 rows\)"):
        QamaIndex.create(tmp_path / "ix", enc, bad, [f"d{i}" for i in range(20)])
    index = QamaIndex.create(tmp_path / "ix", enc, emb, [f"d{i}" for i in range(20)])
    with pytest.raises(ValueError, match=r"embeddings: row 0 has NaN or inf values"):
        index.add(np.full((1, 16), np.inf, np.float32), ["x"])
    assert len(QamaIndex.open(tmp_path / "ix")) == 20


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("speed_vectors", 10**12, "speed_vectors must be an integer in 0..1000000, got 1000000000000"),
        ("rescore", [10**9], "rescore must be an integer in 1..1000, got 1000000000"),
        ("plans", ["bogus"], "plans: cannot read plan 'bogus'"),
        ("nested_dims", [96.5], "nested_dims must be an integer in 2..65536, got 96.5"),
        ("ablation", "no", "ablation must be true or false, got 'no'"),
    ],
)
def test_report_config_values_are_checked_before_any_work(tiny, tmp_path, capsys, key, value, message):
    import tomllib  # noqa: F401  (3.11+: the config is TOML)

    def toml(v):
        return json.dumps(v)  # numbers, strings and lists of them read the same in TOML

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{key} = {toml(value)}\n\n[[datasets]]\npath = {json.dumps(str(tiny))}\n")
    rc, _, err = _run(capsys, "report", "--config", str(cfg), "--out", str(tmp_path / "rep"))
    assert rc == 2 and not (tmp_path / "rep").exists()
    _one_line_error(err, "c.toml", message)
    rc, _, err = _run(
        capsys, "report", "--dataset", str(tiny), "--speed-vectors", "1000000000000", "--out", str(tmp_path / "rep")
    )
    assert rc == 2 and not (tmp_path / "rep").exists()
    _one_line_error(err, "speed_vectors must be an integer in 0..1000000")


def test_train_expansion_that_would_not_fit_in_memory(tiny, tmp_path, capsys):
    emb = tiny.parent / "tiny-emb"
    args = (
        "--dataset",
        str(tiny),
        "--embeddings",
        str(emb),
        "--out",
        str(tmp_path / "ad"),
        "--expansion",
        "600000",
        "--train-batch-size",
        "8",
    )
    rc, _, err = _run(capsys, "train", *args)
    assert rc == 2 and not (tmp_path / "ad").exists()
    _one_line_error(err, "expansion must be in 1..1024, got 600000")
    with pytest.raises(ValueError, match=r"expansion 16 at dim 4096: 536,870,912 FFN weights, more than 268,435,456"):
        AdapterConfig(dim=4096, expansion=16)


def test_malformed_checkpoint_meta_is_a_one_line_error(tmp_path, monkeypatch):
    from qama.train import TrainConfig, fit
    from tests.conftest import interrupted_fit

    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    cfg = TrainConfig(steps=6, batch_size=32, warmup_steps=2, progress=False, checkpoint_every=2)
    interrupted_fit(monkeypatch, x, cfg, tmp_path, at_call=4)
    meta = tmp_path / "checkpoint" / "meta.json"
    for text, message in [
        ("[1]", r"checkpoint/meta.json: not a JSON object \(got \[1\]\)"),
        ('{"step": "4", "config": {}}', r"checkpoint/meta.json: field 'step' must be an integer"),
    ]:
        meta.write_text(text)
        with pytest.raises(ValueError, match=message):
            fit(x, cfg, out_dir=tmp_path)


def test_low_level_search_bounds_k():
    from qama.search import float_search, hamming_search

    with pytest.raises(ValueError, match=r"k=100000000 for 1000 queries asks for more than 16777216 results"):
        hamming_search(np.zeros((10, 8), np.uint8), np.zeros((1000, 8), np.uint8), 10**8)
    with pytest.raises(ValueError, match=r"k must be an integer, got 2.5"):
        float_search(np.zeros((10, 4), np.float32), np.zeros((1, 4), np.float32), 2.5)
    d, i = hamming_search(np.zeros((10, 8), np.uint8), np.zeros((2, 8), np.uint8), 1000)  # padded, bounded
    assert d.shape == (2, 1000) and (i[:, 10:] == -1).all()


def test_api_records_the_adapter_model_and_checks_plans(tmp_path, tiny):
    import qama

    emb = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    adapter = QamaAdapter(AdapterConfig(dim=16, model_name="org/the-model"))
    adapter.init_linear(emb)
    index = qama.api.build_index(tmp_path / "ix", adapter, emb, [f"d{i}" for i in range(40)], plan="2bit")
    assert index.manifest["meta"]["model"] == "org/the-model"
    with pytest.raises(ValueError, match="plans: cannot read plan 'bogus'"):
        qama.api.evaluate_dataset(tiny, emb, emb[:6], adapter, plans=("bogus",))
    with pytest.raises(ValueError, match="oversample must be at most 1000"):
        qama.api.evaluate_dataset(tiny, emb, emb[:6], adapter, rescore=(10**6,))


def test_milvus_manifest_fields_are_checked(request):
    from tests.milvus_fixtures import collection_name, require_milvus

    require_milvus()
    from pymilvus import MilvusClient

    from qama.backends import open_backend
    from qama.codes import make_plan
    from qama.search import ThresholdEncoder

    uri, c = request.getfixturevalue("milvus_uri"), collection_name("c")
    emb = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", 16))
    with open_backend(uri, "milvus", enc, create=True, collection=c, dim=16) as b:
        b.add(emb, [f"d{i}" for i in range(20)])
    client = MilvusClient(uri=uri)
    row = client.get(f"{c}_qama", ids=["manifest.0"], output_fields=["value"])[0]
    good = json.loads(row["value"])
    cases = [
        ({**good, "plan": "hybrid"}, "field 'plan' must be an object"),
        ({**good, "keep_vectors": "no"}, "field 'keep_vectors' must be true or false"),
        ({**good, "encoder": {**good["encoder"], "kind": 3}}, "field 'encoder.kind' must be a string"),
        ({**good, "plan": {"name": "x", "segments": [None]}}, "field 'plan': segment None is not [dims, bits]"),
    ]
    for manifest, message in cases:
        client.upsert(f"{c}_qama", [{"key": "manifest.0", "value": json.dumps(manifest), "v": [0.0, 0.0]}])
        with pytest.raises(ValueError, match=re.escape(message)):
            open_backend(uri, "milvus", collection=c, timeout=5)
    client.upsert(f"{c}_qama", [{"key": "manifest.n", "value": "99999999999", "v": [0.0, 0.0]}])
    with pytest.raises(ValueError, match=r"malformed qama manifest \(manifest.n = '99999999999'\)"):
        open_backend(uri, "milvus", collection=c, timeout=5)
    client.close()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--nce-weight", "nan"), "w_nce must be a finite number, got nan"),
        (("--seed", "-1"), "seed must not be negative, got -1"),
        (("--seed", "99999999999999999999"), "seed must be at most 4294967295, got 99999999999999999999"),
        (("--batch-size", "0"), "--batch-size must be in 1..65536, got 0"),
        (("--steps", "0"), "steps must be at least 1, got 0"),
    ],
)
def test_train_numeric_options(tiny, tmp_path, capsys, extra, message):
    emb = tiny.parent / "tiny-emb"
    args = ("--dataset", str(tiny), "--embeddings", str(emb), "--out", str(tmp_path / "ad"), "--train-batch-size", "8")
    rc, _, err = _run(capsys, "train", *args, "--nested-dims", "8", "16", "--pairs", "test", *extra)
    assert rc == 2 and not (tmp_path / "ad" / "config.json").exists()
    _one_line_error(err, message)


@pytest.mark.parametrize("command", ["train", "ablate"])
@pytest.mark.parametrize(
    "extra, message",
    [
        (("--seed", str(2**64)), f"seed must be at most 4294967295, got {2**64}"),
        (("--nce-weight", "-1"), "w_nce must not be negative, got -1.0"),
    ],
)
def test_train_options_are_checked_before_any_work(tmp_path, capsys, command, extra, message):
    """The training options of ``qama train`` / ``qama ablate`` are refused before the dataset is read (before:
    after it was loaded and its titles embedded, minutes on a large corpus; here: no such dataset folder)."""
    out = ["--out", str(tmp_path / "ad")] if command == "train" else []
    rc, _, err = _run(capsys, command, "--dataset", str(tmp_path / "nowhere"), *out, *extra)
    assert rc == 2
    _one_line_error(err, message)


@pytest.mark.parametrize(
    "steps, message", [("0", "steps must be at least 1, got 0"), ("-3", "steps must not be negative")]
)
def test_report_steps_are_checked_before_any_work(tiny, tmp_path, capsys, steps, message):
    """``qama report --steps 0`` wrote the report folder (its config.json and the baselines, after embedding the
    dataset) and failed only at the fit."""
    emb = tiny.parent / "tiny-emb"
    args = ["report", "--dataset", str(tiny), "--embeddings", str(emb), "--steps", steps, "--out", str(tmp_path / "r")]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and not (tmp_path / "r").exists()
    _one_line_error(err, message)


def test_report_train_settings_are_type_checked(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[[datasets]]\npath = {json.dumps(str(tiny))}\n\n[train]\nthreads = 1000000\nsteps = 2.5\n")
    rc, _, err = _run(capsys, "report", "--config", str(cfg), "--out", str(tmp_path / "rep"))
    assert rc == 2 and not (tmp_path / "rep").exists()
    _one_line_error(err, "c.toml: ", "must be")


def test_milvus_nprobe_is_bounded(tmp_path, capsys):
    rc, _, err = _run(capsys, "search", "--uri", str(tmp_path / "x.db"), "--nprobe", "0", "text")
    assert rc == 2
    _one_line_error(err, "--nprobe must be in 1..65536, got 0")
