"""What a model directory says about itself: config.json plus the sentence-transformers files.

Everything the engine needs to know before reading a single weight lives in `ModelSpec`, so a
wrong or unsupported model fails here with one clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tinyembed.common.errors import ModelLoadError

# config.json `model_type` -> the encoder family whose forward pass we run (decoder families:
# tinyembed.engine.families).
ARCHITECTURES = {
    "bert": "bert",
    "xlm-roberta": "xlmr",
    "roberta": "xlmr",
    "camembert": "xlmr",
}
POOLING_MODES = ("cls", "mean", "last")


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    family: str  # "bert" | "xlmr" | a decoder family ("qwen3", "qwen2", "mistral", "gemma2")
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    max_seq_length: int  # tokens per input after truncation, specials included
    pooling: str  # "cls" | "mean" | "last"
    prompts: dict[str, str] = field(default_factory=dict)  # name -> text, as config_sentence_transformers.json
    input_type_prompts: dict[str, str] = field(default_factory=dict)  # "query"/"document" -> a prompt name
    default_prompt_name: str | None = None  # applied when a request names no prompt
    arch: object = None  # a decoder family's DecoderArch; None for encoders
    special_template: str | None = None  # specials to enforce ("$A <|endoftext|>"); None: tokenizer.json's

    @property
    def is_decoder(self) -> bool:
        return self.arch is not None

    @property
    def head_dim(self) -> int:
        return self.arch.head_dim if self.arch is not None else self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        # XLM-R numbers positions from padding_idx + 1; BERT from 0.
        return self.pad_token_id + 1 if self.family == "xlmr" else 0


def read_config(path: Path) -> dict:
    """A model directory's config.json (every model has one)."""
    return _read_json(path / "config.json", required=True)


def encoder_spec(path: Path, config: dict, decoders=()) -> ModelSpec:
    """The spec of a BERT / XLM-R encoder; `decoders` (the decoder model_types families/ runs)
    only completes the message for an unsupported model_type. Decoders: families.read_spec."""
    model_type = config.get("model_type", "")
    family = ARCHITECTURES.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"{path}: unsupported architecture model_type={model_type!r} "
            f"(architectures={config.get('architectures')}); tinyembed runs "
            f"{', '.join(sorted(ARCHITECTURES))} encoders and {', '.join(sorted(decoders))} decoders"
        )
    act = config.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
        raise ModelLoadError(f"{path}: unsupported hidden_act={act!r}; only exact GELU is implemented")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{path}: only absolute position embeddings are supported")
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        spec_fields = dict(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            intermediate_size=int(config["intermediate_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(config.get("pad_token_id") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}/config.json: missing or invalid field {exc}") from None
    if hidden % heads:
        raise ModelLoadError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    offset = spec_fields["pad_token_id"] + 1 if family == "xlmr" else 0
    position_limit = spec_fields["max_position_embeddings"] - offset
    return ModelSpec(
        path=path,
        family=family,
        max_seq_length=_max_seq_length(path, position_limit),
        pooling=_pooling(path, family),
        **_prompt_fields(path),
        **spec_fields,
    )


def decoder_spec(path: Path, config: dict, family) -> ModelSpec:
    """The spec of a decoder, read by its family module (families/<name>.py: read_arch, special_template)."""
    arch = family.read_arch(config, path)
    return ModelSpec(
        path=path,
        family=config["model_type"],  # "llama" runs in mistral.py but is reported as llama
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        num_layers=arch.num_layers,
        num_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        type_vocab_size=0,
        layer_norm_eps=arch.rms_norm_eps,
        pad_token_id=0,
        max_seq_length=_max_seq_length(path, arch.max_position_embeddings),
        pooling=_pooling(path, config["model_type"], default="last"),
        arch=arch,
        special_template=family.special_template(config, path),
        **_prompt_fields(path),
    )


def _read_json(file: Path, required: bool = False, default=None):
    """A JSON file's content; `default` ({} unless given) when it is absent and optional."""
    if not file.is_file():
        if required:
            raise ModelLoadError(f"{file}: missing (every model directory needs config.json)")
        return {} if default is None else default
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, type({} if default is None else default)):
        raise ModelLoadError(f"{file}: unexpected JSON structure ({type(data).__name__})")
    return data


def _modules(path: Path) -> list[dict]:
    """modules.json: the sentence-transformers pipeline (Transformer, Pooling, Normalize ...)."""
    return [m for m in _read_json(path / "modules.json", default=[]) if isinstance(m, dict)]


def _max_seq_length(path: Path, position_limit: int) -> int:
    st = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    return min(int(st), position_limit) if st else position_limit


def _pooling_dir(path: Path) -> Path | None:
    for module in _modules(path):
        if str(module.get("type", "")).endswith("Pooling"):
            return path / module.get("path", "1_Pooling")
    fallback = path / "1_Pooling"
    return fallback if fallback.is_dir() else None


def _pooling(path: Path, family: str, default: str = "cls") -> str:
    pooling_dir = _pooling_dir(path)
    conf = _read_json(pooling_dir / "config.json") if pooling_dir else {}
    if conf.get("pooling_mode_cls_token"):
        return "cls"
    if conf.get("pooling_mode_lasttoken"):
        return "last"
    if conf.get("pooling_mode_mean_tokens"):
        return "mean"
    if conf:
        modes = [k for k, v in conf.items() if k.startswith("pooling_mode") and v]
        raise ModelLoadError(f"{pooling_dir}/config.json: unsupported pooling {modes}; supported: {POOLING_MODES}")
    # No sentence-transformers files: CLS is what bge-style encoders use; decoders pool the last token.
    return default


# input_type -> prompt names that serve it, in order of preference
INPUT_TYPE_PROMPTS = {
    "query": ("query", "search_query", "web_search_query"),
    "document": ("document", "passage", "doc", "search_document"),
}


def _prompt_fields(path: Path) -> dict:
    """Named prompts as config_sentence_transformers.json has them, which of them `input_type`
    query/document selects, and the default. A model with one `*_query` prompt but no `query`
    (e5-mistral: web_search_query, sts_query ...) gets its preferred one for input_type query."""
    conf = _read_json(path / "config_sentence_transformers.json")
    prompts = {str(k): v for k, v in (conf.get("prompts") or {}).items() if isinstance(v, str)}
    by_type = {}
    for input_type, names in INPUT_TYPE_PROMPTS.items():
        suffixed = [n for n in prompts if n.endswith("_" + input_type)]
        found = [n for n in names if n in prompts] or (suffixed if len(suffixed) == 1 else [])
        if found:
            by_type[input_type] = found[0]
    default = conf.get("default_prompt_name")
    return dict(prompts=prompts, input_type_prompts=by_type,
                default_prompt_name=default if isinstance(default, str) and default in prompts else None)
