// A read-only view of a whole file for the weight loaders (safetensors shards, GGUF): either the
// file mapped (MAP_SHARED, PROT_READ: pages come from the page cache as tokens touch them, and a
// model larger than RAM still runs) or a copy in anonymous memory advised into transparent huge
// pages (madvise(MADV_HUGEPAGE), 2 MiB aligned).
// Why the copy: decode streams every chosen expert's rows once per token, and through the page
// cache's 4 KiB pages it pays a page walk every 4 KiB: m795 f16 decoded at 30-31 tok/s mapped
// beside 38-40 from huge pages (session 9, Intel VM, alternated; q8_0 57-65 vs 64-77 in session
// 8). The copy costs the file's size in RAM (beside the page cache's copy, which the kernel may
// drop) and a read at start-up.
// Only weights loaded to run a model (HfModel) are copied; files read once (conversion, a GGUF's
// tokenizer) are always mapped. For those weights MOE_HUGEPAGES chooses: 1 = always copy, 0 =
// always map, unset = copy a model of 32 MiB or more when it fits in half of MemAvailable and
// transparent huge pages are not "never" (smaller ones gain nothing; a model that does not fit
// is mapped and still runs). Any other value is refused.
// Where the anonymous memory cannot be had, the file is mapped and a note says so (under Linux's
// default overcommit the reservation rarely fails, hence the auto rule's margin).
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

// fd open for reading, size its length (> 0). copy: into huge pages (the caller asked
// hugepage_copy_wanted once for the whole model, its shards together, so that a model is not
// half copied as the copies use up the memory), else mapped. Errors name `path`. The caller
// closes fd.
FileMap map_file_readonly(const std::string& path, int fd, size_t size, bool copy);
void unmap_file(const FileMap& m);
// A huge-page copy is ours: the loaders may rewrite it (GGML's Q8_0 blocks into the split layout,
// kernels/q8_gemm.h) between set_writable(m, true) and set_writable(m, false). Mappings of files
// are never written (a no-op for them would hide a bug: it fails).
void file_map_set_writable(const FileMap& m, bool writable);
// The choice for the weights of a model of `model_bytes` (MOE_HUGEPAGES and the rule above);
// fails on a bad value.
bool hugepage_copy_wanted(size_t model_bytes);

// Bytes of the files held now as huge-page copies and as mappings (what `bench generate` reports).
struct FileMapTotals {
    size_t huge = 0, mapped = 0;
};
FileMapTotals file_map_totals();

}  // namespace moe
