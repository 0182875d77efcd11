// A token file (.tok): magic, header length, JSON header, ids.
#include "data/token_file.h"
#include "fuzz.h"

namespace moe::fuzz {

void token_file(const std::string& input) {
    TokenFile t = parse_token_file(input, "fuzz.tok");
    MOE_FUZZ_ASSERT(t.vocab > 0);
    MOE_FUZZ_ASSERT(t.dtype == "uint16" || t.dtype == "uint32");
    MOE_FUZZ_ASSERT(t.ids.size() <= input.size());  // every id came from the file
    for (int32_t id : t.ids) MOE_FUZZ_ASSERT(id >= 0 && id < t.vocab);
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(token_file)
