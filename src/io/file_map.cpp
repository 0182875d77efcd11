#include "io/file_map.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "moe/error.h"

namespace moe {

static std::atomic<size_t> g_huge_bytes{0}, g_mapped_bytes{0};

FileMapTotals file_map_totals() { return {g_huge_bytes.load(), g_mapped_bytes.load()}; }

// MemAvailable in bytes from /proc/meminfo, 0 where it cannot be read.
static size_t mem_available_bytes() {
    std::FILE* f = std::fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    std::fclose(f);
    return (size_t)kb * 1024;
}

// Transparent huge pages can be had for madvised memory ("always" or "madvise" selected).
static bool thp_available() {
    std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return false;
    char line[128] = {0};
    const bool ok = std::fgets(line, sizeof line, f) && !std::strstr(line, "[never]");
    std::fclose(f);
    return ok;
}

bool hugepage_copy_wanted(size_t model_bytes) {  // asked once per model loaded
    const char* e = std::getenv("MOE_HUGEPAGES");
    if (e && *e) {
        if (std::strcmp(e, "1") == 0) return true;
        if (std::strcmp(e, "0") == 0) return false;
        fail("MOE_HUGEPAGES={}: use 1 (copy the weights into huge pages), 0 (map the files) or "
             "leave it unset (copy a model that fits in half the available memory)", e);
    }
    const size_t min_size = (size_t)32 << 20;
    return model_bytes >= min_size && thp_available() && model_bytes <= mem_available_bytes() / 2;
}

static FileMap map_shared(const std::string& path, int fd, size_t size) {
    void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail("{}: cannot map: {}; check the file", path, std::strerror(errno));
    FileMap m;
    m.data = (const uint8_t*)p;
    m.size = size;
    m.map_base = p;
    m.map_len = size;
    g_mapped_bytes += size;
    return m;
}

void file_map_set_writable(const FileMap& m, bool writable) {
    if (!m.huge) fail("internal: only a huge-page copy of a file may be written");
    if (mprotect((void*)m.data, m.size, writable ? PROT_READ | PROT_WRITE : PROT_READ) != 0)
        fail("cannot change the protection of a model's copy in memory: {}", std::strerror(errno));
}

FileMap map_file_readonly(const std::string& path, int fd, size_t size, bool copy) {
    if (!copy) return map_shared(path, fd, size);
    const size_t huge = (size_t)2 << 20;
    const size_t len = (size + huge - 1) / huge * huge + huge;  // room to align the start
    void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        std::fprintf(stderr, "note: huge pages (MOE_HUGEPAGES): no %zu MB of anonymous memory for %s (%s); "
                     "mapping the file instead\n", len >> 20, path.c_str(), std::strerror(errno));
        return map_shared(path, fd, size);
    }
    uint8_t* a = (uint8_t*)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(a, len - (size_t)(a - (uint8_t*)raw), MADV_HUGEPAGE);  // advice: failure is harmless
    size_t done = 0;
    while (done < size) {
        const ssize_t n = pread(fd, a + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = n < 0 ? errno : 0;
            munmap(raw, len);
            fail("{}: cannot read it into memory (huge pages): {}; check the file, or set "
                 "MOE_HUGEPAGES=0 to map it", path, err ? std::strerror(err) : "the file ended early");
        }
        done += (size_t)n;
    }
    mprotect(a, size, PROT_READ);  // the weights are read-only, as when mapped
    FileMap m;
    m.data = a;
    m.size = size;
    m.map_base = raw;
    m.map_len = len;
    m.huge = true;
    g_huge_bytes += size;
    return m;
}

void unmap_file(const FileMap& m) {
    if (!m.map_base) return;
    (m.huge ? g_huge_bytes : g_mapped_bytes) -= m.size;
    munmap(m.map_base, m.map_len);
}

}  // namespace moe
