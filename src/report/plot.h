// Figures drawn by gnuplot (docs/report.md says why gnuplot): a Figure is data + labels; one
// generated gnuplot script renders every figure twice, as SVG (inlined into the HTML report) and
// as PNG (pngcairo, the copies beside it). The data files and the script stay in
// <out_dir>/data/ so a figure can be re-drawn or its numbers read without moe.cpp.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace moe::report {

struct PlotSeries {
    std::string title;
    std::vector<double> x, y;  // non-finite points are left out
    bool points = false;       // points+line (sparse series such as validation loss)
};

struct Figure {
    enum class Kind { lines, heatmap };
    Kind kind = Kind::lines;
    std::string id;  // file name stem: [a-z0-9_-]
    std::string title, xlabel, ylabel;
    int width = 640, height = 280;

    // lines
    std::vector<PlotSeries> series;
    bool logy = false;
    std::vector<double> hlines;  // dashed horizontal reference lines (e.g. uniform share)

    // heatmap: z [ny][nx] at cell centres hx [nx], hy [ny]
    std::vector<double> hx, hy, z;
    double zmin = 0, zmax = 1;
    std::string palette = "load";  // "load" (white -> blue) or "diverging" (blue-white-red)
    std::string cblabel;
    bool labels = false;  // print each cell's value (small matrices)
    bool square = false;  // equal cell aspect (similarity matrices)
};

struct RenderedFigure {
    std::string svg;  // <svg ...>...</svg>, ids made unique per figure
    std::string png;  // path of the PNG copy
};

// Renders all figures with one gnuplot run. Throws moe::Error when gnuplot fails (its stderr
// in the message) or a figure has inconsistent data.
std::map<std::string, RenderedFigure> render_figures(const std::vector<Figure>& figs,
                                                     const std::string& out_dir,
                                                     const std::string& gnuplot);

}  // namespace moe::report
