#!/usr/bin/env python3
"""Write a Hugging Face `tokenizer.json` from the tokenizer metadata of a GGUF file.

    gguf_tokenizer_json.py MODEL.gguf OUT.json [--pre KIND] [--tokenizer-config PATH]

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are handled. The
pre-tokenizer follows `tokenizer.ggml.pre` the way llama.cpp's llama-vocab.cpp reads it:

    gpt2 / gpt-2                 ByteLevel(use_regex=True)  (the GPT-2 regex)
    smollm / starcoder           Digits(individual_digits=True) then ByteLevel(use_regex=True)
                                 (llama.cpp: regexes "\\p{N}" then the GPT-2 regex)
    llama3 / llama-bpe / llama-v3  Split(Llama-3 regex) then ByteLevel(use_regex=False), ignore_merges
    qwen2                        NFC, Split(Qwen2 regex) then ByteLevel(use_regex=False)

`--pre` overrides the GGUF's value (the tests use it to try every pre-tokenizer on one vocabulary).
`--tokenizer-config` also writes a tokenizer_config.json with bos_token / eos_token.
Requires pip's `gguf`; the result is checked by loading it with `tokenizers` when that is installed.
"""
import argparse
import json
import sys

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# llama.cpp token types (llama_token_type / gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def pre_tokenizer(kind):
    """(normalizer, pre_tokenizer, ignore_merges) for a llama.cpp pre-tokenizer name."""
    if kind in ("gpt2", "gpt-2"):
        return None, byte_level(True), False
    if kind in ("smollm", "starcoder"):
        return None, {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level(True)]}, False
    if kind in ("llama3", "llama-bpe", "llama-v3"):
        return None, {"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(False)]}, True
    if kind == "qwen2":
        return ({"type": "NFC"},
                {"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(False)]}, False)
    sys.exit(f"gguf_tokenizer_json.py: unknown pre-tokenizer {kind!r} "
             "(known: gpt2, smollm, starcoder, llama3, llama-bpe, qwen2)")


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--pre", help="pre-tokenizer name, overriding tokenizer.ggml.pre")
    ap.add_argument("--tokenizer-config", help="also write a tokenizer_config.json here")
    args = ap.parse_args()

    from gguf import GGUFReader
    reader = GGUFReader(args.gguf)
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"{args.gguf}: tokenizer.ggml.model is {model!r}, expected 'gpt2' (byte-level BPE)")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = field(reader, "tokenizer.ggml.merges") or []
    kind = args.pre or field(reader, "tokenizer.ggml.pre", "gpt2")
    normalizer, pre, ignore_merges = pre_tokenizer(kind)

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    added = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": ty == USER_DEFINED, "special": ty == CONTROL})
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            sys.exit(f"{args.gguf}: merge {m!r} is not two tokens separated by one space")
        pairs.append(parts)

    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            # llama.cpp records an unknown id even for byte-level vocabularies, which never need it.
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": pairs,
        },
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)

    if args.tokenizer_config:
        cfg = {"add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False))}
        for name in ("bos", "eos", "unknown", "padding"):
            tid = field(reader, f"tokenizer.ggml.{name}_token_id")
            if tid is not None and 0 <= tid < len(tokens):
                key = {"unknown": "unk_token", "padding": "pad_token"}.get(name, f"{name}_token")
                cfg[key] = tokens[tid]
        with open(args.tokenizer_config, "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)

    try:
        import tokenizers
    except ImportError:
        return
    tokenizers.Tokenizer.from_file(args.out)  # fails loudly if the file is not a valid tokenizer.json


if __name__ == "__main__":
    main()
