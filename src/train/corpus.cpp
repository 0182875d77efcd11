// Reading and splitting the training text; evaluation over consecutive windows.
#include <algorithm>
#include <cmath>

#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/trainer.h"

namespace moe {

std::string read_corpus_text(const std::string& path) {
    if (path.empty()) fail("config key 'data': no data file given; set it to a UTF-8 text file");
    std::string text = read_file(path);  // names missing files, folders, devices
    if (text.empty()) fail("{}: the data file is empty; give a UTF-8 text file", path);
    return text;
}

void check_utf8(const std::string& text, const std::string& path) {
    const unsigned char* s = (const unsigned char*)text.data();
    const size_t n = text.size();
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xe  ? 3
                     : (c >> 3) == 0x1e ? 4
                                        : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xc2) && !(len == 4 && c > 0xf4);
        for (size_t k = 1; ok && k < len; k++) ok = (s[i + k] >> 6) == 0x2;
        if (ok && len == 3) {
            unsigned cp = ((c & 0xfu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            ok = cp >= 0x800 && !(cp >= 0xd800 && cp <= 0xdfff);
        }
        if (ok && len == 4) {
            unsigned cp =
                ((c & 0x7u) << 18) | ((s[i + 1] & 0x3fu) << 12) | ((s[i + 2] & 0x3fu) << 6);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (!ok) {
            size_t line = 1 + (size_t)std::count(text.begin(), text.begin() + (long)i, '\n');
            fail(
                "{}: not UTF-8 text: invalid byte 0x{:02x} at byte {} (line {}); convert the "
                "file to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                path, c, i, line);
        }
        i += len;
    }
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
        fail(
            "evaluation data has {} tokens, fewer than one window of block_size + 1 = {}; give "
            "a longer text",
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
            fail(
                "evaluation: loss is {} on windows {}..{}; the checkpoint's weights are not "
                "usable (a diverged run?)",
                loss, w0, w0 + B - 1);
        total += loss * (double)B * S;
    }
    if (n_predicted) *n_predicted = n_win * S;
    return total / ((double)n_win * S);
}

}  // namespace moe
