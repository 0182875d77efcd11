// Added tokens matched verbatim in the input (src/data/added_tokens.h).
#include "data/added_tokens.h"

#include <algorithm>

namespace moe {

size_t utf8_valid_len(const std::string& s, size_t i) {
    const size_t n = s.size();
    auto c = [&](size_t k) { return (unsigned char)s[k]; };
    unsigned char b = c(i);
    if (b < 0x80) return 1;
    size_t len;
    uint32_t cp;
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2, cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3, cp = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4, cp = b & 0x07;
    } else {
        return 0;  // continuation byte, C0/C1 (overlong), F5..FF
    }
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
        if ((c(i + k) & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (c(i + k) & 0x3f);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return 0;
    if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) return 0;
    return len;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += (char)cp;
    } else if (cp < 0x800) {
        out += (char)(0xc0 | (cp >> 6));
        out += (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += (char)(0xe0 | (cp >> 12));
        out += (char)(0x80 | ((cp >> 6) & 0x3f));
        out += (char)(0x80 | (cp & 0x3f));
    } else {
        out += (char)(0xf0 | (cp >> 18));
        out += (char)(0x80 | ((cp >> 12) & 0x3f));
        out += (char)(0x80 | ((cp >> 6) & 0x3f));
        out += (char)(0x80 | (cp & 0x3f));
    }
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens)
    : tokens_(tokens), by_first_byte_(256) {
    for (size_t t = 0; t < tokens_.size(); t++)
        if (!tokens_[t].content.empty())
            by_first_byte_[(unsigned char)tokens_[t].content[0]].push_back((int)t);
    // Longest first: at one position the longest token wins ("<|im_start|>" over "<").
    for (auto& v : by_first_byte_)
        std::stable_sort(v.begin(), v.end(), [&](int a, int b) {
            return tokens_[a].content.size() > tokens_[b].content.size();
        });
}

// HF strips what Rust's char::is_whitespace calls whitespace; the ASCII ones cover the tokens
// that set lstrip/rstrip in practice.
static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

void AddedTokenMatcher::split(const std::string& s, size_t begin, size_t end,
                              std::vector<TextPiece>& out) const {
    size_t text_start = begin;  // start of the plain text not yet emitted
    size_t i = begin;
    while (i < end) {
        int hit = -1;
        if (!tokens_.empty()) {
            for (int t : by_first_byte_[(unsigned char)s[i]]) {
                const std::string& c = tokens_[t].content;
                if (c.size() <= end - i && s.compare(i, c.size(), c) == 0) {
                    hit = t;
                    break;
                }
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        const AddedToken& tok = tokens_[hit];
        size_t mb = i, me = i + tok.content.size();
        if (tok.lstrip)
            while (mb > text_start && is_space(s[mb - 1])) mb--;
        if (tok.rstrip)
            while (me < end && is_space(s[me])) me++;
        if (mb > text_start) out.push_back({text_start, mb, -1});
        out.push_back({mb, me, tok.id});
        text_start = i = me;
    }
    if (end > text_start) out.push_back({text_start, end, -1});
}

}  // namespace moe
