// Small HTML helpers shared by the report and inspect pages: escaping, one colour per expert,
// and the page's inline style sheet (pages are self-contained: no external file, no script).
#pragma once
#include <string>

namespace moe::report {

std::string html_escape(const std::string& s);
// A token's text made visible: ' ' -> '␣', '\n' -> '↵', '\t' -> '⇥', other control bytes as \xNN.
std::string visible_token(const std::string& s);

// Background colour of expert e among E (distinct hues; tab10 for E <= 10), as "#rrggbb", and a
// text colour readable on it.
std::string expert_color(int e, int E);
std::string expert_text_color(int e, int E);
// "#rrggbb" for a value in [0,1] on the white -> blue scale used by the load heatmaps.
std::string share_color(double v);

// <!doctype html> ... <body> with the style sheet; page_end closes it.
std::string page_begin(const std::string& title);
std::string page_end();

}  // namespace moe::report
