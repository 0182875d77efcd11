// WeightStore's insides, shared by the safetensors loader (weights.cpp) and the GGUF loader
// (gguf_model.cpp): mappings of files (or anonymous memory) and the tensors by HF name in them.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "io/file_map.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/safetensors.h"

namespace moe {

struct Mapping {
    std::string path;
    const uint8_t* base = nullptr;
    size_t size = 0;
    uint64_t data_start = 0;  // 8 + header length
    bool owned = true;        // unmapped by the store (false: kept alive by `keep`)
    FileMap file;             // a file's mapping or huge-page copy (io/file_map.h); empty: base
                              // and size are an anonymous mapping of their own (random weights)
};

// A q8_0 (q4_0) matrix this store rewrote into the split layout in its own memory: the int8
// values [rows, cols] (the nibbles [rows, cols / 2]), then the fp16 scales [rows, cols / 32].
// Dtypes only this store has (as "Q8_0" / "Q4_0", GGML's blocks, are for a GGUF's tensors).
inline const char* const kQ8SplitDtype = "Q8_0 split";
inline const char* const kQ4SplitDtype = "Q4_0 split";

struct TensorLoc {
    int file = 0;
    StHeaderEntry entry;
};

struct WeightStore::Impl {
    std::string dir;
    std::vector<Mapping> maps;
    std::map<std::string, TensorLoc> tensors;
    std::set<std::string> used;
    std::vector<std::shared_ptr<const void>> keep;  // what non-owned mappings belong to (a GgufFile)

    ~Impl() {
        for (auto& m : maps)
            if (m.base && m.owned) {
                if (m.file.map_base) unmap_file(m.file);
                else munmap((void*)m.base, m.size);
            }
    }

    // The Q8_0 and Q4_0 matrices of maps[file] (GGML blocks, dtype "Q8_0" / "Q4_0") rewritten in
    // place into the split layout (kernels/q8_gemm.h), dtype kQ8SplitDtype / kQ4SplitDtype. Only
    // for memory the store owns and may write: a huge-page copy (made writable around the call),
    // its permuted q/k, random weights. Why: decode's AVX-512 VNNI loop reads two whole Q8_0
    // blocks per 512-bit load there (weights.cpp has the figures). A tensor two names share is
    // rewritten once.
    void split_blocks(int file);

    // copy: into huge pages instead of mapped (io/file_map.h; decided once per model)
    void map_file(const std::string& path, bool copy) {
        std::map<std::string, StHeaderEntry> header = read_safetensors_header(path);
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail("{}: cannot open: {}; check the path", path, std::strerror(errno));
        struct stat st;
        if (fstat(fd, &st) != 0 || st.st_size < 8) {
            ::close(fd);
            fail("{}: cannot read its size; check the file", path);
        }
        Mapping m;
        m.path = path;
        FileMap fm;
        try {
            fm = map_file_readonly(path, fd, (size_t)st.st_size, copy);
        } catch (...) {
            ::close(fd);
            throw;
        }
        ::close(fd);
        m.base = fm.data;
        m.size = fm.size;
        m.file = fm;
        uint64_t hlen;
        std::memcpy(&hlen, m.base, 8);
        m.data_start = 8 + hlen;
        const int idx = (int)maps.size();
        maps.push_back(m);
        for (auto& [name, e] : header) {
            if (tensors.count(name))
                fail("{}: tensor {} is also in {}; a tensor must be in one shard only", path, name,
                     maps[tensors[name].file].path);
            tensors[name] = {idx, e};
        }
    }
};

}  // namespace moe
