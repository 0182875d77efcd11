// Statistics behind the report and inspect (include/moe/stats.h). Sums run in double and in a
// fixed order, so a figure's numbers do not depend on threads.
#include "moe/stats.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "moe/error.h"

namespace moe {

double entropy(const std::vector<double>& w) {
    if (w.empty()) fail("entropy: empty distribution");
    double s = 0;
    for (size_t i = 0; i < w.size(); i++) {
        if (!std::isfinite(w[i]) || w[i] < 0)
            fail("entropy: weight {} is {} (weights must be finite and >= 0)", i, w[i]);
        s += w[i];
    }
    if (s <= 0) fail("entropy: all {} weights are 0", w.size());
    double h = 0;
    for (double v : w) {
        if (v <= 0) continue;  // 0 log 0 = 0
        double p = v / s;
        h -= p * std::log(p);
    }
    return h;
}

double cv(const std::vector<double>& x) {
    if (x.empty()) fail("cv: empty input");
    double mean = 0;
    for (double v : x) mean += v;
    mean /= (double)x.size();
    double var = 0;
    for (double v : x) var += (v - mean) * (v - mean);
    var /= (double)x.size();  // population variance, as Shazeer's cv_squared
    if (mean == 0) return var == 0 ? 0.0 : INFINITY;
    return std::sqrt(var) / std::fabs(mean);
}

std::vector<double> load_share(const std::vector<int64_t>& tokens_per_expert) {
    double s = 0;
    for (int64_t v : tokens_per_expert) {
        if (v < 0) fail("load_share: negative token count {}", v);
        s += (double)v;
    }
    std::vector<double> out(tokens_per_expert.size(), 0.0);
    if (s > 0)
        for (size_t i = 0; i < out.size(); i++) out[i] = (double)tokens_per_expert[i] / s;
    return out;
}

// Runs of consecutive rows where pred(share) holds for one expert, at least min_steps long.
template <typename Pred>
static std::vector<ExpertEvent> find_runs(const std::vector<int64_t>& steps,
                                          const std::vector<std::vector<double>>& shares,
                                          int min_steps, Pred pred, const char* what) {
    if (steps.size() != shares.size())
        fail("{}: {} steps but {} rows of shares", what, steps.size(), shares.size());
    std::vector<ExpertEvent> out;
    if (shares.empty()) return out;
    size_t E = shares[0].size();
    for (size_t i = 0; i < shares.size(); i++)
        if (shares[i].size() != E)
            fail("{}: row {} (step {}) has {} experts, row 0 has {}", what, i, steps[i],
                 shares[i].size(), E);
    min_steps = std::max(min_steps, 1);
    for (size_t e = 0; e < E; e++) {
        size_t i = 0;
        while (i < shares.size()) {
            if (!pred(shares[i][e])) {
                i++;
                continue;
            }
            size_t j = i;
            double sum = 0;
            while (j < shares.size() && pred(shares[j][e])) sum += shares[j++][e];
            int n = (int)(j - i);
            if (n >= min_steps) out.push_back({(int)e, steps[i], steps[j - 1], n, sum / n});
            i = j;
        }
    }
    return out;
}

std::vector<ExpertEvent> find_collapses(const std::vector<int64_t>& steps,
                                        const std::vector<std::vector<double>>& shares,
                                        double near_zero, int min_steps) {
    return find_runs(
        steps, shares, min_steps, [&](double s) { return s < near_zero; }, "find_collapses");
}

std::vector<ExpertEvent> find_dominance(const std::vector<int64_t>& steps,
                                        const std::vector<std::vector<double>>& shares,
                                        double max_share, int min_steps) {
    return find_runs(
        steps, shares, min_steps, [&](double s) { return s > max_share; }, "find_dominance");
}

std::vector<double> cosine_similarity_matrix(const float* rows, int n, int64_t dim) {
    if (n < 0 || dim < 0) fail("cosine_similarity_matrix: bad shape [{}, {}]", n, dim);
    std::vector<double> norm(n, 0.0), out((size_t)n * n, 0.0);
    for (int i = 0; i < n; i++) {
        const float* a = rows + (size_t)i * dim;
        double s = 0;
        for (int64_t k = 0; k < dim; k++) s += (double)a[k] * a[k];
        norm[i] = std::sqrt(s);
    }
    for (int i = 0; i < n; i++) {
        for (int j = i; j < n; j++) {
            double c = 0;
            if (norm[i] > 0 && norm[j] > 0) {
                const float* a = rows + (size_t)i * dim;
                const float* b = rows + (size_t)j * dim;
                double dot = 0;
                for (int64_t k = 0; k < dim; k++) dot += (double)a[k] * b[k];
                c = std::clamp(dot / (norm[i] * norm[j]), -1.0, 1.0);
            }
            out[(size_t)i * n + j] = out[(size_t)j * n + i] = c;
        }
    }
    return out;
}

std::vector<SimilarPair> redundant_pairs(const std::vector<double>& sim, int n, double threshold) {
    if ((int64_t)sim.size() != (int64_t)n * n)
        fail("redundant_pairs: matrix has {} entries, expected {}x{}", sim.size(), n, n);
    std::vector<SimilarPair> out;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            if (sim[(size_t)a * n + b] > threshold) out.push_back({a, b, sim[(size_t)a * n + b]});
    std::stable_sort(out.begin(), out.end(),
                     [](const SimilarPair& x, const SimilarPair& y) { return x.sim > y.sim; });
    return out;
}

const char* char_class_name(CharClass c) {
    switch (c) {
        case CharClass::lower:
            return "lowercase";
        case CharClass::upper:
            return "uppercase";
        case CharClass::digit:
            return "digit";
        case CharClass::punct:
            return "punctuation";
        case CharClass::space:
            return "space";
        case CharClass::newline:
            return "newline";
        case CharClass::speaker:
            return "speaker name";
        case CharClass::other:
            return "other";
    }
    return "?";
}

bool is_speaker_line(const std::string& line) {
    // "ROMEO:", "First Citizen:", "KING RICHARD III:", "LADY CAPULET:": words that start with a
    // capital, letters (and ' - .) inside, single spaces between, a ':' at the very end. Speech
    // lines that end in ':' ("Thus saith he:") have lowercase words and do not match.
    if (line.size() < 2 || line.size() > 48 || line.back() != ':') return false;
    bool word_start = true;
    for (size_t i = 0; i + 1 < line.size(); i++) {
        unsigned char ch = (unsigned char)line[i];
        if (ch == ' ') {
            if (word_start) return false;  // leading or double space
            word_start = true;
            continue;
        }
        if (word_start) {
            if (!(ch >= 'A' && ch <= 'Z')) return false;
            word_start = false;
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '\'' || ch == '-' ||
                  ch == '.';
        if (!ok) return false;
    }
    return !word_start;  // no trailing space before ':'
}

static CharClass class_of_char(unsigned char ch) {
    if (ch >= 'a' && ch <= 'z') return CharClass::lower;
    if (ch >= 'A' && ch <= 'Z') return CharClass::upper;
    if (ch >= '0' && ch <= '9') return CharClass::digit;
    if (ch == '\n') return CharClass::newline;
    if (ch == ' ' || ch == '\t' || ch == '\r') return CharClass::space;
    if (ch < 128 && std::ispunct(ch)) return CharClass::punct;
    return CharClass::other;
}

std::vector<CharClass> classify_pieces(const std::vector<std::string>& pieces) {
    static const std::string kWordMarker = "\xE2\x96\x81";  // SentencePiece's U+2581
    // Offsets of the pieces in the concatenated text, then the speaker lines of that text.
    std::string text;
    std::vector<size_t> start(pieces.size());
    for (size_t i = 0; i < pieces.size(); i++) {
        start[i] = text.size();
        text += pieces[i];
    }
    std::vector<char> speaker(text.size() + 1, 0);
    size_t line_begin = 0;
    for (size_t i = 0; i <= text.size(); i++) {
        if (i == text.size() || text[i] == '\n') {
            // A tag is only known to be complete when its newline follows (or the text ends).
            if (is_speaker_line(text.substr(line_begin, i - line_begin)))
                std::fill(speaker.begin() + line_begin, speaker.begin() + i, 1);
            line_begin = i + 1;
        }
    }
    std::vector<CharClass> out(pieces.size(), CharClass::other);
    for (size_t i = 0; i < pieces.size(); i++) {
        const std::string& p = pieces[i];
        if (p.empty()) continue;
        size_t k = 0;
        if (p.compare(0, kWordMarker.size(), kWordMarker) == 0) {
            if (p.size() == kWordMarker.size()) {
                out[i] = CharClass::space;  // a lone word marker is a space
                continue;
            }
            k = kWordMarker.size();  // "▁the": classify by the word's first letter
        }
        if (speaker[start[i] + k] && p[k] != '\n') {
            out[i] = CharClass::speaker;
            continue;
        }
        out[i] = class_of_char((unsigned char)p[k]);
    }
    return out;
}

static void check_table(const std::vector<double>& counts, int R, int C, const char* what) {
    if (R < 0 || C < 0 || (int64_t)counts.size() != (int64_t)R * C)
        fail("{}: table has {} entries, expected {}x{}", what, counts.size(), R, C);
    for (size_t i = 0; i < counts.size(); i++)
        if (!(counts[i] >= 0)) fail("{}: entry {} is {} (counts must be >= 0)", what, i, counts[i]);
}

std::vector<double> class_shares(const std::vector<double>& counts, int E, int C) {
    check_table(counts, E, C, "class_shares");
    std::vector<double> out(counts.size(), 0.0);
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int e = 0; e < E; e++) s += counts[(size_t)e * C + c];
        if (s > 0)
            for (int e = 0; e < E; e++) out[(size_t)e * C + c] = counts[(size_t)e * C + c] / s;
    }
    return out;
}

std::vector<double> expert_class_profile(const std::vector<double>& counts, int E, int C) {
    check_table(counts, E, C, "expert_class_profile");
    std::vector<double> out(counts.size(), 0.0);
    for (int e = 0; e < E; e++) {
        double s = 0;
        for (int c = 0; c < C; c++) s += counts[(size_t)e * C + c];
        if (s > 0)
            for (int c = 0; c < C; c++) out[(size_t)e * C + c] = counts[(size_t)e * C + c] / s;
    }
    return out;
}

std::vector<std::vector<TokenCount>> top_tokens_per_expert(const std::vector<double>& counts, int E,
                                                           int V, int n) {
    check_table(counts, E, V, "top_tokens_per_expert");
    std::vector<double> per_token(V, 0.0);
    for (int e = 0; e < E; e++)
        for (int v = 0; v < V; v++) per_token[v] += counts[(size_t)e * V + v];
    std::vector<std::vector<TokenCount>> out(E);
    for (int e = 0; e < E; e++) {
        std::vector<TokenCount> all;
        for (int v = 0; v < V; v++) {
            double c = counts[(size_t)e * V + v];
            if (c > 0) all.push_back({v, c, c / per_token[v]});
        }
        std::stable_sort(all.begin(), all.end(), [](const TokenCount& a, const TokenCount& b) {
            return a.count > b.count;
        });
        if ((int)all.size() > n) all.resize(std::max(n, 0));
        out[e] = std::move(all);
    }
    return out;
}

}  // namespace moe
