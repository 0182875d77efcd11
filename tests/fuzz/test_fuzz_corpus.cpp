// The fuzzers' seed corpora and every input they found crashing, run through the same target
// functions as libFuzzer runs them: each input is accepted or refused with moe::Error; any other
// exception fails the test (a crash or a sanitizer report fails it too).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fuzz.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

struct Target {
    const char* name;
    void (*fn)(const std::string&);
};

const Target kTargets[] = {
    {"safetensors", moe::fuzz::safetensors},
    {"train_config", moe::fuzz::train_config},
    {"hf_config", moe::fuzz::hf_config},
    {"trainer_state", moe::fuzz::trainer_state},
    {"token_file", moe::fuzz::token_file},
    {"trace", moe::fuzz::trace},
    {"metrics", moe::fuzz::metrics},
    {"vocab", moe::fuzz::vocab},
    {"hf_index", moe::fuzz::hf_index},
    {"gguf", moe::fuzz::gguf},
    {"hf_family", moe::fuzz::hf_family},
    {"tokenizer_json", moe::fuzz::tokenizer_json},
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

class FuzzCorpus : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzCorpus, EveryInputAcceptedOrRefusedWithMoeError) {
    const Target& t = GetParam();
    fs::path dir = fs::path(moe::test::source_dir()) / "tests/fuzz/corpus" / t.name;
    ASSERT_TRUE(fs::is_directory(dir)) << dir;
    std::vector<fs::path> files;
    for (auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    ASSERT_GE(files.size(), 3u) << dir << ": a seed corpus needs valid inputs and edge cases";
    int accepted = 0, refused = 0;
    for (auto& f : files) {
        std::string input = slurp(f);
        try {
            t.fn(input);
            accepted++;
        } catch (const moe::Error&) {
            refused++;
        } catch (const std::exception& e) {
            ADD_FAILURE() << f << ": " << typeid(e).name() << " escaped the parser: " << e.what();
        }
    }
    // Both outcomes are exercised: the seeds hold valid files, the regressions bad ones.
    EXPECT_GT(accepted, 0) << dir << ": no input accepted";
    EXPECT_GT(refused, 0) << dir << ": no input refused";
}

INSTANTIATE_TEST_SUITE_P(Parsers, FuzzCorpus, ::testing::ValuesIn(kTargets),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
