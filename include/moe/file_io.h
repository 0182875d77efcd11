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
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p
void fsync_dir(const std::string& dir);

}  // namespace moe
