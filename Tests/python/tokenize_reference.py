#!/usr/bin/env python3
"""Reference token ids from Hugging Face `tokenizers`, for the Swift tokenizer tests.

    tokenize_reference.py TOKENIZER.json --text FILE --out IDS.bin
        encodes the whole UTF-8 file (bytes as they are: no newline translation) and writes
        the ids as little-endian int32.
    tokenize_reference.py TOKENIZER.json --strings STRINGS.json --out IDS.json
        STRINGS.json is a JSON list of strings; writes a JSON list of id lists.

Special tokens are never added (add_special_tokens=False); special tokens written in the text
are still recognised, as `tokenizers` does by default.
"""
import argparse
import json
import struct
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a UTF-8 text file, encoded as one string")
    src.add_argument("--strings", help="a JSON list of strings, each encoded on its own")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    if args.text:
        with open(args.text, "rb") as f:
            text = f.read().decode("utf-8")
        ids = tok.encode(text, add_special_tokens=False).ids
        with open(args.out, "wb") as f:
            f.write(struct.pack(f"<{len(ids)}i", *ids))
    else:
        with open(args.strings, "rb") as f:
            strings = json.loads(f.read().decode("utf-8"))
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            sys.exit(f"{args.strings}: expected a JSON list of strings")
        out = [tok.encode(s, add_special_tokens=False).ids for s in strings]
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
