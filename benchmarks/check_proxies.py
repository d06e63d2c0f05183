"""Which label-free signal predicts whether a fitted adapter beats untrained codes, per plan and size?

Usage (from the repo root; the shared benchmark data lies beside the repo; one dataset and seed a run)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/check_proxies.py scifact 0
    OMP_WAIT_POLICY=PASSIVE python benchmarks/check_proxies.py cranfield 0

Fits the default adapter (titles as pseudo-queries, 20% held out as ``qama train`` holds them out),
then prints, for every plan and nested size, the real change of test nDCG@10 (adapter against
untrained codes with title-calibrated queries, points of retention) next to five estimates from the
held-out documents alone: the never-worse check's known-item nDCG@10 over the whole documents, the same
with each held-out document re-embedded without its title (the model is loaded: offline copy of the
default model), the known item's rank among the teacher's 50 nearest documents, the z-margin
(how many standard deviations the known item stands out of the Hamming distances to the corpus), and
a sentence held out of each held-out document finding the document re-embedded without it.
Each estimate is ``mean ± standard error`` of the per-query differences; results also go to
``/tmp/check_proxies_<dataset>_<seed>.json``.
"""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from train_targets import SHARED, load, ndcg  # noqa: E402

from qama.check import holdout_split, known_item_gains  # noqa: E402
from qama.codes import hamming_distances, make_plan  # noqa: E402
from qama.data import load_dataset  # noqa: E402
from qama.embeddings import DEFAULT_MODEL, embed_titles, encode, load_model  # noqa: E402
from qama.encoders import ThresholdEncoder  # noqa: E402
from qama.train import NCE_WEIGHT_TITLES, TrainConfig, fit  # noqa: E402


def zmargin(codes, qcodes, targets):
    d = hamming_distances(qcodes, codes).astype(np.float64)
    own = d[np.arange(len(d)), targets]
    mu, sd = d.mean(1), d.std(1) + 1e-9
    return (mu - own) / sd


def paired(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> tuple[float, float, float, float]:
    """``(mean of a - b, its standard error, mean of a, mean of b)``, each times ``scale``."""
    diff = a - b
    return (
        scale * diff.mean(),
        scale * diff.std(ddof=1) / np.sqrt(len(diff)),
        scale * a.mean(),
        scale * b.mean(),
    )


def hardrank(codes, qcodes, targets, cand):
    # rank of target among its hard candidate set cand (m, K) incl. target; gain 1/log2(1+rank)
    g = np.zeros(len(qcodes))
    for i in range(len(qcodes)):
        d = hamming_distances(qcodes[i : i + 1], codes[cand[i]])[0].astype(float)
        own = hamming_distances(qcodes[i : i + 1], codes[targets[i] : targets[i] + 1])[0, 0]
        rank = (d < own).sum() + ((d == own).sum() - 1) / 2 + 1
        g[i] = 1 / np.log2(1 + rank)
    return g


def held_out_sentences(ds, rows: np.ndarray, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """``(kept, sentences, rests)``: for each document of ``rows`` with at least three sentences of five
    words or more, one of them (not the first) drawn at random, and the document's text without it."""
    rng = np.random.default_rng(seed)
    kept, sentences, rests = [], [], []
    for i, r in enumerate(rows):
        title = ds.titles[r].strip()
        body = ds.doc_texts[r][len(title) :].strip()
        parts = re.split(r"(?<=[.!?])\s+", body)
        candidates = [j for j, p in enumerate(parts) if j > 0 and len(p.split()) >= 5]
        if len([p for p in parts if len(p.split()) >= 5]) < 3 or not candidates:
            continue
        j = candidates[rng.integers(len(candidates))]
        kept.append(i)
        sentences.append(parts[j])
        rests.append((title + " " + " ".join(parts[:j] + parts[j + 1 :])).strip())
    return np.array(kept, dtype=np.int64), sentences, rests


def main() -> None:
    name, seed = sys.argv[1], int(sys.argv[2])
    ev, corpus, queries = load(name)
    ds = load_dataset(SHARED / "datasets" / name, "test")
    rows, titles = embed_titles(ds, DEFAULT_MODEL, None, 64, False)
    docs = corpus[rows]
    torch.set_num_threads(2)
    t0 = time.time()
    ad = fit(corpus, TrainConfig(progress=False, seed=seed, w_nce=NCE_WEIGHT_TITLES), pairs=(titles, docs))
    print(f"fit {time.time() - t0:.0f}s", flush=True)
    fit_rows, held = holdout_split(len(titles), seed)
    hq, hrows = titles[held], rows[held]
    qsample = titles[fit_rows]
    # body-only embeddings of held-out docs
    bodies = [ds.doc_texts[r][len(ds.titles[r].strip()) :].strip() or ds.titles[r] for r in hrows]
    model = load_model(DEFAULT_MODEL)
    t0 = time.time()
    body = encode(model, bodies, batch_size=64, progress=False)
    print(f"embed {len(bodies)} bodies {time.time() - t0:.0f}s", flush=True)
    corpus_b = corpus.copy()
    corpus_b[hrows] = body
    # a sentence held out of each held-out document finds the rest of it (the untested lead)
    kept, sentences, rests = held_out_sentences(ds, hrows, seed)
    sq = encode(model, sentences, batch_size=64, progress=False)
    srows = hrows[kept]
    corpus_s = corpus.copy()
    corpus_s[srows] = encode(model, rests, batch_size=64, progress=False)
    print(f"{len(kept)} held-out sentences", flush=True)
    # hard candidates: teacher top-50 of each held query over corpus_b (+ target)
    S = hq @ corpus_b.T
    cand = np.argsort(-S, axis=1)[:, :50]
    base = ndcg(ev, queries @ corpus.T)
    out = []
    for dims in (384, 192, 96):
        for pname in ("2bit", "1.5bit", "1bit", "hybrid"):
            try:
                plan = make_plan(pname, dims)
            except ValueError:
                continue
            te_all = ThresholdEncoder.fit(corpus, plan, query_sample=titles)
            real_a = ndcg(
                ev,
                -hamming_distances(ad.encode(queries, plan, queries=True), ad.encode(corpus, plan)).astype(np.float32),
            )
            real_u = ndcg(
                ev, -hamming_distances(te_all.encode_queries(queries), te_all.encode(corpus)).astype(np.float32)
            )
            res = {"plan": pname, "dims": dims, "real": 100 * (real_a - real_u) / base}
            tu = ThresholdEncoder.fit(corpus, plan, query_sample=qsample)
            qa, qu = ad.encode(hq, plan, queries=True), tu.encode_queries(hq)
            for lab, C in (("full", corpus), ("body", corpus_b)):
                ca, cu = ad.encode(C, plan), tu.encode(C)
                res[f"ki_{lab}"] = paired(known_item_gains(ca, qa, hrows), known_item_gains(cu, qu, hrows), 100)
                res[f"z_{lab}"] = paired(zmargin(ca, qa, hrows), zmargin(cu, qu, hrows))[:2]
                if lab == "full":  # the held-out sentences against their documents without them
                    sa, su = ad.encode(corpus_s, plan), tu.encode(corpus_s)
                    res["ki_sentence"] = paired(
                        known_item_gains(sa, ad.encode(sq, plan, queries=True), srows),
                        known_item_gains(su, tu.encode_queries(sq), srows),
                        100,
                    )
                if lab == "body":
                    res["hard_body"] = paired(hardrank(ca, qa, hrows, cand), hardrank(cu, qu, hrows, cand), 100)
            out.append(res)
            print(json.dumps(res), flush=True)
    json.dump(out, open(f"/tmp/check_proxies_{name}_{seed}.json", "w"))


if __name__ == "__main__":
    main()
