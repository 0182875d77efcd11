#!/usr/bin/env python3
"""Seeds of the tokenizer_json fuzz target (tests/fuzz/corpus/tokenizer_json/seed-*): small
tokenizer.json files in the shapes Qwen2/Qwen3 (Split with Qwen2's regex + ByteLevel, NFC, merges
as "a b"), OLMoE/GPT-NeoX (ByteLevel with GPT-2's regex, added runs of spaces) and newer files
(merges as [a, b], ignore_merges) publish, and a few that must be refused (WordPiece, a
byte-fallback BPE as Mixtral's, a bad regex). Imported by make_corpus.py; runs alone too:
    tokenizer_seeds.py [OUT_DIR]   (OUT_DIR: tests/fuzz/corpus)"""
import json
import os
import sys

QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_char(b):
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in keep:
        return chr(b)
    return chr(256 + [c for c in range(256) if c not in keep].index(b))


def bl(s):
    return "".join(byte_char(b) for b in s.encode())


def tokenizer(pre, normalizer=None, pairs=False, added=(), model_extra=None):
    vocab = {byte_char(b): b for b in range(256)}
    merges = []
    for a, b in [(" ", "t"), ("h", "e"), (" t", "he"), ("l", "l"), ("e", "ll"), ("'", "s"), ("\n", "\n")]:
        vocab.setdefault(bl(a + b), len(vocab))
        merges.append([bl(a), bl(b)] if pairs else bl(a) + " " + bl(b))
    added_tokens = []
    for content, normalized in [("<|endoftext|>", False), ("<|im_start|>", False)] + list(added):
        added_tokens.append({"id": len(vocab) + len(added_tokens), "content": content, "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": normalized, "special": not normalized})
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
             "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges}
    model.update(model_extra or {})
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
                       "normalizer": normalizer, "pre_tokenizer": pre,
                       "post_processor": {"type": "ByteLevel", "trim_offsets": False},
                       "decoder": {"type": "ByteLevel"}, "model": model}, ensure_ascii=False)


SPLIT = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def write_seeds(put):
    put("qwen2.json", tokenizer(SPLIT, {"type": "NFC"}))
    put("qwen3-pairs.json", tokenizer(SPLIT, None, pairs=True, model_extra={"ignore_merges": False}))
    put("olmoe.json", tokenizer(BYTELEVEL, {"type": "NFC"}, added=[("  ", True), ("   ", True)]))
    put("ignore-merges-prefix-space.json",
        tokenizer(dict(BYTELEVEL, add_prefix_space=True), pairs=True, model_extra={"ignore_merges": True}))
    put("split-string.json", tokenizer({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": False}]}))
    put("wordpiece.json", json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    put("byte-fallback.json", tokenizer(SPLIT, model_extra={"byte_fallback": True}))
    put("bad-regex.json", tokenizer({"type": "Split", "pattern": {"Regex": "(\\p{L}"}, "behavior": "Isolated"}))
    put("not-json.json", '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [')


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    d = os.path.join(out, "tokenizer_json")
    os.makedirs(d, exist_ok=True)

    def put(name, text):
        with open(os.path.join(d, "seed-" + name), "w", encoding="utf-8") as f:
            f.write(text)
    write_seeds(put)
