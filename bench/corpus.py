"""A realistic, mixed-length English corpus built offline from the standard library's own
documentation (module, class and function docstrings): prose, code fragments, lists and
one-liners, 1 to 500+ tokens, much like the passages people index into a vector database.

Deterministic: the same Python version gives the same texts in the same order.
"""

from __future__ import annotations

import importlib
import inspect
import random

MODULES = (
    "argparse asyncio collections concurrent.futures contextlib csv dataclasses datetime decimal "
    "difflib email enum fractions functools hashlib heapq http.client http.server inspect io "
    "ipaddress itertools json logging mailbox multiprocessing os pathlib pickle queue random re "
    "sched selectors shutil socket sqlite3 ssl statistics string struct subprocess tarfile "
    "tempfile textwrap threading time timeit tkinter turtle typing unittest urllib.parse uuid "
    "wave xml.dom.minidom zipfile zoneinfo"
).split()


def docstrings() -> list[str]:
    seen, texts = set(), []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj) or inspect.isfunction(obj)]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen and len(doc) > 12:
                seen.add(doc)
                texts.append(doc)
    return texts


def mixed_corpus(n: int = 1200, seed: int = 0) -> list[str]:
    """n texts: whole docstrings, their paragraphs and their first sentences, shuffled."""
    pieces = []
    for doc in docstrings():
        pieces.append(doc)
        paragraphs = [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 12]
        pieces.extend(paragraphs[1:3])
        first = doc.split(". ")[0].strip()
        if 12 < len(first) < len(doc):
            pieces.append(first)
    rng = random.Random(seed)
    rng.shuffle(pieces)
    while len(pieces) < n:
        pieces += pieces
    return pieces[:n]


def fixed_length_corpus(tokenizer, tokens: int, n: int, seed: int = 0) -> list[list[int]]:
    """n token-id sequences of exactly `tokens` tokens (specials included), cut from the corpus."""
    stream = []
    for text in mixed_corpus(4 * n, seed):
        stream.extend(tokenizer.encode([text], truncate=True)[0][1:-1].tolist())
        if len(stream) > n * tokens:
            break
    first, last = tokenizer.encode([""])[0].tolist()
    body = tokens - 2
    return [[first] + stream[i * body:(i + 1) * body] + [last] for i in range(n)]
