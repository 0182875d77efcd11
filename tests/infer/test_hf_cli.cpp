// `moe generate`, `moe eval` on Hugging Face folders: the contracts of issue 8 (--prompt-ids,
// token_ids, --dump-logits, val_loss, --stats) against the engine called directly.
#include <nlohmann/json.hpp>

#include "hf_fixture.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/tokenizer.h"
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
    for (const std::string& args :
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

// A byte-level BPE of single bytes, most of them pieces of multi-byte UTF-8 characters (lead and
// continuation bytes), on the fixture's 97 ids: greedy output then stops inside a character for
// some lengths. --json's text must be the decoded ids without that unfinished character (the
// stream holds it back too), never a U+FFFD for it.
TEST_F(HfCli, JsonTextNeverEndsInsideACharacter) {
    json vocab = json::object();
    for (int i = 0; i < 97; i++) {
        const int b = i < 48 ? 0x80 + i : i < 64 ? 0xc3 + (i - 48) : i < 72 ? 0xe4 + (i - 64)
                    : i < 76 ? 0xf0 + (i - 72) : 'a' + (i - 76);
        std::string piece;
        const uint32_t cp = byte_to_unicode((uint8_t)b);  // GPT-2's printable spelling
        if (cp < 0x80) piece = std::string(1, (char)cp);
        else piece = {(char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f))};
        vocab[piece] = i;
    }
    const json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                     {"use_regex", true}};
    const json tj = {{"version", "1.0"},        {"added_tokens", json::array()},
                     {"normalizer", nullptr},   {"pre_tokenizer", bl},
                     {"decoder", bl},           {"model", {{"type", "BPE"}, {"vocab", vocab},
                                                           {"merges", json::array()}}}};
    write_file_atomic(dir_ + "/tokenizer.json", tj.dump());
    auto tok = load_tokenizer(dir_);
    ASSERT_EQ("bpe", tok->kind());
    int cut = 0;
    for (int n = 1; n <= 12; n++) {
        auto r = test::run_moe_cmd("generate " + dir_ + " --prompt-ids 5,17,3,60 --max-tokens " +
                                   std::to_string(n) +
                                   " --temperature 0 --ignore-eos --json --threads 1");
        ASSERT_EQ(0, r.rc) << r.out;
        const json j = last_json(r.out);
        const std::string full = tok->decode(j["token_ids"].get<std::vector<int32_t>>());
        const size_t keep = utf8_complete_prefix(full);
        cut += keep < full.size();
        // Invalid bytes inside the text still show as U+FFFD, as JSON has them.
        const std::string want =
            json::parse(json(full.substr(0, keep))
                            .dump(-1, ' ', false, json::error_handler_t::replace))
                .get<std::string>();
        EXPECT_EQ(want, j["text"].get<std::string>()) << "--max-tokens " << n;
    }
    EXPECT_GT(cut, 0) << "no length ended inside a character: the test checks nothing";
}

}  // namespace
}  // namespace moe
