// Models: GGUF import, tokenizers, forward passes.
