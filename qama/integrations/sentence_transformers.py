"""A trained adapter as the last module of a sentence-transformers model.

:class:`QamaModule` wraps a :class:`~qama.adapter.QamaAdapter`. Appended to a model, it turns the
model's pooled embedding ``x`` (L2-normalised first, as ``encode(normalize_embeddings=True)``
does) into the adapter's embedding ``z`` or into packed qama codes. Saved inside the model folder,
its subfolder (``<i>_QamaModule``) *is* an adapter folder (``config.json`` + ``model.safetensors``,
loadable with :meth:`QamaAdapter.load`) plus ``qama_module.json`` with the module's settings;
nothing is pickled. Usage::

    from sentence_transformers import SentenceTransformer
    from qama.integrations.sentence_transformers import encode, save_model

    save_model(base_model, adapter, "minilm-qama")             # base model + adapter as last module
    model = SentenceTransformer("minilm-qama", trust_remote_code=True)
    z = model.encode(texts)                                    # (n, 384) float32 adapter embeddings
    z96 = encode(model, texts, dim=96)                         # (n, 96) the nested prefix
    codes = encode(model, texts, precision="hybrid", dim=384)  # (n, 78) uint8 packed codes
    qcodes = encode(model, queries, precision="hybrid", queries=True)  # queries: query thresholds

``codes`` equals ``adapter.encode(base_model.encode(texts, normalize_embeddings=True), "hybrid",
384)``, and ``qcodes`` the same with ``queries=True`` (the adapter's query thresholds, as every qama
search codes queries). ``precision`` is ``"float32"`` (float embeddings) or a plan: a built-in name
(``"2bit"``, ``"1.5bit"``, ``"1bit"``, ``"0.5bit"``, ``"hybrid"``), a spec or a
:class:`~qama.codes.Plan` (see :func:`qama.codes.make_plan`). The same settings reach
``model.encode`` directly as ``qama_precision=``, ``qama_dim=`` and ``qama_queries=``.

``trust_remote_code=True`` is what sentence-transformers >= 6 asks for before it imports a module
class from outside its own package (here ``qama.integrations.sentence_transformers.QamaModule``,
from the installed qama; nothing is read from the model folder but data).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qama.adapter import QamaAdapter
from qama.codes import Plan
from qama.embeddings import check_texts

try:  # the base class of modules: sentence-transformers >= 6, then 5
    from sentence_transformers.base.modules import Module as _Module
except ImportError:  # pragma: no cover - older sentence-transformers
    try:
        from sentence_transformers.models import Module as _Module  # type: ignore[no-redef]
    except ImportError:
        _Module = torch.nn.Module  # type: ignore[misc, assignment]

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["FLOAT", "QamaModule", "attach", "save_model", "find_module", "encode"]

logger = logging.getLogger(__name__)

FLOAT = "float32"  # the precision of float output; any other precision is a plan
MODULE_CONFIG_NAME = "qama_module.json"


class QamaModule(_Module):
    """The adapter as a sentence-transformers module: pooled embedding -> adapter output.

    ``features["sentence_embedding"]`` (the ``(B, d)`` pooled embedding of the modules before it)
    becomes the ``(B, dim)`` float32 adapter embedding, or the ``(B, code_size)`` uint8 packed codes
    of a plan when ``qama_precision`` names one.

    Args:
        adapter: the trained adapter; its ``dim`` must be the model's embedding dimension.
        precision: default output: ``"float32"`` or a plan (name or spec) for codes.
        dim: default nested size (``None``: the adapter's full dimension).
        normalize: L2-normalise the pooled embedding before the adapter (adapters are trained on
            normalised embeddings; leave it on).
    """

    config_file_name = MODULE_CONFIG_NAME
    config_keys = ["precision", "dim", "normalize"]
    forward_kwargs = {"qama_precision", "qama_dim", "qama_queries"}

    def __init__(
        self, adapter: QamaAdapter, precision: str = FLOAT, dim: int | None = None, normalize: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(adapter, QamaAdapter):
            raise TypeError(f"adapter must be a QamaAdapter, got {type(adapter).__name__}")
        if not isinstance(precision, str):
            raise TypeError(f"a saved default precision must be a string (a plan name or spec), got {precision!r}")
        self.adapter = adapter.eval()
        self.precision = precision
        self.dim = adapter._check_dim(dim) if dim is not None else None
        self.normalize = bool(normalize)
        if precision != FLOAT:
            adapter.plan(precision, dim)  # fail now, not at the first encode
        self._cpu_copy: QamaAdapter | None = None

    def forward(
        self,
        features: dict[str, Any],
        qama_precision: str | Plan | None = None,
        qama_dim: int | None = None,
        qama_queries: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Replace ``features["sentence_embedding"]`` by the adapter's floats or codes.

        ``qama_precision`` / ``qama_dim`` override the module's defaults for one ``encode`` call;
        ``qama_queries=True`` codes the texts as queries, by the adapter's query thresholds.
        """
        x = features["sentence_embedding"]  # (B, d)
        if x.shape[-1] != self.adapter.dim:
            raise ValueError(
                f"the model's embeddings have dimension {x.shape[-1]}, but the adapter was trained for "
                f"{self.adapter.dim}-dimensional embeddings"
            )
        if self.normalize:
            x = torch.nn.functional.normalize(x, p=2, dim=1)
        precision = self.precision if qama_precision is None else qama_precision
        dim = self.dim if qama_dim is None else qama_dim
        if isinstance(precision, str) and precision == FLOAT:
            dim = self.adapter._check_dim(dim)
            z = self.adapter(x.to(self.adapter.skip.weight.dtype))  # (B, d)
            features["sentence_embedding"] = z[:, :dim]
        else:
            # Codes through the adapter's own numpy path (on the CPU), so they equal adapter.encode's.
            codes = self._adapter_on_cpu().encode(
                x.detach().float().cpu().numpy(), precision, dim, queries=bool(qama_queries)
            )
            features["sentence_embedding"] = torch.from_numpy(codes).to(x.device)  # (B, code_size) uint8
        return features

    def _adapter_on_cpu(self) -> QamaAdapter:
        """The adapter itself when it lies on the CPU, else a CPU copy (made once)."""
        if self.adapter.skip.weight.device.type == "cpu":
            return self.adapter
        if self._cpu_copy is None:
            self._cpu_copy = copy.deepcopy(self.adapter).cpu().eval()
        return self._cpu_copy

    def get_embedding_dimension(self) -> int:
        """Dimension of the default float output."""
        return self.dim or self.adapter.dim

    def get_sentence_embedding_dimension(self) -> int:  # sentence-transformers < 6
        return self.get_embedding_dimension()

    def get_config_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "dim": self.dim, "normalize": self.normalize}

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the adapter folder (``config.json`` + ``model.safetensors``) and ``qama_module.json``."""
        if not safe_serialization:
            logger.info("qama modules are always saved as safetensors")
        self.adapter.save(output_path)
        Path(output_path, MODULE_CONFIG_NAME).write_text(json.dumps(self.get_config_dict(), indent=2) + "\n")

    @classmethod
    def load(  # type: ignore[override]  # the keyword arguments sentence-transformers passes
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> QamaModule:
        """Read the module from a model folder (or hub repository) and its ``subfolder``."""
        local = Path(model_name_or_path, subfolder)
        if not local.is_dir() and hasattr(cls, "load_dir_path"):
            local = Path(
                cls.load_dir_path(  # type: ignore[arg-type]
                    model_name_or_path,
                    subfolder=subfolder,
                    token=token,
                    cache_folder=cache_folder,
                    revision=revision,
                    local_files_only=local_files_only,
                )
            )
        settings_path = local / MODULE_CONFIG_NAME
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        unknown = set(settings) - set(cls.config_keys)
        if unknown:
            raise ValueError(f"{settings_path}: unknown settings {sorted(unknown)}")
        return cls(QamaAdapter.load(local), **settings)


def attach(base_model: SentenceTransformer, adapter: QamaAdapter, **settings: Any) -> SentenceTransformer:
    """A copy of ``base_model`` with ``QamaModule(adapter, **settings)`` as its last module."""
    if find_module(base_model, required=False) is not None:
        raise ValueError("the model already ends with a QamaModule")
    d = _embedding_dimension(base_model)
    if d is not None and d != adapter.dim:
        raise ValueError(f"the model's embeddings have dimension {d}, but the adapter's dim is {adapter.dim}")
    model = copy.deepcopy(base_model)
    model.append(QamaModule(adapter, **settings))
    return model


def save_model(
    base_model: SentenceTransformer,
    adapter: QamaAdapter,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    **settings: Any,
) -> SentenceTransformer:
    """Save ``base_model`` with the adapter as its last module into the folder ``path``, which must be
    new or empty unless ``overwrite=True`` (then the model's files are written over what is there).

    Returns the model that was saved (see :func:`attach`); load it again with
    ``SentenceTransformer(path, trust_remote_code=True)``.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder (a model is saved as a folder)")
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: the folder is not empty (overwrite=True writes the model over it)")
    model = attach(base_model, adapter, **settings)
    model.save(str(path))
    logger.info("saved %s with a qama adapter (dim %d) as its last module", path, adapter.dim)
    return model


def find_module(model: SentenceTransformer, required: bool = True) -> QamaModule | None:
    """The model's last module if it is a :class:`QamaModule` (``None`` or ``ValueError`` otherwise)."""
    modules = list(model.children())
    for i, module in enumerate(modules):
        if isinstance(module, QamaModule) and i != len(modules) - 1:
            raise ValueError(f"a QamaModule must be the model's last module; it is module {i} of {len(modules)}")
    if modules and isinstance(modules[-1], QamaModule):
        return modules[-1]
    if required:
        raise ValueError("the model has no QamaModule: save it with qama.integrations.sentence_transformers.save_model")
    return None


def encode(
    model: SentenceTransformer,
    texts: list[str],
    *,
    precision: str | Plan = FLOAT,
    dim: int | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    prompt_name: str | None = None,
    queries: bool = False,
) -> np.ndarray:
    """Encode ``texts`` with a model whose last module is a :class:`QamaModule`.

    ``precision="float32"`` gives ``(n, dim)`` float32 adapter embeddings (the nested prefix);
    a plan gives ``(n, plan.code_size)`` uint8 packed codes of the first ``dim`` dimensions, like
    ``precision=`` of ``SentenceTransformer.encode``. ``dim=None``: the adapter's full dimension
    (or the plan's own, for a :class:`~qama.codes.Plan`). ``prompt_name`` picks one of the model's
    prompts, as in ``SentenceTransformer.encode``. ``queries=True`` codes the texts as queries, by
    the adapter's query thresholds (see :meth:`~qama.adapter.QamaAdapter.calibrate_queries`), as
    every qama search codes queries; documents are coded with ``queries=False``. ``texts`` is a list
    of strings (:func:`qama.embeddings.check_texts`).
    """
    texts = check_texts(texts)  # one string would be coded character by character
    module = find_module(model)
    assert module is not None  # required=True raises instead
    if model.truncate_dim is not None:
        raise ValueError(f"the model truncates its output to {model.truncate_dim}: use dim= instead of truncate_dim")
    if isinstance(precision, str) and precision == FLOAT:
        if queries:
            raise ValueError("queries= codes queries; float32 output has no query side (give a plan as precision=)")
        dim = module.adapter._check_dim(dim)
    else:
        plan = module.adapter.plan(precision, dim)  # validate before encoding anything
        precision, dim = plan, plan.dim
    out = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        prompt_name=prompt_name,
        convert_to_numpy=True,
        normalize_embeddings=False,
        qama_precision=precision,
        qama_dim=dim,
        qama_queries=bool(queries),
    )
    if len(texts) == 0:
        width = dim if isinstance(precision, str) else precision.code_size
        return np.zeros((0, width), dtype=np.float32 if isinstance(precision, str) else np.uint8)
    return np.ascontiguousarray(out)


def _embedding_dimension(model: SentenceTransformer) -> int | None:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(type(model), name):
            return getattr(model, name)()
    return None
