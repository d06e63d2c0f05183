"""Property checks of #16, run by ``tests/test_property_bounds.py`` in a subprocess whose address space
is capped (``resource.setrlimit``): random field types and values through the ``config.json`` and
manifest readers and the command line's numeric options give a one-line error or a correct result,
never a traceback, never more memory than the cap (an unbounded allocation would raise MemoryError,
which counts as a failure).

Usage, from the repository root: ``python -m tests.bounded_properties WORKDIR [EXAMPLES]``; prints
``ok`` and exits 0 when every property holds.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qama.adapter import AdapterConfig, QamaAdapter
from qama.cli import main
from qama.index import MANIFEST, QamaIndex

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2, -1, 16, 384, 384.0, 2.5, 10**9, 10**12, 2**63, 1e308, -0.0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["hybrid", "2bit", "bogus", "../x", "/dev/zero", "16:2", "", "no", "true"])
)
JSON = st.recursive(
    SCALARS, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4), max_leaves=12
)


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", *argv])
    return rc, out.getvalue(), err.getvalue()


def _set(data: dict, path: str, value) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        data = data[int(k)] if isinstance(data, list) else data[k]
    if isinstance(data, list):
        data[int(keys[-1])] = value
    else:
        data[keys[-1]] = value


def _delete(data: dict, path: str) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        data = data[int(k)] if isinstance(data, list) else data[k]
    if isinstance(data, dict):
        data.pop(keys[-1], None)


def run(work: Path, examples: int) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = work / "q.npy"
    np.save(queries, emb[:3])

    # ------------------------------------------------------------------ config.json
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.init_linear(emb)
    good_ad = adapter.save(work / "ad-good")
    config = json.loads((good_ad / "config.json").read_text())
    config_fields = [
        "format_version",
        "adapter",
        "weights_sha256",
        *(f"adapter/{k}" for k in config["adapter"]),
        "adapter/nested_dims/0",
        "adapter/plans/0",
    ]

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(config_fields), value=JSON, delete=st.booleans())
    def config_reader(field, value, delete):
        ad = work / "ad"
        shutil.rmtree(ad, ignore_errors=True)
        shutil.copytree(good_ad, ad)
        data = json.loads(json.dumps(config))
        (_delete if delete else lambda d, p: _set(d, p, value))(data, field)
        (ad / "config.json").write_text(json.dumps(data))
        try:
            loaded = QamaAdapter.load(ad)
        except (ValueError, FileNotFoundError) as e:
            assert _one_line(str(e)) and ("config.json" in str(e) or "model.safetensors" in str(e)), str(e)
            return
        loaded.encode(emb[:2], "2bit")  # what loads, works

    config_reader()

    # ------------------------------------------------------------------ manifest.json
    from qama.codes import make_plan
    from qama.search import ThresholdEncoder

    good_ix = work / "ix-good"
    encoder = ThresholdEncoder.fit(emb, make_plan("hybrid", 16))
    index = QamaIndex.create(good_ix, encoder, emb[:30], [f"d{i}" for i in range(30)])
    index.add(emb[30:], [f"d{i}" for i in range(30, 40)])  # two segments
    manifest = json.loads((good_ix / MANIFEST).read_text())
    segment_files = [f"segments/{j}/files/{k}" for j, seg in enumerate(manifest["segments"]) for k in seg["files"]]
    manifest_fields = [
        *manifest,
        "plan/name",
        "plan/segments",
        "plan/segments/0",
        "plan/segments/0/0",
        "plan/segments/0/1",
        *(f"encoder/{k}" for k in manifest["encoder"]),
        *(f"files/{k}" for k in manifest["files"]),
        *(f"files/{k}/{f}" for k in manifest["files"] for f in ("name", "bytes", "sha256")),
        *(f"segments/{j}{f}" for j in range(len(manifest["segments"])) for f in ("", "/count", "/files")),
        *segment_files,
        *(f"{key}/{f}" for key in segment_files for f in ("name", "bytes", "sha256")),
    ]

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(manifest_fields), value=JSON, delete=st.booleans())
    def manifest_reader(field, value, delete):
        ix = work / "ix"
        shutil.rmtree(ix, ignore_errors=True)
        shutil.copytree(good_ix, ix)
        data = json.loads(json.dumps(manifest))
        (_delete if delete else lambda d, p: _set(d, p, value))(data, field)
        (ix / MANIFEST).write_text(json.dumps(data))
        try:
            index = QamaIndex.open(ix)
        except (ValueError, FileNotFoundError) as e:
            assert _one_line(str(e)) and str(ix) in str(e), str(e)
        else:
            scores, rows = index.search(emb[:2], 5)
            assert rows.shape == (2, 5) and ((rows >= -1) & (rows < 40)).all()
        rc, _, err = _cli("search", "--index", str(ix), "--queries", str(queries))
        assert rc in (0, 2) and (rc == 0 or _one_line(err)), err

    manifest_reader()

    # ------------------------------------------------------------------ numeric options of the CLI
    big = st.integers(min_value=-5, max_value=2**62) | st.sampled_from([0, 1, 39, 40, 41, 10**7, 10**9, 2**62])

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(k=big, oversample=big, rescore=st.sampled_from(["auto", "asymmetric"]))
    def search_options(k, oversample, rescore):
        args = ("--index", str(good_ix), "--queries", str(queries), "--json", "--rescore", rescore)
        rc, out, err = _cli("search", *args, "-k", str(k), "--oversample", str(oversample))
        if rc == 0:
            hits = [len(r["hits"]) for r in json.loads(out)]
            assert hits == [min(k, 40)] * 3, hits
        else:
            assert rc == 2 and _one_line(err) and err.startswith("qama: error: "), err

    search_options()

    from tests.conftest import write_beir  # noqa: E402  (tests is a package)

    docs = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text {i}"} for i in range(40)]
    data = write_beir(work / "ds", docs, [{"_id": "q0", "text": "q"}], [("q0", "d1", 1)])
    emb_dir = work / "emb"
    emb_dir.mkdir()
    np.save(emb_dir / "corpus.npy", emb)
    np.save(emb_dir / "queries.npy", emb[:1])

    @settings(
        max_examples=max(5, examples // 4), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        rescore=st.lists(big, min_size=1, max_size=2),
        dims=st.lists(big, min_size=1, max_size=2),
        relevance=big.map(lambda v: v * (-1) ** (v % 2)),
    )
    def eval_options(rescore, dims, relevance):
        qrels = data / "qrels" / "test.tsv"
        qrels.write_text(f"query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td2\t{relevance}\n")
        args = ("--dataset", str(data), "--embeddings", str(emb_dir), "--adapter", str(good_ad))
        rc, out, err = _cli("eval", *args, "--oversample", *map(str, rescore), "--dims", *map(str, dims))
        assert rc in (0, 2) and (rc == 0 or _one_line(err)), err

    eval_options()

    @settings(
        max_examples=max(5, examples // 4), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        plan=st.text(max_size=20) | st.sampled_from(["16:2", "8:2,8:1", "384:..", "1e9:2", "99999999999999999999:2"]),
        expansion=big,
        batch=big,
    )
    def index_and_train_options(plan, expansion, batch):
        out_ix = work / "ix-cli"
        common = ("--dataset", str(data), "--embeddings", str(emb_dir))
        rc, _, err = _cli("index", *common, f"--plan={plan}", "--out", str(out_ix), "--overwrite")
        assert rc in (0, 2) and (rc == 0 or _one_line(err)), err
        train = ("--steps", "1", "--pseudo-queries", "none", "--out", str(work / "ad-cli"), "--overwrite")
        rc, _, err = _cli(
            "train", *common, *train, "--expansion", str(expansion % 2**40), "--train-batch-size", str(batch)
        )
        assert rc in (0, 2) and (rc == 0 or _one_line(err)), err

    index_and_train_options()


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 60)
    print("ok")
