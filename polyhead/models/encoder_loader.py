"""Loading an encoder: a Hugging Face folder (config.json of a BERT-family model_type,
safetensors, tokenizer) plus, when it is a sentence-transformers model, the pipeline beside it
(modules.json: Transformer -> Pooling -> Normalize; 1_Pooling/config.json for the pooling
mode; sentence_bert_config.json for max_seq_length and lowercasing)."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from polyhead.models.bert import EncoderConfig, EncoderModel, hf_to_encoder_state_dict
from polyhead.models.loader import read_float_weights
from polyhead.models.registry import resolve_model_path, transformer_module_path

# sentence-transformers pooling modes -> polyhead's (heads.pool); legacy configs use one bool per mode
_POOLING_MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
_LEGACY_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                        "pooling_mode_lasttoken": "lasttoken", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean"}


@dataclass(slots=True)
class SentenceConfig:
    """How token states become the model's own sentence embedding (sentence-transformers' pipeline)."""

    pooling: str = "mean"  # mean | cls | last: what sentence-transformers does for a plain HF model is mean
    normalize: bool = False  # a Normalize module follows the pooling (L2, unit vectors)
    max_seq_length: int = 512  # longest input in tokens, [CLS] and [SEP] included
    do_lower_case: bool = False  # sentence-transformers lowercases the text before tokenizing


@dataclass
class LoadedEncoder:
    model: EncoderModel
    tokenizer: object  # transformers PreTrainedTokenizerFast, adds [CLS]/[SEP]
    config: EncoderConfig
    sentence: SentenceConfig
    folder: Path  # the folder the weights came from


def load_encoder(model: str | None, dtype: torch.dtype) -> LoadedEncoder:
    folder = resolve_model_path(model)
    if not folder.is_dir():
        raise ValueError(f"encoder model {str(folder)!r} must be a Hugging Face folder")
    weights_folder = folder / transformer_module_path(folder)
    if not (weights_folder / "config.json").is_file():
        raise ValueError(f"model {str(weights_folder)!r} is not a Hugging Face folder (no config.json)")
    from transformers import AutoConfig, AutoTokenizer

    config = EncoderConfig.from_hf(AutoConfig.from_pretrained(weights_folder))
    tokenizer = AutoTokenizer.from_pretrained(weights_folder)
    sentence = read_sentence_config(folder, config, tokenizer)
    with torch.device("meta"):
        net = EncoderModel(config)
    try:
        state = hf_to_encoder_state_dict(read_float_weights(weights_folder), config)
    except KeyError as err:
        raise ValueError(f"weights in {str(weights_folder)!r} lack {err.args[0]!r} for a "
                         f"{config.architecture} encoder of {config.num_layers} layers") from None
    missing, unexpected = net.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {str(weights_folder)!r} do not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")
    return LoadedEncoder(net.eval().requires_grad_(False), tokenizer, config, sentence, folder)


def read_sentence_config(folder: Path, config: EncoderConfig, tokenizer) -> SentenceConfig:
    """The sentence-transformers pipeline of `folder`, or sentence-transformers' own defaults for a
    plain Hugging Face folder (mean pooling, no normalization)."""
    sentence = SentenceConfig()
    modules = _read_json(folder / "modules.json") or []
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            sentence.pooling = _pooling_mode(_read_json(folder / module.get("path", "") / "config.json") or {},
                                             folder / module.get("path", ""))
        elif kind == "Normalize":
            sentence.normalize = True
        elif kind != "Transformer":
            raise ValueError(f"sentence-transformers module {module.get('type')!r} in {str(folder)!r} is not "
                             f"supported; supported: Transformer, Pooling, Normalize")
    limit = min(config.max_positions, getattr(tokenizer, "model_max_length", None) or config.max_positions)
    bert_config = _read_json(folder / "sentence_bert_config.json") or {}
    sentence.max_seq_length = min(bert_config.get("max_seq_length") or limit, config.max_positions)
    sentence.do_lower_case = bool(bert_config.get("do_lower_case", False))
    return sentence


def _pooling_mode(pooling_config: dict, where: Path) -> str:
    mode = pooling_config.get("pooling_mode")
    if mode is None:  # legacy: one bool per mode
        modes = [name for key, name in _LEGACY_POOLING_KEYS.items() if pooling_config.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in _POOLING_MODES:
        raise ValueError(f"pooling mode {modes} in {str(where)!r} is not supported; "
                         f"supported: one of {', '.join(_POOLING_MODES)}")
    return _POOLING_MODES[modes[0]]


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None
