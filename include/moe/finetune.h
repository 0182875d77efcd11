// Fine-tuning helpers (issue 12, docs/training.md "Fine-tuning"): which tensors a --freeze spec
// selects, sparse upcycling of a dense checkpoint into an MoE model, and the mapping of symbols
// outside a char vocabulary. The trainer (src/train/trainer.cpp) wires them to the config keys
// freeze, upcycle_from, upcycle_noise and unknown_symbol.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/model.h"
#include "moe/tokenizer.h"

namespace moe {

// The named groups of --freeze, in the order the error messages list them.
const std::vector<std::string>& freeze_group_names();
// Whether a tensor name (HF naming, Model::params()) belongs to a named group; throws on an
// unknown group.
bool in_freeze_group(const std::string& group, const std::string& tensor);
// Shell-style glob over the whole name: '*' any run of characters (dots included), '?' one.
bool glob_match(const std::string& pattern, const std::string& name);

// A comma-separated list of groups and tensor-name globs (a glob is an item with '.', '*' or
// '?') -> frozen flag per params() entry. Throws moe::Error (`where` names the key or flag) on an
// unknown group, an item that matches no tensor (the message lists the groups) and a spec that
// freezes every tensor. An empty spec freezes nothing.
std::vector<uint8_t> resolve_freeze(const std::vector<ParamSpec>& params, const std::string& spec,
                                    const std::string& where = "freeze");

// Sparse upcycling (Komatsuzaki et al. 2022): every expert of MoE layer l starts as a copy of the
// dense SwiGLU FFN of layer l in the checkpoint `dense_dir` (gate_proj -> w1, up_proj -> w3,
// down_proj -> w2); attention, norms, embeddings, LM head and dense FFN layers are copied;
// routers keep moe's fresh init. noise > 0 multiplies each copied expert weight by
// (1 + noise * N(0,1)), drawn from `seed` (per layer and expert), so experts can diverge.
// Expert d_ff must equal the dense d_ff (slices are not supported). A tensor whose shape does not
// fit is an error naming it and both shapes. Returns the number of expert copies made.
int upcycle_params(Model& moe, const std::string& dense_dir, float noise, uint64_t seed);

// Char vocabularies: returns `text` with every symbol outside tok's vocabulary replaced by
// `replacement` (a symbol of the vocabulary); *n_replaced counts them. replacement == "":
// an unknown symbol is an error naming `where` (the file), the symbol, its byte offset and line.
// Other tokenizers (SentencePiece has byte fallback) return the text unchanged.
std::string map_unknown_symbols(const std::string& text, const Tokenizer& tok,
                                const std::string& replacement, const std::string& where,
                                int64_t* n_replaced = nullptr);

}  // namespace moe
