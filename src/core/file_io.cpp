#include "moe/file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "moe/error.h"

namespace moe {

static std::string parent_dir(const std::string& path) {
    auto p = path.find_last_of('/');
    if (p == std::string::npos) return ".";
    if (p == 0) return "/";
    return path.substr(0, p);
}

void fsync_dir(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        fail("{}: cannot create: {}; check that its folder exists and is writable", path,
             std::strerror(errno));
    const char* p = static_cast<const char*>(data);
    size_t left = size;
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            fail("{}: cannot write: {}; free disk space or choose another place", path,
                 std::strerror(e));
        }
        p += n;
        left -= (size_t)n;
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail("{}: cannot flush: {}; free disk space or choose another place", path,
             std::strerror(e));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail("{}: cannot rename {} into place: {}; check the folder's permissions", path, tmp,
             std::strerror(e));
    }
    fsync_dir(parent_dir(path));
}

void write_file_atomic(const std::string& path, const std::string& text) {
    write_file_atomic(path, text.data(), text.size());
}

void check_readable_file(const std::string& path) {
    struct stat st;
    if (path.empty()) fail("(empty path): no file named; give a file path");
    if (::stat(path.c_str(), &st) != 0)
        fail("{}: cannot open: {}; check the path", path, std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("{}: is a folder, not a file; give a file path", path);
    if (!S_ISREG(st.st_mode))
        fail("{}: not a regular file (a device, pipe or socket); give a file path", path);
}

uint64_t available_memory_bytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    uint64_t kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit)
        if (key == "MemAvailable:") return kb * 1024;
    return 0;
}

void check_fits_in_memory(double bytes, const std::string& what, const std::string& hint) {
    const double avail = (double)available_memory_bytes();
    if (avail <= 0 || bytes <= 0.9 * avail) return;
    fail("{}: needs {:.3g} GB of memory but {:.3g} GB are available; {}", what, bytes / 1e9,
         avail / 1e9, hint);
}

std::string read_file(const std::string& path) {
    check_readable_file(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("{}: cannot open: {}; check its permissions", path, std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool file_exists(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
    if (path.empty() || dir_exists(path)) return;
    make_dirs(parent_dir(path));
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
        fail("{}: cannot create folder: {}; give a path whose parents are folders you can write",
             path, std::strerror(errno));
}

}  // namespace moe
