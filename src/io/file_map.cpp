#include "io/file_map.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "moe/error.h"

namespace moe {

bool hugepage_copy_wanted() {  // read at every file opened (a few per model)
    const char* e = std::getenv("MOE_HUGEPAGES");
    return e && std::strcmp(e, "1") == 0;
}

static FileMap map_shared(const std::string& path, int fd, size_t size) {
    void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail("{}: cannot map: {}; check the file", path, std::strerror(errno));
    FileMap m;
    m.data = (const uint8_t*)p;
    m.size = size;
    m.map_base = p;
    m.map_len = size;
    return m;
}

FileMap map_file_readonly(const std::string& path, int fd, size_t size) {
    if (!hugepage_copy_wanted()) return map_shared(path, fd, size);
    const size_t huge = (size_t)2 << 20;
    const size_t len = (size + huge - 1) / huge * huge + huge;  // room to align the start
    void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        std::fprintf(stderr, "note: MOE_HUGEPAGES: no %zu MB of anonymous memory for %s (%s); "
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
            fail("{}: cannot read it into memory (MOE_HUGEPAGES): {}; check the file, or unset "
                 "MOE_HUGEPAGES", path, err ? std::strerror(err) : "the file ended early");
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
    return m;
}

void unmap_file(const FileMap& m) {
    if (m.map_base) munmap(m.map_base, m.map_len);
}

}  // namespace moe
