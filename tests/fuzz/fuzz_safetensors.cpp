// A whole safetensors file: the 8-byte length, the JSON header, and the data the offsets point at.
#include "fuzz.h"
#include "moe/safetensors.h"

namespace moe::fuzz {

void safetensors(const std::string& input) {
    SafetensorsReader r = SafetensorsReader::from_bytes(input, "fuzz.safetensors");
    for (const std::string& name : r.names()) {
        const StTensor& t = r.get(name, r.get(name).shape);
        MOE_FUZZ_ASSERT(t.shape.numel() >= 0);
        MOE_FUZZ_ASSERT(t.data.size() == (size_t)t.shape.numel());
        MOE_FUZZ_ASSERT(t.data.size() <= input.size());  // every element came from the file
    }
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(safetensors)
