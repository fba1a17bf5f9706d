"""Text -> token ids: the HF tokenizer with the model's prompts and specials (tokenize.py) and
the cheap character cap applied before tokenizing (textcap.py)."""
