"""Untrusted adapter files: every malformed folder is refused with a clear error, nothing unpickled;
an interrupted save leaves a loadable adapter."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qama.adapter import AdapterConfig, QamaAdapter


@pytest.fixture
def saved(tmp_path):
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.init_linear(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    adapter.save(tmp_path / "ad")
    return tmp_path / "ad", adapter


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_round_trip_keeps_the_weights(saved):
    path, adapter = saved
    again = QamaAdapter.load(path)
    for k, v in adapter.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


def test_config_missing_a_field(saved):
    path, _ = saved
    _edit_config(path, lambda c: c["adapter"].pop("dim"))
    with pytest.raises(ValueError, match=r"config.json: missing field 'adapter.dim'"):
        QamaAdapter.load(path)
    _edit_config(path, lambda c: c.pop("adapter"))
    with pytest.raises(ValueError, match=r"config.json: missing field 'adapter'"):
        QamaAdapter.load(path)


def test_config_not_json(saved):
    path, _ = saved
    (path / "config.json").write_bytes(b"\x80not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        QamaAdapter.load(path)


def test_tensors_of_the_wrong_shape(saved):
    path, _ = saved
    _edit_config(path, lambda c: c["adapter"].update(expansion=1))  # the weights (and their SHA-256) unchanged
    with pytest.raises(
        ValueError, match=r"model.safetensors: tensors do not fit the adapter of config.json: .*expected"
    ):
        QamaAdapter.load(path)


def test_a_pickle_in_place_of_the_weights_is_refused(saved, tmp_path):
    path, _ = saved
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="weights are not the ones config.json records"):
        QamaAdapter.load(path)
    blob = (path / "model.safetensors").read_bytes()
    _edit_config(path, lambda c: c.update(weights_sha256=hashlib.sha256(blob).hexdigest()))
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file"):
        QamaAdapter.load(path)
    assert not marker.exists()  # nothing was executed


def test_interrupted_save_leaves_the_previous_version(saved, monkeypatch):
    path, adapter = saved
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the new weights, before the new config

    monkeypatch.setattr("qama.adapter.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        adapter.save(path)
    monkeypatch.undo()
    loaded = QamaAdapter.load(path)  # the previous complete version
    for k, v in before.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    adapter.save(path)  # a later save completes and removes the kept weights
    assert not (path / "model.safetensors.prev").exists()
    loaded = QamaAdapter.load(path)
    for k, v in adapter.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400))
def test_random_bytes_as_npy_give_an_embedding_error(tiny, blob):
    from qama.data import load_dataset
    from qama.embeddings import EmbeddingError, load_embeddings

    (tiny.parent / "tiny-emb" / "corpus.npy").write_bytes(blob)
    with pytest.raises(EmbeddingError, match="corpus.npy"):
        load_embeddings(tiny.parent / "tiny-emb", load_dataset(tiny))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    from qama.codes import make_plan
    from qama.index import QamaIndex
    from qama.search import ThresholdEncoder

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((200, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("idx") / "index"
    enc = ThresholdEncoder.fit(emb, make_plan("hybrid", 16))
    ids, titles = [f"d{i}" for i in range(200)], [f"t{i}" for i in range(200)]
    index = QamaIndex.create(path, enc, emb[:150], ids[:150], titles[:150], keep_vectors=True)
    index.add(emb[150:], ids[150:], titles[150:])  # two segments: any file of either
    return path


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_corruption_of_an_index_file_is_an_error(index_dir, tmp_path_factory, data):
    """Flip, cut or extend any file of an index: opening it raises, it never answers wrongly."""
    import shutil

    from qama.index import IndexCorruptError, QamaIndex

    path = tmp_path_factory.mktemp("c") / "index"
    shutil.copytree(index_dir, path)
    files = sorted(p for p in path.iterdir() if p.name not in ("manifest.json", "writer.lock"))
    victim = data.draw(st.sampled_from(files))
    raw = bytearray(victim.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    victim.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError):
        QamaIndex.open(path)


def test_reading_a_small_json_file_allocates_about_its_size(tmp_path):
    import tracemalloc

    from qama._validate import read_json_file

    path = tmp_path / "small.json"
    path.write_text(json.dumps({"a": list(range(100))}))
    tracemalloc.start()
    try:
        assert read_json_file(path)["a"][-1] == 99
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # a read of the size limit (64 MiB) allocated that much for a 400-byte file


def test_a_json_file_that_grows_while_read_is_read_whole_or_refused(tmp_path, monkeypatch):
    from qama import _validate

    path = tmp_path / "growing.json"
    path.write_text(json.dumps({"pad": "x" * 100}))
    monkeypatch.setattr(_validate, "check_regular_file", lambda *a: 10)  # the size seen before it grew
    assert _validate.read_json_file(path) == {"pad": "x" * 100}
    with pytest.raises(ValueError) as e:
        _validate.read_json_file(path, "manifest", max_bytes=50)
    assert str(e.value) == f"{path}: more than the 0 MiB a manifest may have"


def test_fitting_thresholds_and_checking_new_documents_read_the_corpus_a_block_at_a_time(tmp_path):
    """Untrained thresholds (``qama index`` without an adapter) took 4.3 times the memory of the float32
    corpus (levels in int64 and masked values in float64 of all rows at once, a copy per quantile), and
    the NaN check of ``QamaIndex.create``/``add`` a bool of every value of a memory map that the rest
    streams; now a block of columns / rows at a time. The thresholds are bit for bit the same."""
    import tracemalloc

    from qama.codes import make_plan
    from qama.index import _check_new_docs
    from qama.search import ThresholdEncoder

    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(20000, 512))
    x[:] = rng.standard_normal(x.shape, dtype=np.float32)
    x[7, 3] = x[19999, 0] = np.nan
    ids = [f"d{i}" for i in range(len(x))]
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            _check_new_docs(x, ids, None, 512)
        check_peak = tracemalloc.get_traced_memory()[1]
        x[7, 3] = x[19999, 0] = 0.5
        tracemalloc.reset_peak()
        encoder = ThresholdEncoder.fit(x, make_plan("2bit", 512))
        fit_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == "embeddings: row 7 has NaN or inf values (2 rows)"
    assert check_peak < x.nbytes / 8  # a bool of every value is x.nbytes / 4
    assert fit_peak < 1.6 * x.nbytes  # the values to quantise (one copy), and a block of columns at a time
    values = np.asarray(x)
    thresholds = np.quantile(values, [0.25, 0.5, 0.75], axis=0).T.astype(np.float32)
    np.testing.assert_array_equal(encoder.quantizer.thresholds, thresholds)
    levels = (values[:, :, None] > thresholds[None]).sum(axis=2)
    means = [np.where(levels == lv, values, 0.0).sum(axis=0) / (levels == lv).sum(axis=0) for lv in range(4)]
    np.testing.assert_array_equal(encoder.quantizer.centroids, np.stack(means, axis=1).astype(np.float32))


def test_a_float64_corpus_is_converted_a_block_at_a_time_by_fit_encoder_and_the_index_backend(tmp_path, monkeypatch):
    """``fit_encoder`` and ``FaissBackend.add`` took a float32 copy of a whole float64 (or non-contiguous)
    corpus before reading it a block at a time; with ``keep_vectors``, ``QamaIndex.create`` took another to
    write the vectors. Now the corpus is converted a block of rows at a time everywhere: the peak of a
    float64 corpus exceeds that of the same corpus in float32 by about a block, not by the float32 corpus.
    Codes, thresholds and stored vectors are bit for bit those of the float32 corpus."""
    import tracemalloc

    import qama.codes
    import qama.index
    import qama.quantize
    from qama.backends import FaissBackend
    from qama.encoders import fit_encoder

    small = ((qama.quantize, "BLOCK_BYTES"), (qama.codes, "PACK_BLOCK_BYTES"), (qama.index, "WRITE_CHUNK_BYTES"))
    for module, name in small:
        monkeypatch.setattr(module, name, 1 << 20)  # blocks small beside the corpus: the test stays small
    monkeypatch.setattr(qama.index, "ENCODE_CHUNK", 2048)
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((40000, 96), dtype=np.float32)
    x64 = x32.astype(np.float64)
    ids = [f"d{i}" for i in range(len(x32))]

    def peak(fn):
        tracemalloc.start()
        try:
            out = fn()
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()

    fit32, enc32 = peak(lambda: fit_encoder(x32, "hybrid"))
    fit64, enc64 = peak(lambda: fit_encoder(x64, "hybrid"))
    assert enc64.checksum == enc32.checksum  # thresholds and centroids bit for bit
    assert fit64 - fit32 < x32.nbytes / 4  # before: the float32 copy of the corpus, x32.nbytes more
    add = {}
    for name, x in (("f32", x32), ("f64", x64), ("fortran", np.asfortranarray(x64))):
        backend = FaissBackend(tmp_path / name, encoder=enc32, create=True, keep_vectors=True)
        add[name], _ = peak(lambda backend=backend, x=x: backend.add(x, ids))
    assert add["f64"] - add["f32"] < x32.nbytes / 4  # before: x32.nbytes more (twice with keep_vectors)
    assert add["fortran"] - add["f32"] < x32.nbytes / 4
    ref = qama.index.QamaIndex.open(tmp_path / "f32")
    for name in ("f64", "fortran"):
        index = qama.index.QamaIndex.open(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(index.codes), np.asarray(ref.codes))
        np.testing.assert_array_equal(np.asarray(index.vectors), x32)
