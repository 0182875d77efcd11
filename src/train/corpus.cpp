// Reading and splitting the training text; evaluation over consecutive windows.
#include <algorithm>
#include <cmath>

#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/trainer.h"

namespace moe {

std::string read_corpus_text(const std::string& path) {
    if (path.empty()) fail("no data file given (config key 'data')");
    if (dir_exists(path)) fail("data file {} is a folder", path);
    if (!file_exists(path)) fail("data file {} does not exist", path);
    std::string text = read_file(path);
    if (text.empty()) fail("data file {} is empty", path);
    return text;
}

void split_text(const std::string& text, double val_fraction, std::string* train,
                std::string* val) {
    size_t cut = (size_t)((double)text.size() * (1.0 - val_fraction));  // nanoGPT: int(n*0.9)
    while (cut > 0 && cut < text.size() && ((unsigned char)text[cut] >> 6) == 0x2) cut--;
    *train = text.substr(0, cut);
    *val = text.substr(cut);
}

Corpus tokenize_corpus(const std::string& text, double val_fraction, const Tokenizer& tok) {
    std::string tr, va;
    split_text(text, val_fraction, &tr, &va);
    Corpus c;
    c.train = tok.encode(tr);
    c.val = tok.encode(va);
    return c;
}

double evaluate_windows(Model& model, const std::vector<int32_t>& tokens, int S, int batch,
                        int64_t* n_predicted) {
    const int64_t n_win = (int64_t)(tokens.size() / ((size_t)S + 1));
    if (n_win < 1)
        fail("evaluation data has {} tokens, fewer than one window of block_size + 1 = {}",
             tokens.size(), S + 1);
    std::vector<int32_t> x((size_t)batch * S), y((size_t)batch * S);
    double total = 0;
    for (int64_t w0 = 0; w0 < n_win; w0 += batch) {
        int B = (int)std::min<int64_t>(batch, n_win - w0);
        for (int b = 0; b < B; b++) {
            const int32_t* src = tokens.data() + (size_t)(w0 + b) * (S + 1);
            std::copy(src, src + S, x.begin() + (size_t)b * S);
            std::copy(src + 1, src + S + 1, y.begin() + (size_t)b * S);
        }
        double loss = model.forward(x.data(), y.data(), B, S, /*training=*/false);
        if (!std::isfinite(loss))
            fail("evaluation: loss is {} on windows {}..{}", loss, w0, w0 + B - 1);
        total += loss * (double)B * S;
    }
    if (n_predicted) *n_predicted = n_win * S;
    return total / ((double)n_win * S);
}

}  // namespace moe
