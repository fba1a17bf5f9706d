"""Tiny random decoder embedders (Qwen3, gte-Qwen2, Mistral, Gemma2) plus their transformers
outputs, for the tests. Regenerate with:

    python weights/make_tiny_decoders.py

Each tests/fixtures/tiny-<family>/ holds config.json, safetensors, a byte-level BPE
tokenizer.json trained here, tokenizer_config.json, prompts, and expected.npz: what transformers
(eager attention, float32, stored-dtype weights widened) computes for each text run alone, so
the numpy engine is checked without torch. The token ids in expected.npz follow the EOS rules of
docs/decoders.md, applied here by hand, independently of tinyembed's tokenizer code.

tiny-qwen3 is a full Qwen3-Embedding-style sentence-transformers directory; its st_* arrays are
`SentenceTransformer(dir).encode(texts, prompt_name=...)`.
"""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import (Gemma2Config, Gemma2Model, MistralConfig, MistralModel, Qwen2Config, Qwen2Model,
                          Qwen3Config, Qwen3Model)

from make_tiny_models import CORPUS

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MAX_LEN = 128
SEED = 4321
VOCAB = 400

TEXTS = [
    "a",
    "hello",
    "Hello, world!",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée à la française.",
    "我喜欢机器学习",
    "emoji 🙂🚀 and a flag",
    "line one\nline two\ttabbed",
    "Rivers carry sand and silt from the mountains down to the sea, and the sea keeps it.",
    " ".join(CORPUS[:3]),  # ~40-60 tokens: past every sliding window
    " ".join(CORPUS[3:12]),  # over MAX_LEN: truncated
]
QUERIES = ["how do rivers move sand?", "capital of France", "warm windowsill cat"]

QWEN_INSTRUCT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
FAMILIES = {
    # dir: (config, model class, specials, tokenizer.json template, tokenizer_config, rule, dtype, prefix, shards, prompts)
    "tiny-qwen3": dict(
        config=Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=MAX_LEN,
                           rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False),
        model=Qwen3Model, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        template="$A <|endoftext|>", tokenizer_config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                       "padding_side": "left"},
        rule=(None, "<|endoftext|>"), dtype=torch.float32, prefix="", shards=1,
        prompts={"query": QWEN_INSTRUCT, "document": ""}, query_prompt="query"),
    "tiny-qwen2-gte": dict(
        config=Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                           rms_norm_eps=1e-6, rope_theta=1e6, is_causal=False, use_sliding_window=False,
                           tie_word_embeddings=False),
        model=Qwen2Model, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        template=None, tokenizer_config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        rule=(None, "<|endoftext|>"), dtype=torch.bfloat16, prefix="model.", shards=1,
        auto_map={"AutoModel": "Alibaba-NLP/gte-Qwen2-1.5B-instruct--modeling_qwen.Qwen2Model"},
        prompts={"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery: "},
        query_prompt="query"),
    "tiny-mistral": dict(
        config=MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_LEN,
                             rms_norm_eps=1e-5, rope_theta=1e4, sliding_window=8, tie_word_embeddings=False),
        model=MistralModel, specials=["<unk>", "<s>", "</s>"],
        template="<s> $A", tokenizer_config={"add_bos_token": True, "add_eos_token": True, "bos_token": "<s>",
                                             "eos_token": {"content": "</s>"}, "unk_token": "<unk>"},
        rule=("<s>", "</s>"), dtype=torch.float16, prefix="model.", shards=3,
        prompts={"web_search_query": "Instruct: Given a web search query, retrieve relevant passages\nQuery: ",
                 "sts_query": "Instruct: Retrieve semantically similar text.\nQuery: "},
        query_prompt="web_search_query"),
    "tiny-gemma2": dict(
        config=Gemma2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=MAX_LEN,
                            rms_norm_eps=1e-6, rope_theta=1e4, sliding_window=4, query_pre_attn_scalar=24,
                            attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=False),
        model=Gemma2Model, specials=["<pad>", "<eos>", "<bos>", "<unk>"],
        template="<bos> $A", tokenizer_config={"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>",
                                               "eos_token": "<eos>", "pad_token": "<pad>"},
        rule=("<bos>", None), dtype=torch.float32, prefix="", shards=1,
        prompts={"query": "<instruct>Given a web search query, retrieve relevant passages\n<query>"},
        query_prompt="query"),
}


def byte_bpe(specials: list[str], template: str | None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=VOCAB - 8, special_tokens=specials, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    byte_level = processors.ByteLevel(trim_offsets=False)
    if template is None:
        tok.post_processor = byte_level
    else:
        ids = [(t, tok.token_to_id(t)) for t in template.split() if t != "$A"]
        tok.post_processor = processors.Sequence(
            [byte_level, processors.TemplateProcessing(single=template, special_tokens=ids)])
    assert tok.get_vocab_size() <= VOCAB
    return tok


def reference_ids(tok: Tokenizer, text: str, rule) -> list[int]:
    """The ids the model must run on: content truncated to leave room for the specials of `rule`
    (bos, eos), then the specials. Written from docs/decoders.md, not from tinyembed's code."""
    bos, eos = rule
    content = tok.encode(text, add_special_tokens=False).ids
    content = content[: MAX_LEN - (bos is not None) - (eos is not None)]
    return ([tok.token_to_id(bos)] if bos else []) + content + ([tok.token_to_id(eos)] if eos else [])


def randomize(model: torch.nn.Module, gemma: bool) -> None:
    """O(1) activations: N(0, 1/fan_in) matrices, norm gains near 1 (Gemma stores gain - 1)."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
            elif p.ndim == 2 and "embed" not in name:
                p.copy_(noise / p.shape[1] ** 0.5 * 1.5)
            else:
                p.copy_(noise * (1.0 if "embed" in name else 0.1))


def save_weights(model, out: Path, dtype, prefix: str, shards: int) -> None:
    tensors = {prefix + k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if prefix:  # a causal-LM checkpoint: the head the embedder never uses
        tensors["lm_head.weight"] = torch.zeros(8, 8, dtype=dtype)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    dump(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})


def write_st_files(out: Path, prompts: dict) -> None:
    dump(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    dump(out / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, "pooling_mode_cls_token": False,
                                             "pooling_mode_mean_tokens": False, "pooling_mode_lasttoken": True,
                                             "include_prompt": True})
    dump(out / "sentence_bert_config.json", {"max_seq_length": MAX_LEN, "do_lower_case": False})
    dump(out / "config_sentence_transformers.json", {"prompts": prompts, "default_prompt_name": None,
                                                     "similarity_fn_name": "cosine"})


def run_alone(model, ids: list[list[int]]) -> np.ndarray:
    """Each sequence alone (no padding, no mask): last token, L2-normalized."""
    rows = []
    with torch.no_grad():
        for seq in ids:
            hidden = model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1].numpy()
            rows.append(hidden / np.linalg.norm(hidden))
    return np.stack(rows).astype(np.float32)


def packed(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(ids).astype(np.int32), np.cumsum([0] + [len(s) for s in ids]).astype(np.int32)


def dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def build(name: str, f: dict) -> None:
    out = OUT_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = byte_bpe(f["specials"], f["template"])
    tok.save(str(out / "tokenizer.json"))
    dump(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                         "model_max_length": MAX_LEN, **f["tokenizer_config"]})
    torch.manual_seed(SEED)
    model = f["model"]._from_config(copy.deepcopy(f["config"]), attn_implementation="eager").eval()
    randomize(model, gemma=name == "tiny-gemma2")
    with torch.no_grad():  # the reference runs on what is stored, widened back to float32
        for p in model.parameters():
            p.copy_(p.to(f["dtype"]).float())
    model.config.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    if "auto_map" in f:
        config["auto_map"] = f["auto_map"]
    dump(out / "config.json", config)
    save_weights(model, out, f["dtype"], f["prefix"], f["shards"])
    if name == "tiny-qwen3":
        write_st_files(out, f["prompts"])
    else:
        dump(out / "config_sentence_transformers.json", {"prompts": f["prompts"], "default_prompt_name": None})

    ids = [reference_ids(tok, t, f["rule"]) for t in TEXTS]
    assert max(len(s) for s in ids) == MAX_LEN, "some text must be truncated"
    prompt = f["prompts"][f["query_prompt"]]
    query_ids = [reference_ids(tok, prompt + q, f["rule"]) for q in QUERIES]
    arrays = {}
    arrays["input_ids"], arrays["cu_seqlens"] = packed(ids)
    arrays["last_token"] = run_alone(model, ids)
    arrays["query_input_ids"], arrays["query_cu_seqlens"] = packed(query_ids)
    arrays["query_last_token"] = run_alone(model, query_ids)
    if name == "tiny-qwen3":
        st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
        arrays["st_query"] = st.encode(QUERIES, prompt_name="query").astype(np.float32)
        arrays["st_document"] = st.encode(TEXTS, prompt_name="document").astype(np.float32)
    np.savez_compressed(out / "expected.npz", **arrays)
    print(f"{name}: {len(TEXTS)} texts, {int(arrays['cu_seqlens'][-1])} tokens, lengths "
          f"{sorted(len(s) for s in ids)}")


def rope_reference() -> None:
    """transformers' own cos/sin at long positions (Qwen3-Embedding's theta and head_dim)."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    config = Qwen3Config(hidden_size=1024, num_attention_heads=16, head_dim=128, rope_theta=1e6,
                         max_position_embeddings=32768)
    positions = torch.tensor([[0, 1, 100, 4095, 8191, 16385, 32767]])
    cos, sin = Qwen3RotaryEmbedding(config)(torch.zeros(1, 1, 128), positions)
    np.savez_compressed(OUT_DIR / "rope_reference.npz", positions=positions[0].numpy(), theta=1e6, head_dim=128,
                        cos=cos[0, :, :64].numpy(), sin=sin[0, :, :64].numpy())


def main() -> None:
    torch.set_num_threads(1)
    for name, f in FAMILIES.items():
        build(name, f)
    rope_reference()
    dump(OUT_DIR / "decoder_texts.json", {"texts": TEXTS, "queries": QUERIES})
    dump(OUT_DIR / "decoder_generator.json", {"script": "weights/make_tiny_decoders.py", "torch": torch.__version__,
                                              "transformers": transformers.__version__,
                                              "sentence_transformers": sentence_transformers.__version__})


if __name__ == "__main__":
    main()
