"""Tiny random cross-encoder (reranker) checkpoints plus their transformers scores, for the tests.

    tiny-reranker-bert   BertForSequenceClassification, 1 label, fp32 (ms-marco-MiniLM's shape:
                         bert.* encoder + bert.pooler + classifier, token types 0/1)
    tiny-reranker-xlmr   XLMRobertaForSequenceClassification, 1 label, fp16 (bge-reranker-base/
                         large/v2-m3's shape: roberta.* encoder + classifier.dense/out_proj)

The tokenizers are the committed ones of tiny-bert-fp32 / tiny-xlmr-fp32 (make_tiny_models.py).
Next to each model, expected_scores.json holds the (query, document) pairs, their token ids and
segment ids, the raw logits transformers computes (fp32, eager) and sentence-transformers'
CrossEncoder.predict scores (its default activation for one label: sigmoid). Regenerate with

    python weights/make_tiny_rerankers.py
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from sentence_transformers import CrossEncoder
from tokenizers import Tokenizer
from transformers import (BertForSequenceClassification, PreTrainedTokenizerFast,
                          XLMRobertaForSequenceClassification)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_models import (CORPUS, MAX_SEQ_LENGTH, OUT_DIR, SEED, TOKENIZER_CONFIG, dump,  # noqa: E402
                              model_config, redraw)

VARIANTS = {  # name -> (family, stored dtype)
    "tiny-reranker-bert": ("bert", torch.float32),
    "tiny-reranker-xlmr": ("xlmr", torch.float16),
}
QUERIES = ["What is the capital of France?", "how do embeddings work", "Wo ist die Straße?"]
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Embeddings place similar sentences close together in space.",
    "Die Straße ist sehr groß und schön, aber es gibt zu viele Autos.",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    " ".join(CORPUS[0:6]),  # longer than the model with the query: truncated longest-first
]


def random_classifier(family: str, vocab_size: int) -> torch.nn.Module:
    """As make_tiny_models.random_model: every parameter redrawn so that each one matters."""
    torch.manual_seed(SEED)
    config = model_config(family, vocab_size)
    config.num_labels = 1
    cls = BertForSequenceClassification if family == "bert" else XLMRobertaForSequenceClassification
    return redraw(cls(config).eval(), SEED + 1)


def main() -> None:
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    for name, (family, dtype) in VARIANTS.items():
        out = OUT_DIR / name
        shutil.rmtree(out, ignore_errors=True)
        tok_text = (OUT_DIR / f"tiny-{family}-fp32" / "tokenizer.json").read_text(encoding="utf-8")
        tok = Tokenizer.from_str(tok_text)
        model = random_classifier(family, tok.get_vocab_size())
        model.to(dtype).save_pretrained(out)
        (out / "tokenizer.json").write_text(tok_text, encoding="utf-8")
        dump(out / "tokenizer_config.json", {**TOKENIZER_CONFIG[family], "model_max_length": MAX_SEQ_LENGTH})

        tok.enable_truncation(MAX_SEQ_LENGTH)
        encodings = tok.encode_batch(pairs)
        hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
        for (q, d), enc in zip(pairs, encodings):
            ref = hf(q, d, truncation=True, max_length=MAX_SEQ_LENGTH)
            assert ref["input_ids"] == enc.ids, f"{name}: HF vs tokenizers on a pair"
            if "token_type_ids" in ref:
                assert ref["token_type_ids"] == enc.type_ids
        assert any(len(e.ids) == MAX_SEQ_LENGTH for e in encodings), "no pair was truncated"
        if family == "bert":
            assert any(1 in e.type_ids for e in encodings)

        ref_model = type(model).from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager").eval()
        logits = []
        with torch.no_grad():
            for enc in encodings:
                ids = torch.tensor([enc.ids])
                logits.append(float(ref_model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                              token_type_ids=torch.tensor([enc.type_ids])).logits[0, 0]))
        st = CrossEncoder(str(out), max_length=MAX_SEQ_LENGTH, device="cpu", model_kwargs={"torch_dtype": torch.float32})
        st_scores = [float(s) for s in st.predict(pairs)]
        np.testing.assert_allclose(st_scores, 1 / (1 + np.exp(-np.array(logits))), atol=1e-5)
        dump(out / "expected_scores.json", {
            "pairs": pairs, "input_ids": [e.ids for e in encodings], "type_ids": [e.type_ids for e in encodings],
            "logits": logits, "sentence_transformers_scores": st_scores,
            "generator": {"script": "weights/make_tiny_rerankers.py", "torch": torch.__version__,
                          "transformers": transformers.__version__}})
        print(f"{name}: {len(pairs)} pairs, logits {min(logits):.3f}..{max(logits):.3f}")


if __name__ == "__main__":
    main()
