"""Tiny random BERT and XLM-R checkpoints plus their transformers outputs, for the tests.

Each model dir under tests/fixtures/ is a complete sentence-transformers model (config.json,
safetensors, tokenizer.json, modules.json, pooling config) whose weights are random but
fixed. Next to it, expected.npz holds what transformers computes for tests/fixtures/
tiny_texts.json, so tinyembed's numpy forward pass can be checked without torch.
Regenerate with:

    python weights/make_tiny_models.py

Variants cover what real checkpoints throw at a loader: fp32/fp16/bf16 storage, a `bert.`
or `roberta.` key prefix or none, sharded safetensors, CLS or mean pooling, prompts.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import UnigramTrainer, WordPieceTrainer
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel
from transformers import PreTrainedTokenizerFast

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MAX_SEQ_LENGTH = 64
HIDDEN = 32
SEED = 1234

# Training corpus for both tokenizers: plain English plus accented European text.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner while people walk by.",
    "The cat sat quietly on the warm windowsill, watching the rain fall.",
    "Machine learning models turn sentences into vectors of numbers.",
    "Search engines compare a query with many documents and rank the results.",
    "Paris is the capital and most populous city of France.",
    "She sold her car last year and now rides a bicycle to work every day.",
    "The meeting has been moved to Thursday at three because the room was booked.",
    "Rivers carry sand and silt from the mountains down to the sea.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "The printing press made books cheaper and spread new ideas across Europe.",
    "Please add two cups of flour, a pinch of salt, and stir until smooth.",
    "What is the weather like tomorrow in London?",
    "How do I reset my password if I forgot my email address?",
    "Good morning! Thank you very much for your help yesterday.",
    "Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in many texts.",
    "Embeddings place similar sentences close together in space.",
    "The library opens at nine in the morning and closes at six in the evening.",
    "Children were playing football in the park after school.",
    "The doctor said that rest and water would help the patient recover.",
    "Le café est très bon, mais la crème brûlée est encore meilleure.",
    "Où est la bibliothèque ? Elle est à côté de l'école.",
    "Nous étions déjà partis quand il a commencé à pleuvoir.",
    "Die Straße ist sehr groß und schön, aber es gibt zu viele Autos.",
    "Ich möchte ein Glas Wasser und ein Stück Kuchen, bitte.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la estación de tren? Está cerca del río.",
    "El niño comió una manzana y después jugó en el jardín.",
    "Mañana vamos a la playa con nuestros amigos españoles.",
    "São Paulo é a maior cidade do Brasil e tem muitos restaurantes.",
    "A informação está disponível na página principal do site.",
    "Zażółć gęślą jaźń to zdanie ze wszystkimi polskimi literami.",
    "Smörgåsbord, fjäll and ångström are words borrowed from Swedish.",
]

# Texts the reference outputs are computed for; some run past 64 tokens so truncation applies.
TEXTS = [
    "a",
    "hello",
    "Hello, world!",
    "  spaces   around  ",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée à la française.",
    "Die Straße ist schön.",
    "¿Dónde está la estación?",
    "UNSEEN WORDS: zygote quixotic xylophone",
    "Numbers 3.14159 and dates 2024-02-29.",
    "https://example.com/search?q=tiny+models",
    "def add(a, b): return a + b",
    "我喜欢机器学习",
    "Привет, мир!",
    "emoji 🙂🚀 and a flag 🏳️‍🌈",
    "Cafe\u0301 with a combining accent",
    "line one\nline two\ttabbed",
    "!!! ??? ...",
    "query: how do embeddings work",
    " ".join(CORPUS[0:6]),
    " ".join(CORPUS[20:26]),
    "data " * 80,
    " ".join(CORPUS[8:14]) + " " + " ".join(CORPUS[26:31]),
]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

# name -> (family, stored dtype, key prefix, pooling, sharded, prompts or None)
VARIANTS = {
    "tiny-bert-fp32": ("bert", torch.float32, "", "mean", False,
                       {"query": "Represent this sentence for searching relevant passages: "}),
    "tiny-bert-fp16": ("bert", torch.float16, "", "cls", False, None),
    "tiny-bert-bf16-prefixed": ("bert", torch.bfloat16, "bert.", "mean", False, None),
    "tiny-bert-sharded": ("bert", torch.float32, "", "mean", True, None),
    "tiny-xlmr-fp32": ("xlmr", torch.float32, "roberta.", "cls", False,
                       {"query": "query: ", "document": "passage: "}),
    "tiny-xlmr-fp16": ("xlmr", torch.float16, "", "mean", False,
                       {"query": "query: ", "document": "passage: "}),
    "tiny-xlmr-bf16": ("xlmr", torch.bfloat16, "roberta.", "cls", False,
                       {"query": "query: ", "document": "passage: "}),
}


# ---------------------------------------------------------------- tokenizers

def bert_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, WordPieceTrainer(
        vocab_size=700, special_tokens=BERT_SPECIALS, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def xlmr_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    # Shaped like the real xlm-roberta tokenizer.json (NFKC stands in for its Precompiled
    # charsmap): collapse runs of spaces, "▁" marks word starts.
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # Unigram keeps only substrings seen often enough; adding case variants of the tiny
    # corpus lets it reach the target size (and XLM-R is cased, so they are useful pieces).
    corpus = CORPUS + [c.lower() for c in CORPUS] + [c.upper() for c in CORPUS]
    tok.train_from_iterator(corpus, UnigramTrainer(
        vocab_size=600, special_tokens=XLMR_SPECIALS, unk_token="<unk>", show_progress=False))
    tok.add_special_tokens(["<mask>"])  # last id, as in the real XLM-R vocabulary
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    # Same template as the converted xlm-roberta-base tokenizer.json.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    return tok


def load_or_train(family: str, retrain: bool) -> str:
    """tokenizer.json text. Tokenizer training is not reproducible (hash-map tie-breaking in
    WordPiece, parallel EM in Unigram), so once trained a tokenizer is kept: reruns reuse the
    committed file byte for byte (re-serializing would reprint Unigram scores)."""
    kept = OUT_DIR / f"tiny-{family}-fp32" / "tokenizer.json"
    if kept.exists() and not retrain:
        return kept.read_text(encoding="utf-8")
    tok = bert_tokenizer() if family == "bert" else xlmr_tokenizer()
    return tok.to_str(pretty=True)


def check_tokenizer(tok: Tokenizer, specials: list[str]) -> None:
    assert [tok.token_to_id(s) for s in specials] == list(range(len(specials))), specials
    assert tok.padding is None and tok.truncation is None
    assert 500 <= tok.get_vocab_size() <= 1000, tok.get_vocab_size()


TOKENIZER_CONFIG = {
    "bert": {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
             "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "cls_token": "[CLS]", "mask_token": "[MASK]"},
    "xlmr": {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
             "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
             "pad_token": "<pad>", "mask_token": "<mask>"},
}


# ---------------------------------------------------------------- weights

def model_config(family: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, hidden_act="gelu")
    if family == "bert":
        return BertConfig(**common, max_position_embeddings=MAX_SEQ_LENGTH,
                          type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12)
    # XLM-R positions start at pad_token_id + 1 = 2, hence the +2.
    return XLMRobertaConfig(**common, max_position_embeddings=MAX_SEQ_LENGTH + 2,
                            type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, layer_norm_eps=1e-5)


def random_model(family: str, vocab_size: int) -> torch.nn.Module:
    """HF init leaves LayerNorm at (1, 0), biases at 0 and tiny weights, which would hide
    swapped or missing terms; redraw everything so each parameter matters."""
    torch.manual_seed(SEED)
    cls = BertModel if family == "bert" else XLMRobertaModel
    return redraw(cls(model_config(family, vocab_size)).eval(), SEED)


def redraw(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter from a seeded normal: LayerNorm gains near 1, small biases, and matrices
    and embedding tables at 0.2 (~1/sqrt(fan_in) keeps activations O(1))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


def save_weights(model, out: Path, dtype, prefix: str, sharded: bool) -> None:
    model = model.to(dtype)
    if sharded:
        # Small shard size so even this tiny model splits into several files.
        model.save_pretrained(out, max_shard_size="40KB")
        assert len(list(out.glob("model-*.safetensors"))) >= 2
        return
    model.save_pretrained(out)
    if prefix:  # rewrite with every key renamed, as BertForMaskedLM-style files have them
        path = out / "model.safetensors"
        tensors = load_file(path)
        save_file({prefix + k: v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def stored_state_dict(out: Path) -> dict[str, torch.Tensor]:
    index = out / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) \
        if index.exists() else ["model.safetensors"]
    state = {}
    for f in files:
        state.update(load_file(out / f))
    return state


# ---------------------------------------------------------------- reference outputs

def reference(family: str, vocab_size: int, state: dict, prefix: str, ids: list[list[int]]):
    """Run transformers (fp32, eager attention) on the stored weights, one text at a time."""
    cls = BertModel if family == "bert" else XLMRobertaModel
    config = model_config(family, vocab_size)
    config._attn_implementation = "eager"
    model = cls(config).eval()
    weights = {k[len(prefix):]: v.float() for k, v in state.items()}
    model.load_state_dict(weights, strict=True)
    hidden = []
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([seq])
            out = model(input_ids=x, attention_mask=torch.ones_like(x),
                        token_type_ids=torch.zeros_like(x))
            hidden.append(out.last_hidden_state[0].numpy().astype(np.float32))
    return hidden


def normalize(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def write_expected(out: Path, ids: list[list[int]], hidden: list[np.ndarray]) -> None:
    lengths = [len(s) for s in ids]
    np.savez(
        out / "expected.npz",
        input_ids=np.concatenate([np.asarray(s, np.int64) for s in ids]),
        cu_seqlens=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        cls=normalize(np.stack([h[0] for h in hidden])),
        mean=normalize(np.stack([h.mean(axis=0) for h in hidden])),
        last_token=normalize(np.stack([h[-1] for h in hidden])),
        hidden=np.concatenate(hidden).astype(np.float32),
    )


# ---------------------------------------------------------------- sentence-transformers files

def write_st_files(out: Path, pooling: str, prompts: dict | None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]
    pool = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    dump(out / "modules.json", modules)
    dump(out / "1_Pooling" / "config.json", pool)
    dump(out / "sentence_bert_config.json",
         {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    if prompts is not None:
        dump(out / "config_sentence_transformers.json", {
            "__version__": {"sentence_transformers": sentence_transformers.__version__,
                            "transformers": transformers.__version__,
                            "pytorch": torch.__version__},
            "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain-tokenizers", action="store_true",
                        help="train new tokenizers instead of reusing the committed ones")
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    dump(OUT_DIR / "tiny_texts.json", TEXTS)
    tok_json = {fam: load_or_train(fam, args.retrain_tokenizers) for fam in ("bert", "xlmr")}
    toks = {fam: Tokenizer.from_str(text) for fam, text in tok_json.items()}
    check_tokenizer(toks["bert"], BERT_SPECIALS)
    check_tokenizer(toks["xlmr"], XLMR_SPECIALS)
    base = {fam: random_model(fam, t.get_vocab_size()) for fam, t in toks.items()}

    for name, (family, dtype, prefix, pooling, sharded, prompts) in VARIANTS.items():
        out = OUT_DIR / name
        shutil.rmtree(out, ignore_errors=True)
        tok = toks[family]
        save_weights(base[family], out, dtype, prefix, sharded)
        (out / "tokenizer.json").write_text(tok_json[family], encoding="utf-8")
        dump(out / "tokenizer_config.json",
             {**TOKENIZER_CONFIG[family], "model_max_length": MAX_SEQ_LENGTH})
        write_st_files(out, pooling, prompts)

        # Reference token ids: tokenizer.json as tinyembed reads it, truncated at
        # max_seq_length; the HF wrapper over the same file must agree. (Not AutoTokenizer:
        # transformers 5's XLMRobertaTokenizer keeps only the vocab and rebuilds its own
        # normalizer and pre-tokenizer.)
        raw = Tokenizer.from_file(str(out / "tokenizer.json"))
        raw.enable_truncation(MAX_SEQ_LENGTH)
        ids = [e.ids for e in raw.encode_batch(TEXTS)]
        hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
        hf_ids = [hf(t, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"] for t in TEXTS]
        assert ids == hf_ids, f"{name}: HF vs tokenizers"
        assert any(len(s) == MAX_SEQ_LENGTH for s in ids), "no text was truncated"

        state = stored_state_dict(out)
        if prefix:
            assert all(k.startswith(prefix) for k in state), f"{name}: key prefix"
        else:
            assert not any(k.startswith(("bert.", "roberta.")) for k in state), name
        assert not any("position_ids" in k for k in state), "buffers are not saved"
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {dtype}
        hidden = reference(family, tok.get_vocab_size(), state, prefix, ids)
        write_expected(out, ids, hidden)
        print(f"{name}: {len(state)} tensors, {sum(map(len, ids))} tokens, "
              f"vocab {tok.get_vocab_size()}")

    (OUT_DIR / "generator.json").write_text(json.dumps(
        {"script": "weights/make_tiny_models.py", "torch": torch.__version__,
         "transformers": transformers.__version__}, indent=2) + "\n")


if __name__ == "__main__":
    main()
