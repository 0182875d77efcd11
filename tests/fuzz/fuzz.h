// Fuzz targets for every parser (docs/fuzzing.md). Each tests/fuzz/fuzz_<name>.cpp defines one
// function that feeds an input through a parser (and through what its callers then do with the
// result). The contract it checks: the parser returns a valid result or throws moe::Error. Any
// other exception, a crash, a sanitizer report, a hang or a huge allocation is a finding.
//
// The same functions serve two drivers: libFuzzer (MOE_FUZZ=ON, one executable per target, entry
// point from MOE_FUZZ_TARGET) and test_fuzz_corpus (every file of tests/fuzz/corpus/<name>/ through
// its target, in the normal build and under ASan + UBSan).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include "moe/error.h"

namespace moe::fuzz {

// Each returns normally or throws moe::Error; anything else breaks the contract.
void safetensors(const std::string& input);    // a whole .safetensors file (header + data)
void train_config(const std::string& input);   // a training config (configs/*.json)
void hf_config(const std::string& input);      // a checkpoint's config.json
void trainer_state(const std::string& input);  // a checkpoint's trainer_state.json
void token_file(const std::string& input);     // a .tok file
void trace(const std::string& input);          // `moe generate --trace` lines (moe inspect --trace)
void metrics(const std::string& input);        // metrics.jsonl (moe report's reader)
void vocab(const std::string& input);          // a char tokenizer's vocab.json
void hf_index(const std::string& input);       // an HF folder's model.safetensors.index.json
void hf_family(const std::string& input);      // an HF folder's config.json (model families)
void tokenizer_json(const std::string& input); // a Hugging Face tokenizer.json (byte-level BPE)
void gguf(const std::string& input);           // a whole .gguf file (container, model, tokenizer)

// A result the parser returned must hold what its type promises; a broken promise is a finding.
#define MOE_FUZZ_ASSERT(cond)                                                                 \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::fprintf(stderr, "fuzz: %s:%d: invariant '%s' broken by an accepted input\n", \
                         __FILE__, __LINE__, #cond);                                          \
            std::abort();                                                                     \
        }                                                                                     \
    } while (0)

// An accepted input must survive its own round trip (written, then read back): a moe::Error there
// means the parser accepted something it cannot write (a finding, not a refusal).
template <typename Fn>
void must_not_refuse(const char* what, Fn fn) {
    try {
        fn();
    } catch (const moe::Error& e) {
        std::fprintf(stderr, "fuzz: %s refused what the parser accepted: %s\n", what, e.what());
        std::abort();
    }
}

// libFuzzer's driver: moe::Error is a clean refusal; any other exception aborts with its type.
inline int run_one(void (*target)(const std::string&), const uint8_t* data, size_t size) {
    try {
        target(std::string((const char*)data, size));
    } catch (const moe::Error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz: contract broken: %s escaped the parser: %s\n", typeid(e).name(),
                     e.what());
        std::abort();
    } catch (...) {
        std::fprintf(stderr, "fuzz: contract broken: a non-std exception escaped the parser\n");
        std::abort();
    }
    return 0;
}

}  // namespace moe::fuzz

#ifdef MOE_FUZZ_ENTRY
#define MOE_FUZZ_TARGET(fn)                                                   \
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
        return moe::fuzz::run_one(&moe::fuzz::fn, data, size);                \
    }
#else
#define MOE_FUZZ_TARGET(fn)
#endif
