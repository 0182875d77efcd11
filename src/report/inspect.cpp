// `moe inspect`: which experts take which tokens. Routing of a text (or a generation trace) per
// token and layer, its aggregate over a corpus by char class or token, and the renderers
// (terminal with ANSI colours, JSON, self-contained HTML).
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "moe/error.h"
#include "moe/model.h"
#include "moe/moe_layer.h"
#include "moe/report.h"

#include "moe/hf_model.h"
#include "moe/stats.h"
#include "moe/tokenizer.h"
#include "report/html.h"

namespace moe {

using report::expert_color;
using report::expert_text_color;
using report::html_escape;
using report::visible_token;

std::vector<TokenRouting> route_text(Model& model, const Tokenizer& tok, const std::string& text,
                                     int max_tokens, int batch) {
    std::vector<int32_t> ids;
    try {
        ids = tok.encode(text);
    } catch (const Error& e) {
        fail(
            "the text does not fit the checkpoint's tokenizer ({}, {} symbols): {}; use only "
            "characters the model was trained on",
            tok.kind(), tok.vocab_size(), e.what());
    }
    if (ids.empty()) fail("the text is empty: nothing to route; give some text");
    if (max_tokens > 0 && (int)ids.size() > max_tokens) ids.resize(max_tokens);
    const ModelConfig& mc = model.config();
    std::vector<int> layers;
    for (int l = 0; l < mc.n_layers; l++)
        if (model.moe_layer(l)) layers.push_back(l);
    if (layers.empty())
        fail(
            "the model has no MoE layer (moe_every = {}): nothing to inspect; give a MoE "
            "checkpoint",
            mc.moe_every);
    std::vector<TokenRouting> out(ids.size());
    for (size_t i = 0; i < ids.size(); i++) {
        out[i].pos = (int)i;
        out[i].token = ids[i];
        out[i].text = tok.piece(ids[i]);
        out[i].layers.resize(layers.size());
        for (size_t li = 0; li < layers.size(); li++) out[i].layers[li].layer = layers[li];
    }
    // Chunks of block_size, each from an empty context (the model has no longer memory); up to
    // `batch` full chunks per forward, the short tail alone. Row b*S+s of a forward is token
    // start + b*S + s, so the layer's token index maps straight back.
    const int S = mc.block_size;
    batch = std::max(batch, 1);
    for (size_t start = 0; start < ids.size();) {
        size_t left = ids.size() - start;
        int B = left >= (size_t)S ? (int)std::min<size_t>(batch, left / S) : 1;
        int n = B > 1 || left >= (size_t)S ? S : (int)left;
        model.forward(ids.data() + start, nullptr, B, n, /*training=*/false);
        for (size_t li = 0; li < layers.size(); li++) {
            for (const auto& a : model.moe_layer(layers[li])->last_assignments()) {
                if (a.expert < 0) continue;  // unused slot (GShard's second expert not sent)
                MOE_CHECK(a.token >= 0 && a.token < B * n,
                          "assignment token {} outside a forward of {} tokens", a.token, B * n);
                LayerChoice& c = out[start + a.token].layers[li];
                c.experts.push_back(a.expert);
                c.weights.push_back(a.weight);
                c.kept.push_back(a.kept ? 1 : 0);
            }
        }
        start += (size_t)B * n;
    }
    for (auto& t : out)
        for (auto& c : t.layers) {  // by decreasing weight
            std::vector<size_t> idx(c.experts.size());
            std::iota(idx.begin(), idx.end(), 0);
            std::stable_sort(idx.begin(), idx.end(),
                             [&](size_t a, size_t b) { return c.weights[a] > c.weights[b]; });
            LayerChoice s;
            s.layer = c.layer;
            for (size_t i : idx) {
                s.experts.push_back(c.experts[i]);
                s.weights.push_back(c.weights[i]);
                s.kept.push_back(c.kept[i]);
            }
            c = std::move(s);
        }
    return out;
}

std::vector<TokenRouting> route_ids_hf(HfModel& model, const std::vector<int32_t>& ids,
                                       const std::function<std::string(int32_t)>& piece,
                                       int chunk) {
    const HfConfig& c = model.config();
    if (ids.empty()) fail("the text is empty: nothing to route; give some text");
    chunk = std::max(1, std::min(chunk, c.max_positions));
    std::vector<TokenRouting> out(ids.size());
    for (size_t start = 0; start < ids.size(); start += (size_t)chunk) {
        const int n = (int)std::min<size_t>(chunk, ids.size() - start);
        model.cache_reset();
        model.cache_feed(ids.data() + start, n);
        for (int t = 0; t < n; t++) {
            TokenRouting& r = out[start + t];
            r.pos = (int)(start + t);
            r.token = ids[start + t];
            r.text = piece(r.token);
            for (int l = 0; l < c.n_layers; l++) {
                if (!c.moe_layer[l]) continue;
                LayerChoice ch;
                ch.layer = l;
                for (int i = 0; i < c.top_k; i++) {  // already by decreasing weight
                    ch.experts.push_back(model.last_experts()[l][(size_t)t * c.top_k + i]);
                    ch.weights.push_back(model.last_weights()[l][(size_t)t * c.top_k + i]);
                    ch.kept.push_back(1);
                }
                r.layers.push_back(std::move(ch));
            }
        }
    }
    return out;
}

// Layer ids present in a routing (in order of first appearance).
static std::vector<int> routing_layers(const std::vector<TokenRouting>& r) {
    std::vector<int> ls;
    for (auto& t : r)
        for (auto& c : t.layers)
            if (std::find(ls.begin(), ls.end(), c.layer) == ls.end()) ls.push_back(c.layer);
    return ls;
}

static int routing_experts(const std::vector<TokenRouting>& r) {
    int E = 0;
    for (auto& t : r)
        for (auto& c : t.layers)
            for (int e : c.experts) E = std::max(E, e + 1);
    return E;
}

static std::vector<int> chosen_layers(const std::vector<int>& all, int only_layer) {
    if (only_layer < 0) return all;
    if (std::find(all.begin(), all.end(), only_layer) == all.end()) {
        std::string have;
        for (int l : all) have += (have.empty() ? "" : ", ") + std::to_string(l);
        fail("--layer {}: not a MoE layer here; give one of the MoE layers: {}", only_layer, have);
    }
    return {only_layer};
}

static const LayerChoice* find_layer(const TokenRouting& t, int layer) {
    for (auto& c : t.layers)
        if (c.layer == layer) return &c;
    return nullptr;
}

RoutingAggregate aggregate_routing(const std::vector<TokenRouting>& routing,
                                   const std::vector<std::string>& vocab_text, int n_experts,
                                   const std::string& by) {
    if (by != "char-class" && by != "token")
        usage_fail("--by {}: expected char-class or token; give one of those", by);
    RoutingAggregate a;
    a.by = by;
    a.n_tokens = (int)routing.size();
    a.n_experts = n_experts > 0 ? n_experts : routing_experts(routing);
    int max_id = -1;
    for (auto& t : routing) max_id = std::max(max_id, (int)t.token);
    a.vocab = std::max((int)vocab_text.size(), max_id + 1);
    // The tables are E x classes and E x vocab per layer (classes = vocab with --by token): refuse
    // sizes no real model has rather than allocate them (a trace's token ids and experts are read
    // from a file).
    if ((double)a.n_experts * 2 * a.vocab > (double)(1 << 25))
        fail(
            "routing names {} experts and token ids up to {}: an aggregate table of {:.3g} "
            "entries is too large; is this a `moe generate --trace` file of this model?",
            a.n_experts, a.vocab - 1, (double)a.n_experts * a.vocab);
    a.vocab_text = vocab_text;
    a.vocab_text.resize(a.vocab);
    for (auto& t : routing)  // traces carry the text of each token
        if (t.token >= 0 && a.vocab_text[t.token].empty()) a.vocab_text[t.token] = t.text;

    std::vector<int> cls(routing.size());
    if (by == "char-class") {
        std::vector<std::string> pieces;
        for (auto& t : routing) pieces.push_back(t.text);
        auto cc = classify_pieces(pieces);
        for (size_t i = 0; i < cc.size(); i++) cls[i] = (int)cc[i];
        for (int c = 0; c < kNumCharClasses; c++)
            a.classes.push_back(char_class_name((CharClass)c));
    } else {
        // A trace line without a token id (-1) has no class: it is not counted.
        for (size_t i = 0; i < routing.size(); i++) cls[i] = (int)routing[i].token;
        a.classes = a.vocab_text;
    }
    const int E = a.n_experts, C = (int)a.classes.size(), V = a.vocab;
    for (int l : routing_layers(routing)) {
        RoutingAggregate::Layer L;
        L.layer = l;
        L.counts.assign((size_t)E * C, 0.0);
        L.token_counts.assign((size_t)E * V, 0.0);
        L.class_tokens.assign(C, 0.0);
        for (size_t i = 0; i < routing.size(); i++) {
            const LayerChoice* c = find_layer(routing[i], l);
            if (!c || cls[i] < 0) continue;
            L.class_tokens[cls[i]] += 1;
            for (size_t j = 0; j < c->experts.size(); j++) {
                int e = c->experts[j];
                if (e < 0 || !c->kept[j]) continue;
                if (e >= E)
                    fail(
                        "routing of token {} names expert {} but there are {}; is this trace "
                        "from this model?",
                        i, e, E);
                L.counts[(size_t)e * C + cls[i]] += 1;
                if (routing[i].token >= 0) L.token_counts[(size_t)e * V + routing[i].token] += 1;
            }
        }
        L.shares = class_shares(L.counts, E, C);
        L.profile = expert_class_profile(L.counts, E, C);
        a.layers.push_back(std::move(L));
    }
    return a;
}

// ---- terminal ----------------------------------------------------------------------------------

static int ansi_code(int e) {
    // 256-colour approximations of the tab10 colours used in the HTML pages.
    static const int k[] = {32, 208, 34, 160, 98,  130, 205, 244, 142, 37,
                            27, 214, 40, 196, 135, 172, 213, 250, 184, 51};
    return k[e % 20];
}

// Black text on the light backgrounds, white on the dark ones.
static const char* ansi_fg(int e) {
    switch (ansi_code(e)) {
        case 208:
        case 142:
        case 37:
        case 214:
        case 40:
        case 184:
        case 51:
        case 250:
        case 213:
        case 205:
        case 244:
            return "\x1b[30m";
        default:
            return "\x1b[97m";
    }
}

std::string routing_terminal(const std::vector<TokenRouting>& r, int only_layer, bool color) {
    std::string out;
    std::vector<int> layers = chosen_layers(routing_layers(r), only_layer);
    int E = routing_experts(r);
    if (color) {
        out += "experts: ";
        for (int e = 0; e < E; e++)
            out += fmt::format("\x1b[48;5;{}m{} {} \x1b[0m ", ansi_code(e), ansi_fg(e), e);
        out += "\n";
        for (int l : layers) {
            out += fmt::format("\nlayer {} (colour: first-choice expert)\n", l);
            for (auto& t : r) {
                const LayerChoice* c = find_layer(t, l);
                int e = c && !c->experts.empty() ? c->experts[0] : -1;
                std::string txt = t.text == "\n" ? "\xE2\x86\xB5" : visible_token(t.text);
                if (e >= 0)
                    out += fmt::format("\x1b[48;5;{}m{}{}\x1b[0m", ansi_code(e), ansi_fg(e), txt);
                else
                    out += txt;
                if (t.text.find('\n') != std::string::npos) out += "\n";
            }
            out += "\n";
        }
        out += "\n";
    }
    // The table: one row per token, experts:weights per layer (an x marks a dropped slot).
    out += fmt::format("{:>5}  {:<8}", "pos", "token");
    for (int l : layers) out += fmt::format("  {:<22}", fmt::format("layer {}", l));
    out += "\n";
    for (auto& t : r) {
        std::string txt = visible_token(t.text);
        out += fmt::format("{:>5}  {:<8}", t.pos, "'" + txt + "'");
        for (int l : layers) {
            const LayerChoice* c = find_layer(t, l);
            std::string cell, plain;
            if (c)
                for (size_t j = 0; j < c->experts.size(); j++) {
                    std::string item = fmt::format("{}:{:.2f}{}", c->experts[j], c->weights[j],
                                                   c->kept[j] ? "" : "x");
                    plain += (j ? " " : "") + item;
                    if (color)
                        cell += (j ? " " : "") + fmt::format("\x1b[38;5;{}m{}\x1b[0m",
                                                             ansi_code(c->experts[j]), item);
                }
            if (!color) cell = plain;
            // Pad by the visible width (escape codes take no room).
            int pad = std::max(0, 22 - (int)plain.size());
            out += "  " + cell + std::string(pad, ' ');
        }
        out += "\n";
    }
    return out;
}

// ---- HTML ------------------------------------------------------------------------------------

static std::string legend_html(int E) {
    std::string s = "<p class=\"legend\">experts: ";
    for (int e = 0; e < E; e++)
        s += fmt::format("<span style=\"background:{};color:{}\">{}</span>", expert_color(e, E),
                         expert_text_color(e, E), e);
    return s + "</p>\n";
}

static std::string choice_title(const TokenRouting& t, const LayerChoice* c) {
    std::string s = fmt::format("pos {} token {} '{}'", t.pos, t.token, visible_token(t.text));
    if (c)
        for (size_t j = 0; j < c->experts.size(); j++)
            s += fmt::format(" | e{} {:.3f}{}", c->experts[j], c->weights[j],
                             c->kept[j] ? "" : " (dropped)");
    return html_escape(s);
}

std::string routing_html_body(const std::vector<TokenRouting>& r, int only_layer) {
    std::vector<int> layers = chosen_layers(routing_layers(r), only_layer);
    int E = routing_experts(r);
    std::string s = legend_html(E);
    for (int l : layers) {
        s += fmt::format(
            "<h3>layer {}: first-choice expert per token</h3>\n<div class=\"strip\" "
            "id=\"strip-layer-{}\">",
            l, l);
        for (auto& t : r) {
            const LayerChoice* c = find_layer(t, l);
            int e = c && !c->experts.empty() ? c->experts[0] : -1;
            double w = c && !c->weights.empty() ? c->weights[0] : 0.0;
            std::string txt = html_escape(t.text == "\n" ? "\xE2\x86\xB5" : visible_token(t.text));
            // Weak first choices are drawn lighter: opacity follows the top-1 weight.
            s += fmt::format(
                "<span class=\"t\" style=\"background:{};color:{};opacity:{:.2f}\" "
                "title=\"{}\">{}</span>",
                expert_color(e, E), expert_text_color(e, E), 0.45 + 0.55 * std::clamp(w, 0.0, 1.0),
                choice_title(t, c), txt);
            if (t.text.find('\n') != std::string::npos) s += "<br>";
        }
        s += "</div>\n";
    }
    // Table: one row per token, the chosen experts and weights of each layer.
    s += "<h3>experts and weights per token</h3>\n<div style=\"max-height:480px;overflow:auto\">"
         "<table class=\"routing\"><tr><th>pos</th><th class=\"l\">token</th>";
    for (int l : layers) s += fmt::format("<th class=\"l\">layer {}</th>", l);
    s += "</tr>\n";
    for (auto& t : r) {
        s += fmt::format("<tr><td>{}</td><td class=\"l\"><code>{}</code></td>", t.pos,
                         html_escape(visible_token(t.text)));
        for (int l : layers) {
            const LayerChoice* c = find_layer(t, l);
            s += "<td class=\"l\">";
            if (c)
                for (size_t j = 0; j < c->experts.size(); j++) {
                    int e = c->experts[j];
                    s += fmt::format(
                        "<span style=\"background:{};color:{};opacity:{:.2f};padding:0 4px;"
                        "margin-right:2px;border-radius:2px{}\">{} {:.2f}</span>",
                        expert_color(e, E), expert_text_color(e, E),
                        0.35 + 0.65 * std::clamp((double)c->weights[j], 0.0, 1.0),
                        c->kept[j] ? "" : ";text-decoration:line-through", e, c->weights[j]);
                }
            s += "</td>";
        }
        s += "</tr>\n";
    }
    s += "</table></div>\n";
    return s;
}

std::string routing_html(const std::vector<TokenRouting>& r, int only_layer,
                         const std::string& title) {
    std::string s = report::page_begin(title);
    s += "<h1>" + html_escape(title) + "</h1>\n";
    s += fmt::format(
        "<p class=\"sub\">{} tokens. Colour = the expert; in the strips the first "
        "choice, paler when its weight is low. Hover a token for all its experts "
        "and weights.</p>\n",
        r.size());
    s += routing_html_body(r, only_layer);
    // Heatmap per layer: expert x token weights (small texts only, it is one column per token).
    if (r.size() <= 400) {
        int E = routing_experts(r);
        for (int l : chosen_layers(routing_layers(r), only_layer)) {
            s += fmt::format(
                "<h3>layer {}: router weight, expert &times; token</h3>\n<div "
                "style=\"overflow-x:auto\"><table class=\"heat\"><tr><th></th>",
                l);
            for (auto& t : r)
                s += "<th><code>" + html_escape(visible_token(t.text)) + "</code></th>";
            s += "</tr>\n";
            for (int e = 0; e < E; e++) {
                s += fmt::format("<tr><th>e{}</th>", e);
                for (auto& t : r) {
                    const LayerChoice* c = find_layer(t, l);
                    double w = 0;
                    if (c)
                        for (size_t j = 0; j < c->experts.size(); j++)
                            if (c->experts[j] == e) w = c->weights[j];
                    s +=
                        fmt::format("<td style=\"background:{};color:{}\" title=\"{:.3f}\">{}</td>",
                                    report::share_color(w), w > 0.55 ? "#fff" : "#222", w,
                                    w > 0 ? fmt::format("{:.2f}", w) : "");
                }
                s += "</tr>\n";
            }
            s += "</table></div>\n";
        }
    }
    return s + report::page_end();
}

// ---- aggregates ------------------------------------------------------------------------------

// Rows of the class table: every class for char-class; the most frequent tokens for token.
static std::vector<int> table_rows(const RoutingAggregate& a, const RoutingAggregate::Layer& L,
                                   int max_rows) {
    const int E = a.n_experts, C = (int)a.classes.size();
    std::vector<double> total(C, 0.0);
    for (int e = 0; e < E; e++)
        for (int c = 0; c < C; c++) total[c] += L.counts[(size_t)e * C + c];
    std::vector<int> rows;
    for (int c = 0; c < C; c++)
        if (total[c] > 0) rows.push_back(c);
    if (a.by == "token") {
        std::stable_sort(rows.begin(), rows.end(),
                         [&](int x, int y) { return total[x] > total[y]; });
        if ((int)rows.size() > max_rows) rows.resize(max_rows);
    }
    return rows;
}

static std::vector<double> overall_share(const RoutingAggregate& a,
                                         const RoutingAggregate::Layer& L) {
    const int E = a.n_experts, C = (int)a.classes.size();
    std::vector<double> s(E, 0.0);
    double tot = 0;
    for (int e = 0; e < E; e++) {
        for (int c = 0; c < C; c++) s[e] += L.counts[(size_t)e * C + c];
        tot += s[e];
    }
    if (tot > 0)
        for (double& v : s) v /= tot;
    return s;
}

static std::string class_label(const RoutingAggregate& a, int c) {
    return a.by == "token" ? "'" + visible_token(a.classes[c]) + "'" : a.classes[c];
}

// Kept slots of class c / its tokens: the mean number of experts its tokens ran on.
static double class_experts_per_token(const RoutingAggregate& a, const RoutingAggregate::Layer& L,
                                      int c) {
    const int E = a.n_experts, C = (int)a.classes.size();
    double slots = 0;
    for (int e = 0; e < E; e++) slots += L.counts[(size_t)e * C + c];
    return L.class_tokens[c] > 0 ? slots / L.class_tokens[c] : 0.0;
}

static double layer_experts_per_token(const RoutingAggregate::Layer& L) {
    double slots = 0, tokens = 0;
    for (double v : L.counts) slots += v;
    for (double v : L.class_tokens) tokens += v;
    return tokens > 0 ? slots / tokens : 0.0;
}

std::string aggregate_text(const RoutingAggregate& a, int only_layer, int top_n) {
    std::vector<int> all;
    for (auto& L : a.layers) all.push_back(L.layer);
    std::vector<int> layers = chosen_layers(all, only_layer);
    const int E = a.n_experts, C = (int)a.classes.size();
    std::string out = fmt::format(
        "{} tokens, {} experts; each row: how the {}'s token-slots split over the experts (%).\n"
        "With top-k routing a token fills k slots: 100/k % (50% for top-2) means every token of "
        "the row chose that expert. exp/tok: the mean experts per token of the row.\n",
        a.n_tokens, E, a.by == "token" ? "token" : "class");
    for (auto& L : a.layers) {
        if (std::find(layers.begin(), layers.end(), L.layer) == layers.end()) continue;
        out += fmt::format("\nlayer {} (mean experts per token {:.3f})\n{:<14}{:>8}{:>8}", L.layer,
                           layer_experts_per_token(L), a.by == "token" ? "token" : "class",
                           "slots", "exp/tok");
        for (int e = 0; e < E; e++) out += fmt::format("{:>6}", "e" + std::to_string(e));
        out += "   top expert (lift)\n";
        std::vector<double> overall = overall_share(a, L);
        for (int c : table_rows(a, L, 40)) {
            double tot = 0;
            for (int e = 0; e < E; e++) tot += L.counts[(size_t)e * C + c];
            out += fmt::format("{:<14}{:>8.0f}{:>8.2f}", class_label(a, c), tot,
                               class_experts_per_token(a, L, c));
            int best = 0;
            for (int e = 0; e < E; e++) {
                double v = L.shares[(size_t)e * C + c];
                if (v > L.shares[(size_t)best * C + c]) best = e;
                out += fmt::format("{:>6.1f}", 100 * v);
            }
            double lift = overall[best] > 0 ? L.shares[(size_t)best * C + c] / overall[best] : 0;
            out += fmt::format("   e{} ({:.1f}x)\n", best, lift);
        }
        out += fmt::format("{:<14}{:>8}{:>8.2f}", "all", "", layer_experts_per_token(L));
        for (int e = 0; e < E; e++) out += fmt::format("{:>6.1f}", 100 * overall[e]);
        out +=
            "\n\ntop tokens per expert (share of the expert's slots; share of the token's slots)\n";
        auto top = top_tokens_per_expert(L.token_counts, E, a.vocab, top_n);
        for (int e = 0; e < E; e++) {
            double tot = 0;
            for (int v = 0; v < a.vocab; v++) tot += L.token_counts[(size_t)e * a.vocab + v];
            out += fmt::format("  e{:<3}", e);
            for (auto& tc : top[e])
                out += fmt::format(" '{}' {:.0f}%/{:.0f}%", visible_token(a.vocab_text[tc.token]),
                                   100 * tc.count / std::max(tot, 1.0), 100 * tc.of_token);
            out += "\n";
        }
    }
    return out;
}

std::string aggregate_json(const RoutingAggregate& a, int only_layer, int top_n) {
    using json = nlohmann::json;
    std::vector<int> all;
    for (auto& L : a.layers) all.push_back(L.layer);
    std::vector<int> layers = chosen_layers(all, only_layer);
    const int E = a.n_experts, C = (int)a.classes.size();
    json j;
    j["by"] = a.by;
    j["n_tokens"] = a.n_tokens;
    j["n_experts"] = E;
    j["layers"] = json::array();
    for (auto& L : a.layers) {
        if (std::find(layers.begin(), layers.end(), L.layer) == layers.end()) continue;
        json jl;
        jl["layer"] = L.layer;
        jl["expert_share"] = overall_share(a, L);
        jl["experts_per_token"] = layer_experts_per_token(L);
        json classes = json::array();
        for (int c : table_rows(a, L, 100)) {
            json jc;
            jc["class"] = a.classes[c];
            double tot = 0;
            std::vector<double> sh(E), prof(E);
            for (int e = 0; e < E; e++) {
                tot += L.counts[(size_t)e * C + c];
                sh[e] = L.shares[(size_t)e * C + c];
                prof[e] = L.profile[(size_t)e * C + c];
            }
            jc["slots"] = tot;
            jc["tokens"] = L.class_tokens[c];
            jc["experts_per_token"] = class_experts_per_token(a, L, c);  // slots / tokens
            jc["expert_shares"] = sh;  // how this class splits over experts (sums to 1)
            jc["of_expert"] = prof;    // share of each expert's slots that are this class
            classes.push_back(jc);
        }
        jl["classes"] = classes;
        auto top = top_tokens_per_expert(L.token_counts, E, a.vocab, top_n);
        json jt = json::array();
        for (int e = 0; e < E; e++) {
            json list = json::array();
            for (auto& tc : top[e])
                list.push_back({{"token", tc.token},
                                {"text", a.vocab_text[tc.token]},
                                {"count", tc.count},
                                {"of_token", tc.of_token}});
            jt.push_back(list);
        }
        jl["top_tokens"] = jt;
        j["layers"].push_back(jl);
    }
    // Invalid UTF-8 (a byte-level piece) must not abort the dump: replace it.
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string aggregate_html(const RoutingAggregate& a, int only_layer, int top_n,
                           const std::string& title) {
    std::vector<int> all;
    for (auto& L : a.layers) all.push_back(L.layer);
    std::vector<int> layers = chosen_layers(all, only_layer);
    const int E = a.n_experts, C = (int)a.classes.size();
    std::string s = report::page_begin(title);
    s += "<h1>" + html_escape(title) + "</h1>\n";
    s += fmt::format(
        "<p class=\"sub\">{} tokens, {} experts. Each row shows how the token-slots of one {} "
        "split over the experts (rows sum to 100%; with top-k routing a token fills k slots, so "
        "100/k % means every token of the row chose that expert); the last row is every slot. "
        "Lift = the top "
        "expert's share of the row divided by its share overall: well above 1 means the expert "
        "specialises in it.</p>\n",
        a.n_tokens, E, a.by == "token" ? "token" : "class");
    s += legend_html(E);
    for (auto& L : a.layers) {
        if (std::find(layers.begin(), layers.end(), L.layer) == layers.end()) continue;
        std::vector<double> overall = overall_share(a, L);
        // Slots per token (k for top-k): colours scale shares by it, so a cell is darkest when
        // every token of the row chose the expert.
        double slots = 0;
        for (double v : L.counts) slots += v;
        double k_eff = a.n_tokens > 0 ? std::max(1.0, slots / a.n_tokens) : 1.0;
        s += fmt::format(
            "<h2>layer {}</h2>\n<table class=\"shares\" id=\"shares-layer-{}\"><tr>"
            "<th class=\"l\">{}</th><th>slots</th><th>exp/tok</th>",
            L.layer, L.layer, a.by == "token" ? "token" : "class");
        for (int e = 0; e < E; e++)
            s += fmt::format("<th style=\"background:{};color:{}\">e{}</th>", expert_color(e, E),
                             expert_text_color(e, E), e);
        s += "<th>top (lift)</th></tr>\n";
        for (int c : table_rows(a, L, 60)) {
            double tot = 0;
            int best = 0;
            for (int e = 0; e < E; e++) {
                tot += L.counts[(size_t)e * C + c];
                if (L.shares[(size_t)e * C + c] > L.shares[(size_t)best * C + c]) best = e;
            }
            s += fmt::format("<tr><td class=\"l\">{}</td><td>{:.0f}</td><td>{:.2f}</td>",
                             html_escape(class_label(a, c)), tot, class_experts_per_token(a, L, c));
            for (int e = 0; e < E; e++) {
                double v = L.shares[(size_t)e * C + c], shade = std::min(1.0, v * k_eff);
                s += fmt::format("<td style=\"background:{};color:{}\">{:.1f}</td>",
                                 report::share_color(shade), shade > 0.55 ? "#fff" : "#222",
                                 100 * v);
            }
            double lift = overall[best] > 0 ? L.shares[(size_t)best * C + c] / overall[best] : 0;
            s += fmt::format("<td>e{} ({:.1f}&times;)</td></tr>\n", best, lift);
        }
        s += fmt::format("<tr><th class=\"l\">all</th><th></th><th>{:.2f}</th>",
                         layer_experts_per_token(L));
        for (int e = 0; e < E; e++) s += fmt::format("<th>{:.1f}</th>", 100 * overall[e]);
        s += "<th></th></tr></table>\n";

        s += "<h3>top tokens per expert</h3>\n<table><tr><th>expert</th><th class=\"l\">tokens "
             "(share of the expert's slots / share of the token's slots)</th></tr>\n";
        auto top = top_tokens_per_expert(L.token_counts, E, a.vocab, top_n);
        for (int e = 0; e < E; e++) {
            double tot = 0;
            for (int v = 0; v < a.vocab; v++) tot += L.token_counts[(size_t)e * a.vocab + v];
            s += fmt::format("<tr><td style=\"background:{};color:{}\">e{}</td><td class=\"l\">",
                             expert_color(e, E), expert_text_color(e, E), e);
            for (auto& tc : top[e])
                s += fmt::format("<code>{}</code> {:.0f}%/{:.0f}% &nbsp;",
                                 html_escape(visible_token(a.vocab_text[tc.token])),
                                 100 * tc.count / std::max(tot, 1.0), 100 * tc.of_token);
            s += "</td></tr>\n";
        }
        s += "</table>\n";
    }
    return s + report::page_end();
}

}  // namespace moe
