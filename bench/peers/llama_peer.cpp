// llama.cpp as the inference peer (issue 9): loads a .gguf through llama.cpp's public llama.h,
// feeds prompt token ids, and prints one JSON object: the logits of every prompt position and
// the greedy continuation's ids. Built against a llama.cpp checkout outside the repository by
// scripts/build_llama_peer.sh (nothing of llama.cpp is in this repository).
//   llama_peer MODEL.gguf --prompt-ids 1,2,3 [--n 16] [--threads 2] [--f16-cache]
// The KV cache is F32 unless --f16-cache (llama.cpp's default F16 cache rounds K and V, which
// would hide an engine difference behind 1e-3 noise).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char* text, void*) {
    if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

static int usage() {
    std::fprintf(stderr, "usage: llama_peer MODEL.gguf --prompt-ids 1,2,3 [--n 16] [--threads 2] "
                         "[--f16-cache]\n");
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    std::string model_path = argv[1], ids_text;
    int n_gen = 16, threads = 2;
    bool f16_cache = false;
    for (int i = 2; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--prompt-ids" && i + 1 < argc) ids_text = argv[++i];
        else if (a == "--n" && i + 1 < argc) n_gen = std::atoi(argv[++i]);
        else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--f16-cache") f16_cache = true;
        else return usage();
    }
    std::vector<llama_token> prompt;
    for (size_t p = 0; p < ids_text.size();) {
        size_t q = ids_text.find(',', p);
        if (q == std::string::npos) q = ids_text.size();
        prompt.push_back((llama_token)std::atoi(ids_text.substr(p, q - p).c_str()));
        p = q + 1;
    }
    if (prompt.empty() || n_gen < 0) return usage();

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) {
        std::fprintf(stderr, "llama_peer: %s: llama.cpp cannot load it\n", model_path.c_str());
        return 1;
    }
    const llama_vocab* vocab = llama_model_get_vocab(model);
    const int V = llama_vocab_n_tokens(vocab);
    llama_context_params cp = llama_context_default_params();
    const int n_ctx = (int)prompt.size() + n_gen + 8;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = threads;
    if (!f16_cache) cp.type_k = cp.type_v = GGML_TYPE_F32;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "llama_peer: cannot create a context\n");
        return 1;
    }
    for (llama_token t : prompt)
        if (t < 0 || t >= V) {
            std::fprintf(stderr, "llama_peer: id %d outside the vocabulary of %d\n", t, V);
            return 1;
        }

    // The prompt in one batch with the logits of every position.
    llama_batch b = llama_batch_init((int)prompt.size(), 0, 1);
    for (size_t i = 0; i < prompt.size(); i++) {
        b.token[i] = prompt[i];
        b.pos[i] = (llama_pos)i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = (int)prompt.size();
    if (llama_decode(ctx, b) != 0) {
        std::fprintf(stderr, "llama_peer: llama_decode failed on the prompt\n");
        return 1;
    }
    std::printf("{\"n_vocab\": %d, \"prompt_logits\": [", V);
    llama_token next = 0;
    for (size_t i = 0; i < prompt.size(); i++) {
        const float* z = llama_get_logits_ith(ctx, (int)i);
        std::printf("%s[", i ? ", " : "");
        int best = 0;
        for (int v = 0; v < V; v++) {
            std::printf("%s%.9g", v ? ", " : "", z[v]);
            if (z[v] > z[best]) best = v;
        }
        std::printf("]");
        next = best;
    }
    llama_batch_free(b);
    // Greedy continuation, one token at a time (the KV-cache path).
    std::printf("], \"token_ids\": [");
    llama_pos pos = (llama_pos)prompt.size();
    for (int g = 0; g < n_gen; g++) {
        std::printf("%s%d", g ? ", " : "", next);
        if (g + 1 == n_gen) break;
        llama_batch one = llama_batch_init(1, 0, 1);
        one.token[0] = next;
        one.pos[0] = pos++;
        one.n_seq_id[0] = 1;
        one.seq_id[0][0] = 0;
        one.logits[0] = 1;
        one.n_tokens = 1;
        if (llama_decode(ctx, one) != 0) {
            std::fprintf(stderr, "llama_peer: llama_decode failed at step %d\n", g);
            return 1;
        }
        const float* z = llama_get_logits_ith(ctx, 0);
        int best = 0;
        for (int v = 1; v < V; v++)
            if (z[v] > z[best]) best = v;
        next = best;
        llama_batch_free(one);
    }
    std::printf("]}\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
