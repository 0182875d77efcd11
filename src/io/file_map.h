// A read-only view of a whole file for the weight loaders (safetensors shards, GGUF): normally the
// file mapped (MAP_SHARED, PROT_READ: pages come from the page cache as tokens touch them, and a
// model larger than RAM still runs); with MOE_HUGEPAGES=1 in the environment, a copy in
// anonymous memory advised into transparent huge pages (madvise(MADV_HUGEPAGE), 2 MiB aligned).
// Why: decode streams every chosen expert's rows once per token, and through 4 KiB pages the
// m795 q8_0 model decoded at 57-65 tok/s beside 64-77 from huge pages (session 8, Intel VM,
// alternated): a page walk every 4 KiB of a 250 MB stream per token. The copy costs the file's
// size in RAM (not shared with the page cache's copy) and a read at start-up; where the anonymous
// memory cannot be had, the file is mapped as usual and a note says so (under Linux's default
// overcommit the reservation rarely fails: a model larger than free RAM may instead be killed
// while it is read, so MOE_HUGEPAGES is for models that fit).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

struct FileMap {
    const uint8_t* data = nullptr;  // the file's bytes
    size_t size = 0;
    void* map_base = nullptr;  // what munmap takes
    size_t map_len = 0;
    bool huge = false;  // a huge-page copy
};

// fd open for reading, size its length (> 0). Errors name `path`. The caller closes fd.
FileMap map_file_readonly(const std::string& path, int fd, size_t size);
void unmap_file(const FileMap& m);
bool hugepage_copy_wanted();  // MOE_HUGEPAGES=1

}  // namespace moe
