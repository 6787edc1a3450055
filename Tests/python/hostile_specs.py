#!/usr/bin/env python3
"""Write hostile job specs, configs, tokenizers, token-id files and GGUF files for
prune-cluster's bad-input tests (issue 11, section 3), beside valid controls.

  hostile_specs.py DIR

DIR/cases.json lists the cases, each {"name", "args", "exit", "expect", "absent"}:
run `prune ARGS` in DIR; it must exit with "exit" and, for exit 2, print exactly
one stderr line starting "prune: error: " that contains "expect" (compare as
is), while none of the "absent" paths appears.  Cases with exit 0 are the valid
controls each hostile case is a variation of: they show the hostile change is
what fails.

Exit codes: 0 ok, 2 usage error.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
from safetensors.numpy import save_file

HIDDEN, INTER, HEADS, KV, LAYERS, VOCAB = 32, 48, 4, 2, 2, 300
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
        "the face of the waters. And God said, Let there be light: and there was light. ") * 4

cases = []


def case(name, args, expect="", code=2, absent=None):
    cases.append({"name": name, "args": args, "exit": code, "expect": expect,
                  "absent": absent if absent is not None else ["out-" + name]})


# ---------------------------------------------------------------- model files

def config(**changes):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
         "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
         "num_key_value_heads": KV, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": VOCAB,
         "hidden_act": "silu", "tie_word_embeddings": False}
    c.update(changes)
    return c


def write_model(d, cfg=None):
    """A small Llama checkpoint (2 blocks, GQA, untied head) with config.json and tokenizer.json."""
    rng = np.random.default_rng(5)
    hd = HIDDEN // HEADS
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (VOCAB, HIDDEN))}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.2, (HEADS * hd, HIDDEN))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.2, (KV * hd, HIDDEN))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.2, (KV * hd, HIDDEN))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.2, (HIDDEN, HEADS * hd))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (INTER, HIDDEN))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (INTER, HIDDEN))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (HIDDEN, INTER))
    t["model.norm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
    t["lm_head.weight"] = rng.normal(0, 0.2, (VOCAB, HIDDEN))
    os.makedirs(d, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, os.path.join(d, "model.safetensors"))
    write_json(os.path.join(d, "config.json"), cfg or config())
    write_json(os.path.join(d, "tokenizer.json"), tokenizer())


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def byte_chars():
    """GPT-2's byte-to-unicode table, as Hugging Face's ByteLevel uses it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tokenizer(vocab=None, merges=None, added=None, unk=None):
    """A byte-level BPE tokenizer.json: 256 byte tokens and a few merges (ids < VOCAB)."""
    if vocab is None:
        vocab = {c: i for i, c in enumerate(byte_chars())}
        for i, m in enumerate(["Ġ t", "h e", "Ġt he", "Ġ a", "n d", "Ġa nd"]):
            vocab["".join(m.split(" "))] = 256 + i
        merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "n d", "Ġa nd"]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added or [],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": vocab, "merges": merges or []}}


def npy(path, array):
    np.save(path, array)


def variant(name, cfg=None, tok=None, extra=None):
    """A copy of the base model with another config.json or tokenizer.json."""
    d = os.path.join(OUT, "m-" + name)
    shutil.copytree(os.path.join(OUT, "model"), d)
    if cfg is not None:
        if isinstance(cfg, (bytes, str)):
            with open(os.path.join(d, "config.json"), "wb") as f:
                f.write(cfg if isinstance(cfg, bytes) else cfg.encode())
        else:
            write_json(os.path.join(d, "config.json"), cfg)
    if tok is not None:
        if isinstance(tok, (bytes, str)):
            with open(os.path.join(d, "tokenizer.json"), "wb") as f:
                f.write(tok if isinstance(tok, bytes) else tok.encode())
        else:
            write_json(os.path.join(d, "tokenizer.json"), tok)
    if extra:
        extra(d)
    return "m-" + name


def spec(name, body, model="model"):
    """DIR/NAME.yaml writing to out-NAME; `body` holds the keys after model/output."""
    with open(os.path.join(OUT, name + ".yaml"), "w") as f:
        f.write(f"model: {model}\noutput: out-{name}\n{body}")
    return name + ".yaml"


WANDA = "method: wanda\nsparsity: 0.5\ncalibration: {data: %s, samples: 4, tokens: 16%s}\n"


def wanda(data="ids.npy"):
    return WANDA % (data, "")


# ---------------------------------------------------------------- GGUF files

GGUF_TYPES = {"u8": 0, "i32": 5, "u32": 4, "f32": 6, "bool": 7, "str": 8, "arr": 9, "u64": 10, "f64": 12}


def gguf_string(s):
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(kind, v):
    if kind == "u32":
        return struct.pack("<I", v)
    if kind == "i32":
        return struct.pack("<i", v)
    if kind == "u64":
        return struct.pack("<Q", v)
    if kind == "f32":
        return struct.pack("<f", v)
    if kind == "f64":
        return struct.pack("<d", v)
    if kind == "bool":
        return struct.pack("<B", 1 if v else 0)
    if kind == "str":
        return gguf_string(v)
    raise ValueError(kind)


def gguf_file(metadata, tensors, tensor_count=None):
    """GGUF v3 bytes: metadata [(key, kind, value)] (kind "arr:KIND" for arrays) and F32
    tensors [(name, dims innermost first, float32 array)], data aligned to 32."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if tensor_count is None else tensor_count, len(metadata))
    for key, kind, value in metadata:
        out += gguf_string(key)
        if kind.startswith("arr:"):
            ek = kind[4:]
            out += struct.pack("<I", GGUF_TYPES["arr"]) + struct.pack("<IQ", GGUF_TYPES[ek], len(value))
            out += b"".join(gguf_value(ek, x) for x in value)
        else:
            out += struct.pack("<I", GGUF_TYPES[kind]) + gguf_value(kind, value)
    offset, blobs = 0, []
    for name, dims, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        raw = data.astype("<f4").tobytes()
        pad = -len(raw) % 32
        blobs.append(raw + bytes(pad))
        offset += len(raw) + pad
    out += bytes(-len(out) % 32)
    return out + b"".join(blobs)


def gguf_llama(**changes):
    """A complete one-block llama GGUF that `prune import-gguf` accepts; `changes`
    replaces metadata values by key (None removes the key)."""
    h, ff, vocab = 8, 16, 4
    rng = np.random.default_rng(3)
    md = [("general.architecture", "str", "llama"),
          ("llama.embedding_length", "u32", h), ("llama.feed_forward_length", "u32", ff),
          ("llama.block_count", "u32", 1), ("llama.attention.head_count", "u32", 2),
          ("llama.attention.head_count_kv", "u32", 2), ("llama.context_length", "u32", 64),
          ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5), ("llama.rope.freq_base", "f32", 10000.0),
          ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "gpt-2"),
          ("tokenizer.ggml.tokens", "arr:str", ["<unk>", "a", "b", "ab"]),
          ("tokenizer.ggml.token_type", "arr:i32", [3, 1, 1, 1]),
          ("tokenizer.ggml.merges", "arr:str", ["a b"])]
    md = [(k, changes[k][0], changes[k][1]) if k in changes else (k, kind, v) for k, kind, v in md
          if not (k in changes and changes[k] is None)]
    md += [(k, v[0], v[1]) for k, v in changes.items() if v is not None and k not in {m[0] for m in md}]
    w = lambda *shape: rng.normal(0, 0.2, shape)
    tensors = [("token_embd.weight", [h, vocab], w(vocab, h)),
               ("blk.0.attn_norm.weight", [h], w(h)), ("blk.0.attn_q.weight", [h, h], w(h, h)),
               ("blk.0.attn_k.weight", [h, h], w(h, h)), ("blk.0.attn_v.weight", [h, h], w(h, h)),
               ("blk.0.attn_output.weight", [h, h], w(h, h)), ("blk.0.ffn_norm.weight", [h], w(h)),
               ("blk.0.ffn_gate.weight", [h, ff], w(ff, h)), ("blk.0.ffn_up.weight", [h, ff], w(ff, h)),
               ("blk.0.ffn_down.weight", [ff, h], w(h, ff)), ("output_norm.weight", [h], w(h))]
    return gguf_file(md, tensors)


def gguf_case(name, blob, expect, code=2):
    with open(os.path.join(OUT, name + ".gguf"), "wb") as f:
        f.write(blob)
    case(name, ["import-gguf", name + ".gguf", "out-" + name], expect, code)


# ---------------------------------------------------------------- the cases

def build():
    write_model(os.path.join(OUT, "model"))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (8, 16)).astype(np.int32)
    npy(os.path.join(OUT, "ids.npy"), ids)
    with open(os.path.join(OUT, "text.txt"), "w") as f:
        f.write(TEXT)

    # Valid controls: the hostile cases below are each one change away from one of these.
    case("ok_magnitude", ["run", "-q", spec("ok_magnitude", "sparsity: 0.5\n")], code=0, absent=[])
    case("ok_wanda_ids", ["run", "-q", spec("ok_wanda_ids", wanda())], code=0, absent=[])
    case("ok_wanda_text", ["run", "-q", "--workers", "0", spec("ok_wanda_text", wanda("text.txt"))], code=0, absent=[])
    case("ok_regexes", ["run", "-q", spec("ok_regexes", "sparsity: 0.5\ntargets: ['re:model\\.layers\\.\\d+\\.mlp\\..*', "
                                          "'re:.*(q_proj|k_proj)\\.weight$']\nignore: ['re:(?i).*EMBED', 're:(.*)*x$', 're:(a|aa)*c']\n")],
         code=0, absent=[])
    # A tensor name of 20,000 characters against patterns that backtracking engines take
    # exponential time on: linear matching finishes at once (and skips the tensor).
    long_name = "model.layers.0.mlp." + "a" * 20_000 + ".weight"
    variant("long_name", extra=lambda d: add_tensor(d, long_name, np.ones((4, 8), dtype=np.float32)))
    case("ok_catastrophic_long_name", ["run", "-q", spec("ok_catastrophic_long_name", "sparsity: 0.5\ntargets: ['re:.*proj']\n"
                                                         "ignore: ['re:model\\.layers\\.0\\.mlp\\.(a*)*b', 're:(.*)*(.*)*x$', 're:(a|aa)*(a|aa)*c$']\n",
                                                         model="m-long_name")], code=0, absent=[])
    gguf_case("ok_gguf", gguf_llama(), "", code=0)
    cases[-1]["absent"] = []

    # Job spec: sizes bounded before anything is allocated.
    for key, value, expect in [
            ("samples", 2147483648, "calibration.samples: 2147483648 is more than the limit of 65536"),
            ("tokens", 10 ** 12, "calibration.tokens: 1000000000000 is more than the limit of 131072"),
            ("samples", -1, "calibration.samples: must be an integer ≥ 1"),
            ("tokens", 1, "calibration.tokens: must be an integer ≥ 2"),
            ("samples_per_task", 2 ** 62, "calibration.samples_per_task: 4611686018427387904 is more than the limit"),
            ("samples", "1e9", "calibration.samples: must be an integer ≥ 1")]:
        n = f"spec_{key}_{str(value).replace('-', 'neg').replace('+', '')}"
        body = "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, %s: %s}\n" % (key, value)
        case(n, ["run", spec(n, body)], expect)
    case("spec_samples_x_tokens", ["run", spec("spec_samples_x_tokens",
         "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 65536, tokens: 4096}\n")],
         "samples × tokens = 65536 × 4096 is more than the limit of 4194304 tokens")
    case("spec_task_x_tokens", ["run", spec("spec_task_x_tokens",
         "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 64, tokens: 16384, samples_per_task: 64}\n")],
         "samples_per_task × tokens = 64 × 16384 is more than the limit of 131072 tokens per task")
    case("spec_eval_samples", ["run", spec("spec_eval_samples", "sparsity: 0.5\nevaluation: {data: ids.npy, samples: 2147483648}\n")],
         "evaluation.samples: 2147483648 is more than the limit of 65536")
    case("spec_eval_x_tokens", ["run", spec("spec_eval_x_tokens", "sparsity: 0.5\nevaluation: {data: ids.npy, samples: 4096, tokens: 4096}\n")],
         "evaluation: samples × tokens = 4096 × 4096 is more than the limit of 1048576 tokens")

    # Job spec: regexes (catastrophic ones finish at once), list sizes, entry sizes.
    case("re_catastrophic_targets", ["run", spec("re_catastrophic_targets", "sparsity: 0.5\ntargets: ['re:(.*)*(.*)*(.*)*x$', 're:(a|aa)*c$']\n")],
         "targets: no prunable tensor matched")
    case("re_lookahead", ["run", spec("re_lookahead", "sparsity: 0.5\ntargets: ['re:.*(?=mlp)']\n")],
         "'re:.*(?=mlp)' is not a valid regular expression: lookahead (?=...) is not supported at position 2")
    case("re_backreference", ["run", spec("re_backreference", "sparsity: 0.5\nignore: ['re:(a)\\1']\n")],
         "ignore: 're:(a)\\1' is not a valid regular expression: backreferences (\\1) are not supported")
    case("re_unbalanced", ["run", spec("re_unbalanced", "sparsity: 0.5\ntargets: ['re:(']\n")],
         "'re:(' is not a valid regular expression: missing ), unterminated subpattern at position 0")
    case("re_blowup", ["run", spec("re_blowup", "sparsity: 0.5\ntargets: ['re:((a{100}){100}){100}']\n")],
         "the pattern is too large")
    case("re_possessive", ["run", spec("re_possessive", "sparsity: 0.5\ntargets: ['re:.*+']\n")], "possessive quantifiers are not supported")
    many = "".join(f"  - model.layers.{i}.mlp.up_proj.weight\n" for i in range(300_000))
    case("targets_300000", ["run", spec("targets_300000", "sparsity: 0.5\ntargets:\n" + many)],
         "'targets' has 300000 entries, more than the limit of 100000")
    regexes = "".join(f"  - re:a{i}\n" for i in range(1001))
    case("ignore_1001_regexes", ["run", spec("ignore_1001_regexes", "sparsity: 0.5\nignore:\n" + regexes)], "more than 1000 re: entries")
    heavy = "".join(f"  - re:model\\.layers\\.{i}\\.mlp\\.(gate|up|down)_proj\n" for i in range(1000))
    case("ignore_heavy_regexes", ["run", spec("ignore_heavy_regexes", "sparsity: 0.5\nignore:\n" + heavy)],
         "the re: entries together compile to more than 10000 states")
    case("entry_1mb", ["run", spec("entry_1mb", "sparsity: 0.5\ntargets: ['%s']\n" % ("w" * 1_000_000))],
         "targets: an entry of 1000000 bytes is longer than the limit of 1024")
    case("path_10mb", ["run", spec("path_10mb", "sparsity: 0.5\n", model="/nonexistent/" + "p" * 10_000_000)],
         ": no such file or directory")
    with open(os.path.join(OUT, "spec_17mb.yaml"), "w") as f:
        f.write("model: model\noutput: out-spec_17mb\nsparsity: 0.5\n" + "#" * (17 << 20) + "\n")
    size = os.path.getsize(os.path.join(OUT, "spec_17mb.yaml"))
    case("spec_17mb", ["run", "spec_17mb.yaml"], f"the job spec is {size} bytes, more than the limit of 16 MiB")
    os.symlink("/dev/zero", os.path.join(OUT, "spec_devzero.yaml"))
    case("spec_devzero", ["run", "spec_devzero.yaml"], "the job spec is not a regular file", absent=[])
    with open(os.path.join(OUT, "output_in_model.yaml"), "w") as f:
        f.write("model: model\noutput: model/job\nsparsity: 0.5\n")
    case("output_in_model", ["run", "output_in_model.yaml"], "is inside the model directory", absent=["model/job"])
    with open(os.path.join(OUT, "model_in_output.yaml"), "w") as f:
        f.write("model: model\noutput: .\nsparsity: 0.5\n")
    case("model_in_output", ["run", "model_in_output.yaml"], "is inside the output directory", absent=[])

    # config.json: every value the forward pass uses, checked against its meaning and the checkpoint.
    for name, changes, expect in [
            ("layers_neg", {"num_hidden_layers": -1}, "num_hidden_layers -1 is out of range (must be in 1...1024)"),
            ("layers_1e6", {"num_hidden_layers": 10 ** 6}, "num_hidden_layers 1000000 is out of range"),
            ("layers_2e62", {"num_hidden_layers": 2 ** 62}, "num_hidden_layers 4611686018427387904 is out of range"),
            ("layers_float", {"num_hidden_layers": 1e30}, "num_hidden_layers must be an integer, found 1e+30"),
            ("layers_more", {"num_hidden_layers": 3}, "tensor 'model.layers.2.input_layernorm.weight' is missing"),
            ("layers_fewer", {"num_hidden_layers": 1}, "tensor 'model.layers.1."),
            ("rope_theta_zero", {"rope_theta": 0}, "rope_theta 0.0 is not a positive number"),
            ("rope_theta_neg", {"rope_theta": -10000.0}, "rope_theta -10000.0 is not a positive number"),
            ("rms_eps_neg", {"rms_norm_eps": -1e-6}, "rms_norm_eps -1e-06 is not a small positive number"),
            ("hidden_act_relu", {"hidden_act": "relu"}, "hidden_act 'relu' is not supported: the forward pass computes SiLU"),
            ("mlp_bias", {"mlp_bias": True}, "mlp.gate_proj.bias' is missing"),
            ("hidden_str", {"hidden_size": "32"}, "hidden_size must be an integer, found '32'"),
            ("tie_str", {"tie_word_embeddings": "no"}, "tie_word_embeddings must be true or false, found 'no'"),
            ("vocab_mismatch", {"vocab_size": VOCAB + 1}, "tensor 'model.embed_tokens.weight' has shape [300, 32], "),
            ("heads_uneven", {"num_attention_heads": 3, "num_key_value_heads": 3}, "inconsistent attention shape"),
            ("head_dim_odd", {"head_dim": 7}, "inconsistent attention shape"),
            ("rope_scaling", {"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling is not supported yet"),
            ("sliding_window", {"sliding_window": 8}, "calibration.tokens 16 is more than sliding_window 8")]:
        case("config_" + name, ["run", spec("config_" + name, wanda(), model=variant(name, cfg=config(**changes)))], expect)
    case("config_layers_neg_local", ["run", "--workers", "0", "config_layers_neg.yaml"], "num_hidden_layers -1 is out of range",
         absent=["out-config_layers_neg"])
    big = config()
    big["padding"] = "x" * 10_000_000
    case("config_10mb", ["run", spec("config_10mb", wanda(), model=variant("config_10mb", cfg=big))],
         "the config is 10000", )
    case("config_not_json", ["run", spec("config_not_json", wanda(), model=variant("not_json", cfg=b"{\"hidden_size\": 32,"))],
         "cannot read a JSON config")
    case("config_devzero", ["run", spec("config_devzero", wanda(),
                                        model=variant("devzero", extra=lambda d: (os.remove(os.path.join(d, "config.json")),
                                                                                  os.symlink("/dev/zero", os.path.join(d, "config.json")))))],
         "the config is not a regular file")
    case("config_extra_bias", ["run", spec("config_extra_bias", wanda(), model=variant("extra_bias", extra=add_bias))],
         "'model.layers.0.self_attn.o_proj.bias' is not used by the LlamaForCausalLM forward pass")

    # Token ids: checked against int32 and the vocabulary, never truncated.
    wide = ids.astype(np.int64)
    wide[2, 3] = 2 ** 32 + 5
    npy(os.path.join(OUT, "ids_2e32.npy"), wide)
    case("ids_int64_2e32", ["run", spec("ids_int64_2e32", wanda("ids_2e32.npy"))], "token id 4294967301 at [2, 3] is not a token id")
    case("ids_int64_2e32_local", ["run", "--workers", "0", "ids_int64_2e32.yaml"], "token id 4294967301 at [2, 3]", absent=["out-ids_int64_2e32"])
    neg = ids.copy()
    neg[0, 0] = -7
    npy(os.path.join(OUT, "ids_neg.npy"), neg)
    case("ids_negative", ["run", spec("ids_negative", wanda("ids_neg.npy"))], "token id -7 (window 0, position 0) is outside the model's vocabulary (0..<300)")
    over = ids.copy()
    over[1, 5] = VOCAB
    npy(os.path.join(OUT, "ids_over.npy"), over)
    case("ids_over_vocab", ["run", spec("ids_over_vocab", wanda("ids_over.npy"))], "token id 300 (window 1, position 5) is outside the model's vocabulary")
    npy(os.path.join(OUT, "ids_same.npy"), np.zeros((8, 16), dtype=np.int32))
    case("ids_all_same", ["run", spec("ids_all_same", wanda("ids_same.npy"))], "every token of the windows is the id 0; degenerate data")
    npy(os.path.join(OUT, "ids_float.npy"), ids.astype(np.float32))
    case("ids_float", ["run", spec("ids_float", wanda("ids_float.npy"))], "token ids must be little-endian int32 or int64")
    with open(os.path.join(OUT, "ids_shape.npy"), "wb") as f:
        header = "{'descr': '<i4', 'fortran_order': False, 'shape': (1099511627776, 2), }"
        header += " " * (-(10 + len(header) + 1) % 64) + "\n"
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + ids.tobytes())
    case("ids_huge_shape", ["run", spec("ids_huge_shape", wanda("ids_shape.npy"))], "does not match the file size")
    save_file({"input_ids": ids.astype(np.float32)}, os.path.join(OUT, "ids_float.safetensors"))
    case("ids_safetensors_float", ["run", spec("ids_safetensors_float", wanda("ids_float.safetensors"))], "must be int32 or int64 [N, T], is F32")
    case("eval_ids_over_vocab", ["run", spec("eval_ids_over_vocab", "sparsity: 0.5\nevaluation: {data: ids_over.npy, samples: 4, tokens: 16}\n")],
         "token id 300 (window 1, position 5) is outside the model's vocabulary")

    # Tokenizers (text calibration data).
    base = tokenizer()
    case("tok_added_2e40", ["run", spec("tok_added_2e40", wanda("text.txt"), model=variant(
        "tok_added_2e40", tok=dict(base, added_tokens=[{"id": 2 ** 40, "content": "<|x|>", "special": True}])))],
         "added token \"<|x|>\" has id 1099511627776, expected 0..<")
    case("tok_added_2e31", ["run", spec("tok_added_2e31", wanda("text.txt"), model=variant(
        "tok_added_2e31", tok=dict(base, added_tokens=[{"id": 2 ** 31 - 1, "content": "<|x|>", "special": True}])))],
         "has id 2147483647, expected 0..<")
    zero = tokenizer(vocab={c: 0 for c in byte_chars()}, merges=[])
    case("tok_all_zero", ["run", spec("tok_all_zero", wanda("text.txt"), model=variant("tok_all_zero", tok=zero))], "have the same id 0")
    unk = tokenizer(vocab={"<unk>": 0, "~": 1}, merges=[], unk="<unk>")
    case("tok_unk_only", ["run", spec("tok_unk_only", wanda("text.txt"), model=variant("tok_unk_only", tok=unk))],
         "to the one id 0; a degenerate tokenizer or text")
    negid = tokenizer()
    negid["model"]["vocab"]["Ġa"] = -3
    case("tok_negative_id", ["run", spec("tok_negative_id", wanda("text.txt"), model=variant("tok_negative_id", tok=negid))],
         "vocabulary token \"Ġa\" has id -3")
    case("tok_not_json", ["run", spec("tok_not_json", wanda("text.txt"), model=variant("tok_not_json", tok=b"{\"model\": "))], "not valid JSON")
    case("tok_huge", ["run", spec("tok_huge", wanda("text.txt"), model=variant(
        "tok_huge", extra=lambda d: os.truncate(os.path.join(d, "tokenizer.json"), (64 << 20) + 1)))],
         "the tokenizer is 67108865 bytes, more than the limit of 64 MiB")

    # Other files read whole: bounded, and never read from a device or a FIFO.
    os.symlink("/dev/zero", os.path.join(OUT, "devzero"))
    case("key_devzero", ["coordinator", "--job", "ok_magnitude.yaml", "--bind", "tcp://127.0.0.1:9", "--curve-secret", "devzero",
                         "--allow", "devzero"], "devzero: cannot read the key file", absent=["out-ok_magnitude"])
    os.makedirs(os.path.join(OUT, "job-devzero", "out"))
    os.symlink("/dev/zero", os.path.join(OUT, "job-devzero", "out", "manifest.json"))
    case("manifest_devzero", ["check", "model", "job-devzero"], "the manifest is not a regular file", absent=[])
    os.makedirs(os.path.join(OUT, "index-devzero"))
    os.symlink("/dev/zero", os.path.join(OUT, "index-devzero", "model.safetensors.index.json"))
    case("index_devzero", ["inspect", "index-devzero"], "the index is not a regular file", absent=[])

    # GGUF import.
    gguf_case("gguf_blocks_2e30", gguf_llama(**{"llama.block_count": ("u32", 2 ** 30)}),
              "llama.block_count 1073741824 is more than the file's 11 tensors could hold (9 per block)")
    gguf_case("gguf_eps_nan", gguf_llama(**{"llama.attention.layer_norm_rms_epsilon": ("f32", math.nan)}),
              "llama.attention.layer_norm_rms_epsilon nan is not a small positive number")
    gguf_case("gguf_eps_neg", gguf_llama(**{"llama.attention.layer_norm_rms_epsilon": ("f32", -1e-5)}),
              "layer_norm_rms_epsilon -1e-05 is not a small positive number")
    gguf_case("gguf_theta_inf", gguf_llama(**{"llama.rope.freq_base": ("f64", math.inf)}), "llama.rope.freq_base inf is not a positive number")
    gguf_case("gguf_scaling_inf", gguf_llama(**{"llama.rope.scaling.type": ("str", "linear"), "llama.rope.scaling.factor": ("f32", math.inf)}),
              "llama.rope.scaling.factor is missing or not a positive number")
    gguf_case("gguf_token_not_utf8", gguf_llama(**{"tokenizer.ggml.tokens": ("arr:str", ["<unk>", b"a\xff", "b", "ab"])}),
              "tokenizer.ggml.tokens[1] is not valid UTF-8")
    blob = gguf_llama()
    gguf_case("gguf_tensor_count_2e40", blob[:8] + struct.pack("<Q", 2 ** 40) + blob[16:], "the tensor count 1099511627776 is more than")


def add_tensor(d, name, value):
    from safetensors.numpy import load_file
    t = load_file(os.path.join(d, "model.safetensors"))
    t[name] = value
    save_file(t, os.path.join(d, "model.safetensors"))


def add_bias(d):
    add_tensor(d, "model.layers.0.self_attn.o_proj.bias", np.zeros(HIDDEN, dtype=np.float32))


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    a = ap.parse_args()
    OUT = a.dir
    os.makedirs(OUT, exist_ok=True)
    build()
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    write_json(os.path.join(OUT, "cases.json"), cases)
    print(f"{len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
