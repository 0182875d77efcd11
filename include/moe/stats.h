// The statistics behind `moe report` and `moe inspect` (issue 5): entropy, CV, load shares,
// collapse and dominance detection, cosine similarity of experts, char classes and the
// expert x class / expert x token tables. Plain functions over plain vectors, each tested
// against hand-computed cases (tests/report/test_stats.cpp), so every number a figure shows has
// a test behind it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// Entropy in nats of the distribution proportional to w (w >= 0, normalised here; 0 log 0 = 0).
// Throws moe::Error on a negative or non-finite weight or an empty/all-zero input.
double entropy(const std::vector<double>& w);

// Coefficient of variation: population std / mean (DESIGN.md §4). 0 when every value is 0.
double cv(const std::vector<double>& x);

// Share of each expert in the token-slots: tokens_per_expert / sum (all zeros -> all zeros).
std::vector<double> load_share(const std::vector<int64_t>& tokens_per_expert);

// A run of consecutive logged steps where one expert's share met a condition.
struct ExpertEvent {
    int expert = 0;
    int64_t first_step = 0, last_step = 0;
    int n_steps = 0;        // logged steps in the run
    double mean_share = 0;  // the expert's mean share over those steps
};

// shares[i] is the load share per expert at logged step steps[i] (every row has E entries).
// Collapse: share < near_zero for at least min_steps consecutive logged steps.
std::vector<ExpertEvent> find_collapses(const std::vector<int64_t>& steps,
                                        const std::vector<std::vector<double>>& shares,
                                        double near_zero, int min_steps);
// Dominance: share > max_share for at least min_steps consecutive logged steps.
std::vector<ExpertEvent> find_dominance(const std::vector<int64_t>& steps,
                                        const std::vector<std::vector<double>>& shares,
                                        double max_share, int min_steps);

// Cosine similarity of the n rows of a row-major [n, dim] matrix: [n, n] row-major. A zero row
// has similarity 0 with everything, itself included (there is no direction to compare).
std::vector<double> cosine_similarity_matrix(const float* rows, int n, int64_t dim);

struct SimilarPair {
    int a = 0, b = 0;  // a < b
    double sim = 0;
};
// Pairs (a < b) with sim[a*n+b] > threshold, most similar first (ties: by a, then b).
std::vector<SimilarPair> redundant_pairs(const std::vector<double>& sim, int n, double threshold);

// Character classes of the char model's tokens (moe inspect --by char-class).
enum class CharClass { lower, upper, digit, punct, space, newline, speaker, other };
constexpr int kNumCharClasses = 8;
const char* char_class_name(CharClass c);
// The class of each piece, given the pieces of a text in order (their concatenation is the
// text). Speaker: every piece of a line that is a speaker tag as in Tiny Shakespeare
// ("ROMEO:", "First Citizen:", "KING RICHARD III:": capitalised words, then ':' and end of line),
// the ':' included. Otherwise by the piece's first character (SentencePiece's U+2581 word marker
// is skipped): a-z, A-Z, 0-9, ASCII punctuation, ' ' or '\t', '\n', other.
std::vector<CharClass> classify_pieces(const std::vector<std::string>& pieces);
// Is this line (without its '\n') a speaker tag?
bool is_speaker_line(const std::string& line);

// counts [E, C] row-major (token-slots of expert e on class c). For each class c, the share of its
// token-slots that went to each expert: out[e*C+c] = counts[e*C+c] / sum_e counts[.,c] (a class
// never seen gets 0 everywhere).
std::vector<double> class_shares(const std::vector<double>& counts, int E, int C);
// For each expert, how its token-slots split over the classes: rows sum to 1 (or are all 0).
std::vector<double> expert_class_profile(const std::vector<double>& counts, int E, int C);

struct TokenCount {
    int32_t token = 0;
    double count = 0;     // token-slots of this token routed to the expert
    double of_token = 0;  // count / all slots of this token (how exclusive the expert is)
};
// counts [E, V] row-major. For each expert its n most frequent tokens (ties: lower id first),
// zero counts left out.
std::vector<std::vector<TokenCount>> top_tokens_per_expert(const std::vector<double>& counts, int E,
                                                           int V, int n);

}  // namespace moe
