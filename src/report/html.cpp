#include "report/html.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace moe::report {

std::string html_escape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

std::string visible_token(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == ' ')
            out += "\xE2\x90\xA3";  // ␣
        else if (c == '\n')
            out += "\xE2\x86\xB5";  // ↵
        else if (c == '\t')
            out += "\xE2\x87\xA5";  // ⇥
        else if (c < 0x20 || c == 0x7f)
            out += fmt::format("\\x{:02x}", c);
        else
            out += (char)c;
    }
    return out;
}

static const char* kTab10[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static void expert_rgb(int e, int E, double rgb[3]) {
    if (E <= 10 && e >= 0 && e < 10) {
        unsigned v = std::stoul(std::string(kTab10[e] + 1), nullptr, 16);
        rgb[0] = ((v >> 16) & 255) / 255.0;
        rgb[1] = ((v >> 8) & 255) / 255.0;
        rgb[2] = (v & 255) / 255.0;
        return;
    }
    // Golden-ratio hue steps keep neighbouring expert ids apart; two lightness bands.
    double h = std::fmod(e * 0.61803398875, 1.0) * 6.0;
    double s = 0.65, l = (e % 2) ? 0.42 : 0.58;
    double c = (1 - std::fabs(2 * l - 1)) * s, x = c * (1 - std::fabs(std::fmod(h, 2.0) - 1));
    double r = 0, g = 0, b = 0;
    int hi = (int)h % 6;
    if (hi == 0)
        r = c, g = x;
    else if (hi == 1)
        r = x, g = c;
    else if (hi == 2)
        g = c, b = x;
    else if (hi == 3)
        g = x, b = c;
    else if (hi == 4)
        r = x, b = c;
    else
        r = c, b = x;
    double m = l - c / 2;
    rgb[0] = r + m, rgb[1] = g + m, rgb[2] = b + m;
}

static std::string hex(const double rgb[3]) {
    auto q = [](double v) { return (int)std::lround(std::clamp(v, 0.0, 1.0) * 255); };
    return fmt::format("#{:02x}{:02x}{:02x}", q(rgb[0]), q(rgb[1]), q(rgb[2]));
}

std::string expert_color(int e, int E) {
    if (e < 0) return "#dddddd";
    double rgb[3];
    expert_rgb(e, E, rgb);
    return hex(rgb);
}

std::string expert_text_color(int e, int E) {
    if (e < 0) return "#000000";
    double rgb[3];
    expert_rgb(e, E, rgb);
    double lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
    return lum > 0.55 ? "#000000" : "#ffffff";
}

std::string share_color(double v) {
    v = std::clamp(std::isfinite(v) ? v : 0.0, 0.0, 1.0);
    const double lo[3] = {0xf7 / 255.0, 0xfb / 255.0, 0xff / 255.0};
    const double hi[3] = {0x08 / 255.0, 0x30 / 255.0, 0x6b / 255.0};
    double rgb[3];
    for (int i = 0; i < 3; i++) rgb[i] = lo[i] + (hi[i] - lo[i]) * v;
    return hex(rgb);
}

std::string page_begin(const std::string& title) {
    return "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>" +
           html_escape(title) + "</title>\n<style>\n" + R"CSS(
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 1.2em 1.5em 3em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
p.sub { color: #666; margin-top: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 0.8em; }
.grid.small { grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); }
figure.fig { margin: 0; border: 1px solid #eee; border-radius: 4px; padding: 4px; background: #fff; }
figure.fig svg { width: 100%; height: auto; display: block; }
figure.fig svg image { image-rendering: pixelated; }
figure.fig figcaption { font-size: 0.85em; color: #555; padding: 0.2em 0.4em 0.3em; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 0.8em; margin: 0.4em 0; }
.ok { background: #eef8ee; border-left: 4px solid #3a3; padding: 0.5em 0.8em; margin: 0.4em 0; }
.note { background: #f3f6fa; border-left: 4px solid #89a; padding: 0.5em 0.8em; margin: 0.4em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f5f5f5; }
td.l, th.l { text-align: left; }
.strip { font-family: "DejaVu Sans Mono", monospace; font-size: 0.9em; line-height: 1.9;
         word-break: break-all; }
.strip span.t { padding: 1px 1px; border-radius: 2px; }
.legend span { display: inline-block; padding: 1px 7px; margin: 1px 2px; border-radius: 3px;
               font-size: 0.85em; }
code { background: #f4f4f4; padding: 0 3px; border-radius: 3px; }
details { margin: 0.4em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
)CSS" + "</style>\n</head>\n<body>\n";
}

std::string page_end() { return "</body>\n</html>\n"; }

}  // namespace moe::report
