// `moe generate --trace` lines, as `moe inspect --trace FILE` reads and shows them: parse_trace,
// then every view inspect can print (per token: terminal, HTML; aggregated by char class and by
// token: text, JSON, HTML). Without a checkpoint, the expert count and the vocabulary come from
// the trace itself, as in tools/cmd_inspect.cpp.
#include "fuzz.h"
#include "moe/report.h"

namespace moe::fuzz {

void trace(const std::string& input) {
    int skipped = 0;
    std::vector<TokenRouting> r = parse_trace(input, "fuzz.trace.jsonl", &skipped);
    MOE_FUZZ_ASSERT(!r.empty() && skipped >= 0);
    (void)routing_terminal(r, -1, true);
    (void)routing_html(r, -1, "fuzz");
    for (const char* by : {"char-class", "token"}) {
        RoutingAggregate a = aggregate_routing(r, {}, 0, by);
        (void)aggregate_text(a, -1, 8);
        (void)aggregate_json(a, -1, 8);
        (void)aggregate_html(a, -1, 8, "fuzz");
    }
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(trace)
