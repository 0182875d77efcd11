// moe: one binary, subcommands (DESIGN.md §8). Every error is one line on stderr in one style:
//   moe: error: <file or flag or key>: <what is wrong>; <what to do>
// exit 1 for bad input, 2 for a wrong command line (CLI11's parse errors included).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <new>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/error.h"
#include "moe/runtime.h"
#include "tools/command.h"

namespace moe::tools {

std::vector<CommandEntry>& command_registry() {
    static std::vector<CommandEntry> r;
    return r;
}

int& exit_code() {
    static int code = 0;
    return code;
}

}  // namespace moe::tools

// One line: newlines inside a message (a library's text) become "; ".
static int report_error(const std::string& msg, int code) {
    std::string line;
    for (char c : msg) {
        if (c == '\n') {
            if (!line.empty() && line.back() != ' ') line += "; ";
        } else if (c != '\r') {
            line += c;
        }
    }
    while (!line.empty() && (line.back() == ' ' || line.back() == ';')) line.pop_back();
    std::fflush(stdout);
    std::fprintf(stderr, "moe: error: %s\n", line.c_str());
    return code;
}

// The command being parsed ("moe eval", "moe bench layer"), for messages and the help hint.
static std::string command_path(const CLI::App& app) {
    std::string s = "moe";
    const CLI::App* a = &app;
    while (true) {
        auto subs = a->get_subcommands();
        if (subs.empty()) break;
        a = subs[0];
        s += " " + a->get_name();
    }
    return s;
}

// CLI11's own texts ("ckpt is required", "The following arguments were not expected: --x")
// in the project's style: "<command>: <what>; see '<command> --help'".
static int report_parse_error(const CLI::App& app, const std::string& msg) {
    std::string cmd = command_path(app);
    return report_error(cmd + ": " + msg + "; see '" + cmd + " --help'", 2);
}

// An unknown command word (moe trian, moe bench bogus) is named as such: CLI11 would only say
// that a subcommand is required.
static bool unknown_command(CLI::App& app, int argc, char** argv, std::string* msg) {
    CLI::App* a = &app;
    std::string path = "moe";
    const std::function<bool(CLI::App*)> all = [](CLI::App*) { return true; };
    for (int i = 1; i < argc; i++) {
        std::string w = argv[i];
        if (a->get_subcommands(all).empty() || (!w.empty() && w[0] == '-')) return false;
        CLI::App* next = nullptr;
        std::string names;
        for (CLI::App* s : a->get_subcommands(all)) {
            names += (names.empty() ? "" : ", ") + s->get_name();
            if (s->get_name() == w) next = s;
        }
        if (!next) {
            *msg = fmt::format("{}: '{}' is not a command; commands: {} (see '{} --help')", path, w,
                               names, path);
            return true;
        }
        a = next;
        path += " " + w;
    }
    return false;
}

int main(int argc, char** argv) {
    moe::runtime_init(argc, argv);
    CLI::App app{"moe.cpp: train, run and inspect sparse Mixture-of-Experts models", "moe"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "moe.cpp 0.1");
    auto& reg = moe::tools::command_registry();
    std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.name < b.name; });
    for (auto& c : reg) c.fn(app);
    std::string unknown;
    if (unknown_command(app, argc, argv, &unknown)) return report_error(unknown, 2);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return report_parse_error(app, e.what());
    } catch (const moe::UsageError& e) {
        std::string m = e.what();
        if (m.find("; ") == std::string::npos) m += "; see '" + command_path(app) + " --help'";
        return report_error(m, 2);
    } catch (const moe::Error& e) {
        return report_error(e.what(), 1);
    } catch (const std::bad_alloc&) {
        return report_error(
            "out of memory: the model or data is larger than this machine's free memory; use a "
            "smaller model, batch or corpus",
            1);
    } catch (const nlohmann::json::exception& e) {
        // A reader that let a JSON type error through: say it without the library's code.
        std::string m = e.what();
        auto p = m.find("] ");
        if (p != std::string::npos) m = m.substr(p + 2);
        return report_error(
            "unexpected JSON content (" + m + "); check the JSON files given to this command", 1);
    } catch (const std::exception& e) {
        return report_error(e.what(), 1);
    }
    return moe::tools::exit_code();
}
