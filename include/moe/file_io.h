// Files are written atomically: a temp file beside the target, fsync, rename, fsync of the folder.
// A killed run leaves either the old file or the new one, never half of one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

void write_file_atomic(const std::string& path, const void* data, size_t size);
void write_file_atomic(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);  // throws moe::Error with the path when missing
// Throws moe::Error naming the path when it is missing, a folder, or not a regular file (a
// device such as /dev/null, a pipe).
void check_readable_file(const std::string& path);
// Memory the machine can still give (MemAvailable of /proc/meminfo; 0 when unknown).
uint64_t available_memory_bytes();
// Refuses, before allocating, what cannot fit: "<what>: needs 12.3 GB but 3.1 GB are available;
// <hint>". Does nothing when the available memory is unknown.
void check_fits_in_memory(double bytes, const std::string& what, const std::string& hint);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p
void fsync_dir(const std::string& dir);

}  // namespace moe
