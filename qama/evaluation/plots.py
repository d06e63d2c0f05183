"""The plots of ``qama report`` (matplotlib, the ``report`` extra): retention against bits per
dimension and against dimensions, and the storage-quality frontier with the peers on it.

    paths = plot_all(main_table(rows_by_dataset), Path("report/"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qama.evaluation.peers import PEER_FORMATS, is_peer

__all__ = ["plot_all", "plot_peers", "config_rescore"]


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (the Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'qama[report]'") from e
    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG file and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def config_rescore(main: list[dict]) -> list[int]:
    """The rescoring factors present in the main table (1 when there are none)."""
    return sorted({e["rescore"] for e in main if e["rescore"]}) or [1]


def plot_all(main: list[dict], out: Path) -> list[Path]:
    """Retention vs bits/dim, retention vs dims, and the storage–quality frontier, as PNG files."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    sym = [e for e in main if e["rescore"] is None]
    qama = [e for e in sym if e["format"] == "qama" and e["plan"] is not None]
    thr = [e for e in sym if e["format"] == "threshold"]
    floats = [e for e in sym if e["plan"] is None and e["format"] in ("fp32", "fp16", "int8")]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dims in sorted({e["dims"] for e in qama}, reverse=True):
        pts = sorted((e["bits_per_dim"], 100 * e["mean_retention"]) for e in qama if e["dims"] == dims)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"QAMA {dims} dims")
    for dims in sorted({e["dims"] for e in thr}, reverse=True):
        pts = sorted((e["bits_per_dim"], 100 * e["mean_retention"]) for e in thr if e["dims"] == dims)
        ax.scatter(*zip(*pts, strict=True), marker="x", label=f"threshold (untrained) {dims} dims")
    ax.set(
        xlabel="stored bits per dimension",
        ylabel="nDCG@10 retention vs FP32 (%)",
        title="Retention vs bits per dimension (symmetric Hamming)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, out / "retention_vs_bits.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fmt, plan, label in [("fp32", None, "FP32 truncated"), ("qama", None, "QAMA adapter FP32")] + [
        ("qama", p, f"QAMA {p}") for p in sorted({e["plan"] for e in qama})
    ]:
        pts = sorted((e["dims"], 100 * e["mean_retention"]) for e in sym if e["format"] == fmt and e["plan"] == plan)
        if pts:
            line = ax.plot(*zip(*pts, strict=True), marker="o", label=label, linestyle="--" if fmt == "fp32" else "-")
            rescored = sorted(
                (e["dims"], 100 * e["mean_retention"])
                for e in main
                if e["format"] == fmt
                and e["plan"] == plan
                and plan is not None
                and e["rescore"]
                and e["rescore"] == max(config_rescore(main))
            )
            if rescored:  # the same plan rescored: same colour, dotted
                ax.plot(
                    *zip(*rescored, strict=True),
                    marker="x",
                    linestyle=":",
                    color=line[0].get_color(),
                    label=f"{label} + rescore {max(config_rescore(main))}x",
                )
    ax.set(xlabel="dimensions (nested prefix)", ylabel="nDCG@10 retention vs FP32 (%)", title="Retention vs dimensions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(plt, fig, out / "retention_vs_dims.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {
        "float (fp32/fp16/int8)": floats,
        "threshold (untrained)": thr,
        "QAMA": qama,
        "QAMA + rescoring": [e for e in main if e["format"] == "qama" and e["rescore"] and e["plan"]],
    }
    for (label, entries), marker in zip(groups.items(), "s^ox", strict=True):
        if entries:
            ax.scatter(
                [e["bytes_per_vector"] for e in entries],
                [100 * e["mean_retention"] for e in entries],
                marker=marker,
                label=label,
                alpha=0.8,
            )
    plot_peers(ax, main)
    ax.set_xscale("log")
    ax.set(
        xlabel="bytes per vector (log scale)", ylabel="nDCG@10 retention vs FP32 (%)", title="Storage–quality frontier"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, out / "storage_quality.png"))
    return paths


def plot_peers(ax, main: list[dict]) -> None:
    """Peers on the storage-quality plot: one line per peer family (and query side), bytes vs retention."""
    markers = {"faiss-pq": "D", "faiss-rabitq": "P", "st-ubinary": "v", "st-int8": "*"}
    series: dict[tuple, list[tuple[float, float]]] = {}
    for e in main:
        if is_peer(e["format"]) and e["mean_retention"] == e["mean_retention"]:
            series.setdefault((e["format"], e["rescore"]), []).append(
                (e["bytes_per_vector"], 100 * e["mean_retention"])
            )
    colours = iter(["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:gray", "tab:cyan", "black"])
    for (fmt, rescore), pts in series.items():  # colours apart from those of qama's own series
        label = PEER_FORMATS[fmt] + (f" + rescore {rescore}x" if rescore else "")
        ax.plot(
            *zip(*sorted(pts), strict=True),
            marker=markers[fmt],
            linestyle="--",
            linewidth=1,
            color=next(colours, None),
            label=label,
        )
