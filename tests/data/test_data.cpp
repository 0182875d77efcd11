// Tokenizers, token files, the batch loader, the training config parser.
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "data/loader.h"
#include "data/token_file.h"
#include "moe/config.h"
#include "moe/file_io.h"
#include "moe/tokenizer.h"
#include "test_util.h"

using namespace moe;

static std::string tmp_dir(const char* name) {
    std::string d = "/tmp/moe_test_data_" + std::to_string(getpid()) + "_" + name;
    make_dirs(d);
    return d;
}

static std::string shakespeare() {
    return read_file(test::source_dir() + "/data/tinyshakespeare.txt");
}

TEST(CharTokenizer, ShakespeareVocabIsNanoGptOrder) {
    std::string text = shakespeare();
    auto tok = build_char_tokenizer(text);
    EXPECT_EQ(tok->vocab_size(), 65);
    // nanoGPT: chars = sorted(set(data)) -> '\n', ' ', '!', ... 'z'
    EXPECT_EQ(tok->piece(0), "\n");
    EXPECT_EQ(tok->piece(1), " ");
    EXPECT_EQ(tok->piece(64), "z");
    auto ids = tok->encode(text.substr(0, 5000));
    EXPECT_EQ(tok->decode(ids), text.substr(0, 5000));
    EXPECT_EQ(tok->encode("First")[0], tok->encode("F")[0]);
}

TEST(CharTokenizer, Utf8RoundTripAndSaveLoad) {
    std::string text = "héllo wörld → ünïcode\nsecond line ✓";
    auto tok = build_char_tokenizer(text);
    auto ids = tok->encode(text);
    EXPECT_EQ(ids.size(), 35u);  // code points, not bytes
    EXPECT_EQ(tok->decode(ids), text);
    std::string d = tmp_dir("char");
    tok->save(d);
    auto back = load_tokenizer(d);
    EXPECT_EQ(back->kind(), "char");
    EXPECT_EQ(back->vocab_size(), tok->vocab_size());
    EXPECT_EQ(back->encode(text), ids);
}

TEST(CharTokenizer, UnknownSymbolNamesItAndItsOffset) {
    auto tok = build_char_tokenizer("abc\n");
    try {
        tok->encode("ab§c");
        FAIL() << "no error";
    } catch (const Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("'§'"), std::string::npos) << m;
        EXPECT_NE(m.find("byte 2"), std::string::npos) << m;
    }
    EXPECT_THROW(tok->encode("a\tb"), Error);  // control chars shown as U+0009
    try {
        tok->encode("a\tb");
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("U+0009"), std::string::npos) << e.what();
    }
    EXPECT_THROW(build_char_tokenizer(""), Error);
    EXPECT_THROW(tok->piece(99), Error);
}

TEST(CharTokenizer, BadVocabFile) {
    std::string d = tmp_dir("badvocab");
    write_file_atomic(d + "/vocab.json", std::string("{\"a\": 1}"));
    EXPECT_THROW(load_tokenizer(d), Error);
    write_file_atomic(d + "/vocab.json", std::string("[\"a\", \"a\"]"));
    EXPECT_THROW(load_tokenizer(d), Error);
    write_file_atomic(d + "/vocab.json", std::string("[\"a\", "));
    EXPECT_THROW(load_tokenizer(d), Error);
    std::string e = tmp_dir("empty");
    EXPECT_THROW(load_tokenizer(e), Error);
}

TEST(SentencePiece, BpeAndUnigramRoundTripSaveLoad) {
    std::string text = shakespeare().substr(0, 60000);
    for (const char* type : {"bpe", "unigram"}) {
        auto tok = train_sentencepiece(text, 400, type);
        EXPECT_EQ(tok->kind(), "sentencepiece");
        EXPECT_LE(tok->vocab_size(), 400);
        EXPECT_GT(tok->vocab_size(), 260);
        std::string sample = text.substr(1000, 3000) + "\n\nNew  text, with  double spaces\n";
        auto ids = tok->encode(sample);
        EXPECT_LT(ids.size(), sample.size());  // it compresses
        EXPECT_EQ(tok->decode(ids), sample) << type;
        // Unseen symbols go through byte fallback: still a round trip.
        std::string odd = "naïve ✓ {}";
        EXPECT_EQ(tok->decode(tok->encode(odd)), odd);
        std::string d = tmp_dir(type);
        tok->save(d);
        auto back = load_tokenizer(d);
        EXPECT_EQ(back->encode(sample), ids);
    }
    EXPECT_THROW(train_sentencepiece(text, 100, "bpe"), Error);
    EXPECT_THROW(train_sentencepiece(text, 400, "wordpiece"), Error);
    EXPECT_THROW(train_sentencepiece("", 400, "bpe"), Error);
}

TEST(TokenFile, RoundTripBothDtypes) {
    std::string d = tmp_dir("tok");
    std::vector<int32_t> ids = {0, 5, 64, 3, 1, 0};
    write_token_file(d + "/a.tok", ids, 65, "char");
    EXPECT_TRUE(is_token_file(d + "/a.tok"));
    TokenFile t = read_token_file(d + "/a.tok");
    EXPECT_EQ(t.ids, ids);
    EXPECT_EQ(t.vocab, 65);
    EXPECT_EQ(t.dtype, "uint16");
    EXPECT_EQ(t.tokenizer, "char");
    std::vector<int32_t> big = {70000, 1, 99999};
    write_token_file(d + "/b.tok", big, 100000, "sentencepiece");
    TokenFile b = read_token_file(d + "/b.tok");
    EXPECT_EQ(b.ids, big);
    EXPECT_EQ(b.dtype, "uint32");
    // Byte layout: magic, header length, JSON, 8-aligned ids.
    std::string raw = read_file(d + "/a.tok");
    EXPECT_EQ(raw.substr(0, 8), "MOETOK01");
    uint64_t hlen;
    std::memcpy(&hlen, raw.data() + 8, 8);
    EXPECT_EQ((16 + hlen) % 8, 0u);
    EXPECT_EQ(raw.size(), 16 + hlen + 2 * ids.size());
    EXPECT_THROW(write_token_file(d + "/c.tok", {65}, 65, "char"), Error);
}

TEST(TokenFile, BadFilesAreErrors) {
    std::string d = tmp_dir("badtok");
    write_token_file(d + "/a.tok", {1, 2, 3, 4}, 65, "char");
    std::string raw = read_file(d + "/a.tok");
    auto expect_error = [&](const std::string& bytes, const char* needle) {
        write_file_atomic(d + "/x.tok", bytes);
        try {
            read_token_file(d + "/x.tok");
            ADD_FAILURE() << "no error for " << needle;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("x.tok"), std::string::npos) << e.what();
        }
    };
    expect_error(raw.substr(0, raw.size() - 1), "truncated");
    expect_error("NOTATOKN" + raw.substr(8), "magic");
    std::string bad_json = raw;
    bad_json[16] = '[';
    expect_error(bad_json, "JSON");
    std::string huge = raw;
    uint64_t h = 1ull << 40;
    std::memcpy(&huge[8], &h, 8);
    expect_error(huge, "header length");
    std::string bad_id = raw;
    uint16_t v = 200;
    std::memcpy(&bad_id[raw.size() - 2], &v, 2);
    expect_error(bad_id, "outside vocab");
    EXPECT_THROW(read_token_file(d + "/missing.tok"), Error);
}

TEST(BatchLoader, DeterministicWindowsAndResumableState) {
    std::vector<int32_t> toks(1000);
    for (int i = 0; i < 1000; i++) toks[i] = i;
    BatchLoader a(&toks, 4, 16, 42), b(&toks, 4, 16, 42), c(&toks, 4, 16, 43);
    std::vector<int32_t> xa(64), ya(64), xb(64), yb(64), xc(64), yc(64);
    for (int step = 0; step < 5; step++) {
        a.next(xa.data(), ya.data());
        b.next(xb.data(), yb.data());
        c.next(xc.data(), yc.data());
        EXPECT_EQ(xa, xb);
        EXPECT_EQ(ya, yb);
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < 16; s++) {
                EXPECT_EQ(ya[r * 16 + s], xa[r * 16 + s] + 1);  // targets are the next tokens
                if (s) {
                    EXPECT_EQ(xa[r * 16 + s], xa[r * 16 + s - 1] + 1);
                }
                EXPECT_LE(ya[r * 16 + s], 999);
            }
    }
    EXPECT_NE(xa, xc);
    // Save the state, draw, restore into a fresh loader: the same next batch.
    auto st = a.state();
    nlohmann::json round = nlohmann::json::parse(st.dump());
    a.next(xa.data(), ya.data());
    BatchLoader d(&toks, 4, 16, 7);
    d.set_state(round);
    d.next(xb.data(), yb.data());
    EXPECT_EQ(xa, xb);
    // Every start is reachable, including the last one (n - S - 1).
    std::vector<int32_t> small = {0, 1, 2, 3};
    BatchLoader e(&small, 64, 3, 1);
    std::vector<int32_t> x(192), y(192);
    e.next(x.data(), y.data());
    for (int r = 0; r < 64; r++) EXPECT_EQ(x[r * 3], 0);  // only one window fits
    std::vector<int32_t> tiny = {0, 1, 2};
    EXPECT_THROW(BatchLoader(&tiny, 1, 3, 1), Error);
    EXPECT_EQ(n_eval_windows(130, 64), 2);
    EXPECT_EQ(n_eval_windows(129, 64), 1);
}

TEST(RngState, JsonRoundTripIsExact) {
    Rng r(5);
    r.normal();  // leaves a spare
    Rng q(0);
    rng_from_json(q, nlohmann::json::parse(rng_to_json(r).dump()), "test");
    for (int i = 0; i < 10; i++) EXPECT_EQ(r.normal(), q.normal());
}

// ---- config ----

TEST(Config, ParsesFileAndFlagsOverride) {
    std::string d = tmp_dir("cfg");
    write_file_atomic(d + "/c.json", std::string(R"({
        // comments allowed
        "n_layers": 2, "d_model": 64, "n_heads": 4, "lr": 0.002, "router": "switch",
        "tie_embeddings": false, "activation": "gelu", "seed": 7, "comment": "note"
    })"));
    TrainConfig c = config_load(d + "/c.json");
    EXPECT_EQ(c.model.n_layers, 2);
    EXPECT_EQ(c.model.d_model, 64);
    EXPECT_DOUBLE_EQ(c.lr, 0.002);
    EXPECT_EQ(c.model.moe.router, "switch");
    EXPECT_FALSE(c.model.tie_embeddings);
    EXPECT_EQ(c.model.moe.activation, Activation::gelu);
    EXPECT_EQ(c.seed, 7u);
    config_set(c, "lr", "3e-4");
    config_set(c, "max-steps", "50");
    config_set(c, "tie_embeddings", "true");
    config_set(c, "router", "topk");
    EXPECT_DOUBLE_EQ(c.lr, 3e-4);
    EXPECT_EQ(c.max_steps, 50);
    EXPECT_TRUE(c.model.tie_embeddings);
    // dump -> parse is the identity
    TrainConfig back;
    config_apply_json(back, config_to_json(c), "dump");
    EXPECT_EQ(config_to_json(back).dump(), config_to_json(c).dump());
}

static std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(Config, ErrorsNameTheKey) {
    TrainConfig c;
    std::string m = error_of([&] {
        config_apply_json(c, nlohmann::json{{"n_layer", 3}}, "x.json");
    });
    EXPECT_NE(m.find("unknown config key 'n_layer'"), std::string::npos) << m;
    EXPECT_NE(m.find("x.json"), std::string::npos) << m;
    m = error_of([&] { config_set(c, "learning_rate", "1"); });
    EXPECT_NE(m.find("--learning_rate"), std::string::npos) << m;
    m = error_of([&] { config_set(c, "max_steps", "ten"); });
    EXPECT_NE(m.find("max_steps"), std::string::npos) << m;
    m = error_of([&] { config_apply_json(c, nlohmann::json{{"lr", "fast"}}, "x.json"); });
    EXPECT_NE(m.find("key 'lr': must be a number"), std::string::npos) << m;
    m = error_of([&] { config_apply_json(c, nlohmann::json{{"n_layers", 2.5}}, "x.json"); });
    EXPECT_NE(m.find("n_layers"), std::string::npos) << m;
    std::string d = tmp_dir("cfg2");
    write_file_atomic(d + "/bad.json", std::string("{ \"lr\": 1e-3, "));
    m = error_of([&] { config_load(d + "/bad.json"); });
    EXPECT_NE(m.find("not valid JSON"), std::string::npos) << m;
    m = error_of([&] { config_load(d + "/none.json"); });
    EXPECT_NE(m.find("none.json"), std::string::npos) << m;
}

TEST(Config, ImpossibleShapes) {
    TrainConfig c;
    c.model.d_model = 130;
    c.model.n_heads = 4;
    std::string m = error_of([&] { config_validate(c); });
    EXPECT_NE(m.find("n_heads=4 does not divide d_model=130"), std::string::npos) << m;
    c = TrainConfig();
    c.model.moe.n_experts = 4;
    c.model.moe.top_k = 5;
    c.model.moe.d_ff = 16;
    m = error_of([&] { config_validate(c); });
    EXPECT_NE(m.find("top_k=5 > n_experts=4"), std::string::npos) << m;
    c = TrainConfig();
    c.model.moe.n_experts = 8;
    c.model.moe.top_k = 2;
    c.model.moe.d_ff = 16;
    c.model.n_kv_heads = 3;
    m = error_of([&] { config_validate(c); });
    EXPECT_NE(m.find("n_kv_heads=3"), std::string::npos) << m;
    c.model.n_kv_heads = 2;
    EXPECT_EQ(error_of([&] { config_validate(c); }), "");
    c.tokenizer = "bytes";
    EXPECT_NE(error_of([&] { config_validate(c); }), "");
}

TEST(Config, HfConfigRoundTrip) {
    ModelConfig m;
    m.vocab_size = 65;
    m.moe.n_experts = 8;
    m.moe.top_k = 2;
    m.moe.d_ff = 256;
    m.moe.d_model = m.d_model;
    m.moe.w_switch = 0.01f;
    m.moe.router = "topk";
    m.moe_every = 2;
    m.n_kv_heads = 2;
    nlohmann::json j = model_config_to_hf(m);
    EXPECT_EQ(j["architectures"][0], "MixtralForCausalLM");
    EXPECT_EQ(j["model_type"], "mixtral");
    EXPECT_EQ(j["intermediate_size"], 256);
    EXPECT_EQ(j["num_local_experts"], 8);
    EXPECT_EQ(j["num_key_value_heads"], 2);
    EXPECT_EQ(j["moe_cpp"]["dense_intermediate_size"], 512);
    ModelConfig b = model_config_from_hf(nlohmann::json::parse(j.dump()), "config.json");
    EXPECT_EQ(model_config_to_hf(b).dump(), j.dump());
    // A plain HF Mixtral config (no moe_cpp) loads as MoE in every layer.
    nlohmann::json hf = j;
    hf.erase("moe_cpp");
    ModelConfig c = model_config_from_hf(hf, "config.json");
    EXPECT_EQ(c.moe_every, 1);
    EXPECT_EQ(c.moe.d_ff, 256);
    nlohmann::json bad = j;
    bad["num_experts_per_tok"] = 9;
    std::string m2 = error_of([&] { model_config_from_hf(bad, "ck/config.json"); });
    EXPECT_NE(m2.find("ck/config.json"), std::string::npos) << m2;
    bad = j;
    bad.erase("hidden_size");
    m2 = error_of([&] { model_config_from_hf(bad, "ck/config.json"); });
    EXPECT_NE(m2.find("hidden_size"), std::string::npos) << m2;
}
