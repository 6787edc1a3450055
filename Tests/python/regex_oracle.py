#!/usr/bin/env python3
"""Python's re.match as the oracle for prune-cluster's linear-time name regexes.

  regex_oracle.py [--cases N] [--seed S]

Prints JSON: a list of {"pattern", "name", "match"} where "match" is true, false,
or null when Python refuses the pattern.  Patterns are drawn at random from the
subset NameRegex supports (literals, escapes, classes, dot, quantifiers, lazy
quantifiers, alternation, groups, anchors, word boundaries, (?i)/(?s)/(?m) and
scoped flags), names from a small alphabet so that matches are frequent.

Exit codes: 0 ok, 2 usage error.
"""
import argparse
import json
import random
import re
import sys

ATOMS = ["a", "b", "A", "1", ".", r"\d", r"\w", r"\W", r"\s", r"\.", r"\\", "_", "[ab]", "[^a]", "[a-c]",
         "[A-Z0-9]", r"[\d.]", "[-a]", "[a-]", "[]a]", "é", r"\x41", r"\n", "{", "}", "]"]
QUANTIFIERS = ["", "", "", "", "*", "+", "?", "{2}", "{1,2}", "{,2}", "{1,}", "*?", "+?", "??", "{0}", "{,}"]
BAD_QUANTIFIERS = ["{2,1}", "**", "{1}{2}"]  # refused by Python
NAME_CHARS = "aAbB1._ \né"


def pattern(rng, depth=0):
    parts = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.15 and depth < 3:
            inner = pattern(rng, depth + 1)
            parts.append(rng.choice(["(%s)", "(?:%s)", "(?P<g%d>%%s)" % rng.randint(0, 9), "(?i:%s)", "(?-i:%s)", "(?s:%s)"]) % inner)
        elif r < 0.22:
            parts.append(rng.choice(["^", "$", r"\b", r"\B", r"\A", r"\Z"]))
            continue
        else:
            parts.append(rng.choice(ATOMS))
        parts[-1] += rng.choice(BAD_QUANTIFIERS) if rng.random() < 0.01 else rng.choice(QUANTIFIERS)
    p = "".join(parts)
    if rng.random() < 0.2 and depth < 3:
        p += "|" + pattern(rng, depth + 1)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = []
    for _ in range(a.cases):
        p = pattern(rng)
        if rng.random() < 0.15:
            p = rng.choice(["(?i)", "(?s)", "(?m)", "(?is)"]) + p
        name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(0, 8)))
        try:
            match = re.match(p, name) is not None
        except (re.error, OverflowError):
            match = None
        out.append({"pattern": p, "name": name, "match": match})
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
