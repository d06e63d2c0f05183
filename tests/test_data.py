"""BEIR loading: good data, every bad input with its exact message, and safe downloads."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qama import data
from qama.data import DataError, download_beir, load_dataset
from tests.conftest import write_beir

DOCS = [
    {"_id": "d1", "title": "T1", "text": "one"},
    {"_id": "d2", "text": "two"},
    {"_id": 3, "title": "T3", "text": ""},
]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}, {"_id": "q3", "text": "third"}]


def make(tmp_path: Path, qrels=(("q1", "d1", 1), ("q2", "3", 2), ("q3", "d2", 0))) -> Path:
    return write_beir(tmp_path / "ds", DOCS, QUERIES, list(qrels))


def test_loads_in_file_order(tmp_path):
    ds = load_dataset(make(tmp_path))
    assert ds.doc_ids == ["d1", "d2", "3"]  # numeric ids become strings
    assert ds.doc_texts == ["T1 one", "two", "T3"]
    assert ds.query_ids == ["q1", "q2", "q3"]
    # q3 is judged only with relevance 0: it has no relevant document and is not evaluated.
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"3": 2}}
    assert ds.eval_query_rows == [0, 1]


def test_relevant_pairs_are_rows_of_judged_relevant_documents(tmp_path):
    qrels = (("q1", "d1", 1), ("q1", "3", 0), ("q3", "3", 2), ("q3", "d2", 1), ("q2", "d2", 0))
    # q1-3 has relevance 0 and q2 only a 0: neither is a training pair
    assert load_dataset(make(tmp_path, qrels)).relevant_pairs() == ([0, 2, 2], [0, 2, 1])


def test_bom_is_accepted(tmp_path):
    root = make(tmp_path)
    p = root / "queries.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert load_dataset(root).query_ids[0] == "q1"


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("corpus.jsonl", b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n', "corpus.jsonl:2: malformed JSON"),
        ("corpus.jsonl", b'{"_id": "d1"}\n{"text": "no id"}\n', "corpus.jsonl:2: missing '_id'"),
        ("corpus.jsonl", b'{"_id": "d1"}\n{"_id": "d1"}\n', "corpus.jsonl:2: duplicate _id 'd1'"),
        ("corpus.jsonl", b'{"_id": "d1", "text": 5}\n', "corpus.jsonl:1: 'text' must be a string"),
        ("corpus.jsonl", b'["d1"]\n', "corpus.jsonl:1: expected a JSON object, got list"),
        ("corpus.jsonl", b'{"_id": "d1", "text": "caf\xe9"}\n', "corpus.jsonl:1: invalid UTF-8"),
        ("corpus.jsonl", b"", "corpus.jsonl: no documents (the file is empty)"),
        ("queries.jsonl", b"\n\n", "queries.jsonl: no queries (the file is empty)"),
    ],
)
def test_bad_jsonl(tmp_path, file, content, message):
    root = make(tmp_path)
    (root / file).write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset(root)
    assert message in str(e.value)
    assert str(root / file) in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("q1\tnope\t1", "test.tsv:2: unknown document 'nope'"),
        ("qX\td1\t1", "test.tsv:2: unknown query 'qX'"),
        ("q1\td1", "test.tsv:2: expected 3 tab-separated columns, got 2"),
        ("q1\td1\thigh", "test.tsv:2: relevance 'high' is not an integer"),
    ],
)
def test_bad_qrels(tmp_path, line, message):
    root = make(tmp_path)
    (root / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\n{line}\n")
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_missing_split_lists_the_ones_found(tmp_path):
    with pytest.raises(DataError, match=r"split 'dev' does not exist \(found: test\)"):
        load_dataset(make(tmp_path), split="dev")


def test_no_relevant_judgment(tmp_path):
    with pytest.raises(DataError, match="no query has a relevant document"):
        load_dataset(make(tmp_path, qrels=[("q1", "d1", 0)]))


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")
    root = make(tmp_path)
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="queries.jsonl: file not found"):
        load_dataset(root)


# --- downloads (served from memory: the same code path a user with the internet takes) ---


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _serve(monkeypatch, payload: bytes) -> None:
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response(payload))


def _beir_members(name: str) -> dict[str, bytes]:
    return {
        f"{name}/corpus.jsonl": b"".join(json.dumps(d).encode() + b"\n" for d in DOCS),
        f"{name}/queries.jsonl": b"".join(json.dumps(q).encode() + b"\n" for q in QUERIES),
        f"{name}/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    }


def test_download_unpacks_and_loads_by_name(tmp_path, monkeypatch):
    _serve(monkeypatch, _zip(_beir_members("mini")))
    ds = load_dataset("mini", cache_dir=tmp_path)
    assert ds.doc_ids == ["d1", "d2", "3"] and ds.path == tmp_path / "datasets" / "mini"
    monkeypatch.setattr(data.urllib.request, "urlopen", None)  # the second load must not download
    assert load_dataset("mini", cache_dir=tmp_path).qrels == {"q1": {"d1": 1}}


def test_download_checks_md5(tmp_path, monkeypatch):
    payload = _zip(_beir_members("scifact"))
    _serve(monkeypatch, payload)
    with pytest.raises(DataError, match=f"md5 {hashlib.md5(payload).hexdigest()} does not match"):
        download_beir("scifact", tmp_path)
    assert not (tmp_path / "datasets" / "scifact").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "mini/../../evil.txt"])
def test_download_refuses_zip_slip(tmp_path, monkeypatch, member):
    _serve(monkeypatch, _zip({**_beir_members("mini"), member: b"x"}))
    with pytest.raises(DataError, match="refusing unsafe archive member"):
        download_beir("mini", tmp_path / "cache")
    assert not (tmp_path / "evil.txt").exists()


def test_download_never_removes_a_folder_of_the_users_in_the_cache(tmp_path, monkeypatch):
    _serve(monkeypatch, _zip(_beir_members("mini")))
    mine = tmp_path / "datasets" / "mini"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"^{mine}: exists but holds no corpus.jsonl; move it or choose another cache"):
        download_beir("mini", tmp_path)
    assert (mine / "notes.txt").read_text() == "mine"  # was removed whole and replaced by the download
    (mine / "notes.txt").unlink()  # an empty folder is filled
    assert download_beir("mini", tmp_path) == mine and (mine / "corpus.jsonl").is_file()


def test_two_downloads_of_one_dataset_at_once_both_get_it(tmp_path, monkeypatch):
    """Two processes downloading one dataset into one cache: the second to finish found the folder the
    first had moved into place and failed with `OSError: [Errno 39] Directory not empty` (its rmdir of what
    it took for an empty folder). It now uses the dataset the other one put there."""
    payload = _zip(_beir_members("mini"))
    served: list[int] = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout):
        served.append(1)
        if len(served) == 1:  # the other process downloads it while this one does
            download_beir("mini", tmp_path)
        return Response(payload)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    target = tmp_path / "datasets" / "mini"
    assert download_beir("mini", tmp_path) == target and len(served) == 2
    assert load_dataset("mini", cache_dir=tmp_path).doc_ids == ["d1", "d2", "3"]
    assert [p.name for p in target.parent.iterdir()] == ["mini"]  # no temporary folder left


def test_download_refuses_plain_http(tmp_path):
    with pytest.raises(DataError, match="refusing to download over plain HTTP"):
        download_beir("mini", tmp_path, url="http://example.org/mini.zip")


def test_download_offline_message(tmp_path, monkeypatch):
    def fail(url, timeout):
        raise data.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.urllib.request, "urlopen", fail)
    with pytest.raises(DataError, match="are you offline"):
        load_dataset("scifact", cache_dir=tmp_path)


def test_empty_query_text_is_refused(tmp_path):
    root = make(tmp_path)
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "  "}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2: empty query text"):
        load_dataset(root)


def test_empty_document_is_kept_with_a_warning(tmp_path, caplog):
    root = make(tmp_path)
    ds = load_dataset(root)  # document "3" has a title: not empty
    assert not caplog.records
    (root / "corpus.jsonl").write_text(
        '{"_id": "d1", "text": "one"}\n{"_id": "d2", "title": "", "text": ""}\n{"_id": "3", "text": "x"}\n'
    )
    ds = load_dataset(root)
    assert ds.doc_ids == ["d1", "d2", "3"]
    assert "corpus.jsonl:2: empty title and text (1 such documents, kept)" in caplog.text


def test_a_100_mb_line_is_refused(tmp_path):
    root = make(tmp_path)
    with (root / "corpus.jsonl").open("wb") as f:
        f.write(b'{"_id": "d1", "text": "one"}\n{"_id": "big", "text": "' + b"a" * 100 * 2**20 + b'"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: line longer than 16 MiB"):
        load_dataset(root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300), file=st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"]))
def test_random_bytes_give_a_data_error_or_a_dataset(tmp_path, blob, file):
    root = make(tmp_path)
    (root / file).write_bytes(blob)
    try:
        ds = load_dataset(root)
    except DataError as e:
        assert str(root / file) in str(e) or "qrels" in str(e)
    else:
        assert ds.qrels and set(ds.qrels) <= set(ds.query_ids)
