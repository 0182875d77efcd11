// `moe generate`, `moe eval` on Hugging Face folders: the contracts of issue 8 (--prompt-ids,
// token_ids, --dump-logits, val_loss, --stats) against the engine called directly.
#include <nlohmann/json.hpp>

#include "hf_fixture.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "train/generate.h"

namespace moe {
namespace {

using json = nlohmann::json;

json last_json(const std::string& out) {
    size_t end = out.find_last_not_of('\n');
    size_t start = out.rfind('\n', end);
    return json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
}

class HfCli : public ::testing::Test {
   protected:
    void SetUp() override {
        if (test::moe_bin().empty()) GTEST_SKIP() << "MOE_BIN not set";
        dir_ = test::temp_model_dir("cli");
        json j = test::tiny_hf_config("qwen2_moe");
        test::write_hf_dir(dir_, j, test::tiny_hf_tensors(j, 21), WType::bf16, 2);
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }
    std::string dir_;
};

TEST_F(HfCli, GenerateGreedyIdsMatchTheEngine) {
    auto r = test::run_moe_cmd("generate " + dir_ +
                               " --prompt-ids 5,17,3,60 --max-tokens 12 --temperature 0 "
                               "--ignore-eos --stats --json --threads 1");
    ASSERT_EQ(0, r.rc) << r.out;
    json j = last_json(r.out);
    std::vector<int32_t> got = j["token_ids"];
    HfModel m(dir_);
    SampleOptions o;
    o.max_tokens = 12;
    o.temperature = 0;
    std::string stop;
    auto want = generate_hf(m, {5, 17, 3, 60}, o, {}, nullptr, &stop);
    EXPECT_EQ(want, got);
    EXPECT_EQ("length", j["stop"]);
    EXPECT_EQ(16, j["stats"]["tokens"].get<int>() + 1);  // the last token is never fed
    EXPECT_NE(std::string::npos, r.out.find("experts used over"));
    EXPECT_NE(std::string::npos, r.out.find("mapped"));
}

TEST_F(HfCli, EvalDumpsTheLogitsOfOneForward) {
    const std::string out = dir_ + "/logits.safetensors";
    auto r = test::run_moe_cmd("eval " + dir_ + " --prompt-ids 1,2,3,4,5,6,7 --dump-logits " +
                               out + " --json");
    ASSERT_EQ(0, r.rc) << r.out;
    SafetensorsReader st(out);
    const StTensor& t = st.get("logits", {7, 97});
    HfModel m(dir_);
    std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7};
    const float* want = m.cache_feed(ids.data(), 7, true);
    EXPECT_TRUE(test::all_close(t.data.data(), want, 7 * 97, 0, 1e-6));
    EXPECT_GT(last_json(r.out)["val_loss"].get<double>(), 0);
}

TEST_F(HfCli, BadFlagsAreOneLineErrors) {
    for (const std::string args :
         {"generate " + dir_ + " --prompt-ids 1,x,3", "generate " + dir_ + " --prompt-ids 1,97",
          "generate " + dir_ + " --prompt-ids 1,,2", "eval " + dir_ + " --dump-logits /tmp/x",
          "generate " + dir_ + " --prompt hi"}) {
        auto r = test::run_moe_cmd(args);
        EXPECT_TRUE(r.rc == 1 || r.rc == 2) << args << "\n" << r.out;
        EXPECT_NE(std::string::npos, r.out.find("moe: error: ")) << args << "\n" << r.out;
    }
    // 65 ids in a context of 64
    std::string ids = "1";
    for (int i = 0; i < 64; i++) ids += ",1";
    auto r = test::run_moe_cmd("generate " + dir_ + " --prompt-ids " + ids);
    EXPECT_EQ(1, r.rc) << r.out;
    EXPECT_NE(std::string::npos, r.out.find("context of 64")) << r.out;
}

}  // namespace
}  // namespace moe
