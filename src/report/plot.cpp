// gnuplot driver: data files + one generated script, run once for every figure of a report.
#include "report/plot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "moe/error.h"
#include "moe/file_io.h"

extern char** environ;

namespace moe::report {

// gnuplot single-quoted string: '' is a literal quote, nothing else is special.
static std::string gp_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out += "''";
        else if (c == '\n')
            out += ' ';
        else
            out += c;
    }
    return out + "'";
}

static void check_id(const std::string& id) {
    if (id.empty()) fail("figure with an empty id");
    for (char c : id)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            fail("figure id '{}': only [a-z0-9_-] allowed (it names files)", id);
}

static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static std::string common_setup(const Figure& f) {
    std::string s = "reset\nset encoding utf8\n";
    s += "set border 3 lc rgb '#555555'\nset tics nomirror textcolor rgb '#333333'\n";
    s += "set grid lc rgb '#e5e5e5' lt 1\n";
    for (int i = 0; i < 10; i++)
        s += fmt::format("set linetype {} lc rgb '{}' lw 2 pt 7 ps 0.6\n", i + 1, kColors[i]);
    s += "set title " + gp_quote(f.title) + " font ',12'\n";
    s += "set xlabel " + gp_quote(f.xlabel) + "\n";
    s += "set ylabel " + gp_quote(f.ylabel) + "\n";
    return s;
}

static std::string line_figure(const Figure& f, const std::string& data_dir) {
    std::string s = common_setup(f);
    s += "set key top right box lc rgb '#cccccc' opaque\n";
    if (f.logy) s += "set logscale y\n";
    std::vector<std::string> parts;
    int n_points = 0;
    for (size_t i = 0; i < f.series.size(); i++) {
        const PlotSeries& ps = f.series[i];
        if (ps.x.size() != ps.y.size())
            fail("figure {}: series '{}' has {} x and {} y values", f.id, ps.title, ps.x.size(),
                 ps.y.size());
        std::string data;
        int n = 0;
        for (size_t k = 0; k < ps.x.size(); k++) {
            if (!std::isfinite(ps.x[k]) || !std::isfinite(ps.y[k])) continue;
            if (f.logy && ps.y[k] <= 0) continue;
            data += fmt::format("{:.9g} {:.9g}\n", ps.x[k], ps.y[k]);
            n++;
        }
        if (n == 0) continue;
        n_points += n;
        std::string path = fmt::format("{}/{}.{}.dat", data_dir, f.id, i);
        write_file_atomic(path, data);
        // One point alone draws nothing "with lines": give it a marker.
        const char* style = (ps.points || n == 1) ? "linespoints" : "lines";
        parts.push_back(fmt::format("{} using 1:2 with {} lt {} title {}", gp_quote(path), style,
                                    i % 10 + 1, gp_quote(ps.title)));
    }
    if (n_points == 0) {
        // Nothing to draw (e.g. no evaluation lines): an empty frame that says so.
        s += "unset key\nset xrange [0:1]\nset yrange [0:1]\nunset xtics\nunset ytics\n";
        s += "set label 1 'no data in metrics.jsonl' at 0.5,0.5 center textcolor rgb '#888888'\n";
        s += "plot 2 notitle lc rgb '#ffffff'\n";
        return s;
    }
    for (double h : f.hlines)
        parts.push_back(fmt::format("{:.9g} with lines dt 2 lw 1 lc rgb '#888888' notitle", h));
    s += "plot ";
    for (size_t i = 0; i < parts.size(); i++) s += (i ? ", \\\n     " : "") + parts[i];
    return s + "\n";
}

static std::string heatmap_figure(const Figure& f, const std::string& data_dir) {
    size_t nx = f.hx.size(), ny = f.hy.size();
    if (nx == 0 || ny == 0 || f.z.size() != nx * ny)
        fail("figure {}: heatmap has {}x{} cells but {} values", f.id, ny, nx, f.z.size());
    // gnuplot's image needs at least 2x2 cells: widen a single row/column to two equal ones.
    std::vector<double> hx = f.hx, hy = f.hy, z = f.z;
    if (nx == 1) {
        hx = {f.hx[0] - 0.25, f.hx[0] + 0.25};
        std::vector<double> z2;
        for (size_t y = 0; y < ny; y++) z2.insert(z2.end(), {z[y], z[y]});
        z = z2;
        nx = 2;
    }
    if (ny == 1) {
        hy = {f.hy[0] - 0.25, f.hy[0] + 0.25};
        std::vector<double> z2 = z;
        z2.insert(z2.end(), z.begin(), z.end());
        z = z2;
        ny = 2;
    }
    std::string data;
    for (size_t y = 0; y < ny; y++) {
        for (size_t x = 0; x < nx; x++) {
            double v = z[y * nx + x];
            data += fmt::format("{:.9g} {:.9g} {:.6g}\n", hx[x], hy[y], std::isfinite(v) ? v : 0.0);
        }
        data += "\n";
    }
    std::string path = fmt::format("{}/{}.dat", data_dir, f.id);
    write_file_atomic(path, data);

    std::string s = common_setup(f);
    s += "unset grid\nunset key\nset border 15 lc rgb '#555555'\nset tics out\n";
    if (f.palette == "diverging")
        s += "set palette defined (-1 '#2166ac', -0.5 '#92c5de', 0 '#f7f7f7', 0.5 '#f4a582', "
             "1 '#b2182b')\n";
    else
        s += "set palette defined (0 '#f7fbff', 0.25 '#c6dbef', 0.5 '#6baed6', 0.75 '#2171b5', "
             "1 '#08306b')\n";
    s += fmt::format("set cbrange [{:.9g}:{:.9g}]\n", f.zmin, f.zmax);
    s += "set cblabel " + gp_quote(f.cblabel) + "\n";
    s += "set autoscale xfix\nset autoscale yfix\nset yrange [*:*] reverse\n";
    if (f.hy.size() <= 24) s += "set ytics 1\n";
    if (f.square) {
        s += "set size ratio -1\n";
        if (f.hx.size() <= 24) s += "set xtics 1\n";
        s += "set x2tics 1 format '' scale 0\n";
    }
    s += "plot " + gp_quote(path) + " using 1:2:3 with image";
    if (f.labels) {
        // Value labels: white on dark cells, dark elsewhere.
        double mid = f.palette == "diverging" ? 0.6 : 0.55 * f.zmax;
        std::string dark =
            f.palette == "diverging" ? fmt::format("abs($3)>{}", mid) : fmt::format("$3>{}", mid);
        s += fmt::format(
            ", \\\n     '' using 1:2:({} ? sprintf('%.2f',abs($3)<0.005?0:$3) : '') with labels "
            "font ',9' "
            "tc rgb '#ffffff', \\\n     '' using 1:2:({} ? '' : "
            "sprintf('%.2f',abs($3)<0.005?0:$3)) with "
            "labels font ',9' tc rgb '#222222'",
            dark, dark);
    }
    return s + "\n";
}

// Each inline SVG must have its own element ids: gnuplot gives every file the same ones.
static std::string fix_svg(std::string svg, const std::string& id) {
    size_t start = svg.find("<svg");
    if (start == std::string::npos) fail("gnuplot wrote no <svg> element for figure {}", id);
    svg = svg.substr(start);
    std::string tag = id;
    for (char& c : tag)
        if (c == '-') c = '_';
    auto replace_all = [&](const std::string& from, const std::string& to) {
        size_t p = 0;
        while ((p = svg.find(from, p)) != std::string::npos) {
            svg.replace(p, from.size(), to);
            p += to.size();
        }
    };
    replace_all("gnuplot_canvas", "gp_" + tag + "_canvas");
    replace_all("gnuplot_plot_", "gp_" + tag + "_plot_");
    replace_all("'gpPt", "'gp_" + tag + "_Pt");
    replace_all("'#gpPt", "'#gp_" + tag + "_Pt");
    replace_all("'gpDot", "'gp_" + tag + "_Dot");
    replace_all("'#gpDot", "'#gp_" + tag + "_Dot");
    return svg;
}

static int run_process(const std::vector<std::string>& argv, const std::string& log_path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) fail("could not start {}: {}", argv[0], std::strerror(rc));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) fail("waitpid on {} failed: {}", argv[0], std::strerror(errno));
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::map<std::string, RenderedFigure> render_figures(const std::vector<Figure>& figs,
                                                     const std::string& out_dir,
                                                     const std::string& gnuplot) {
    std::string data_dir = out_dir + "/data";
    make_dirs(data_dir);
    std::string script =
        "# Generated by `moe report`: re-run with `gnuplot plot.gp` to redraw every figure.\n";
    for (const Figure& f : figs) {
        check_id(f.id);
        std::string body = f.kind == Figure::Kind::heatmap ? heatmap_figure(f, data_dir)
                                                           : line_figure(f, data_dir);
        std::string svg_path = data_dir + "/" + f.id + ".svg";
        std::string png_path = out_dir + "/" + f.id + ".png";
        script += "\n# ---- " + f.id + "\n";
        script += fmt::format(
            "set terminal svg size {},{} dynamic noenhanced font 'sans,12' background rgb "
            "'white'\nset output {}\n",
            f.width, f.height, gp_quote(svg_path));
        script += body;
        script += "set output\n";
        script += fmt::format(
            "set terminal pngcairo size {},{} noenhanced font 'sans,10' background rgb "
            "'white'\nset output {}\nreplot\nset output\n",
            f.width * 3 / 2, f.height * 3 / 2, gp_quote(png_path));
    }
    std::string script_path = data_dir + "/plot.gp";
    write_file_atomic(script_path, script);
    std::string log_path = data_dir + "/gnuplot.log";
    int rc = run_process({gnuplot, script_path}, log_path);
    std::string log = file_exists(log_path) ? read_file(log_path) : "";
    if (rc != 0)
        fail("gnuplot failed (exit {}) on {}: {}", rc, script_path,
             log.size() > 2000 ? log.substr(0, 2000) + "..." : log);
    std::map<std::string, RenderedFigure> out;
    for (const Figure& f : figs) {
        std::string svg_path = data_dir + "/" + f.id + ".svg";
        std::string png_path = out_dir + "/" + f.id + ".png";
        if (!file_exists(svg_path) || !file_exists(png_path))
            fail("gnuplot wrote no {} for figure {} (log: {})",
                 file_exists(svg_path) ? png_path : svg_path, f.id, log);
        out[f.id] = {fix_svg(read_file(svg_path), f.id), png_path};
        std::remove(svg_path.c_str());  // inlined in the HTML; the PNG is the file copy
    }
    return out;
}

}  // namespace moe::report
