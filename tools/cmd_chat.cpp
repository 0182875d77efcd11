// moe chat DIR: an interactive loop with a Hugging Face chat model. The prompt is built with the
// folder's chat template, recognised by the markers it uses (a Jinja interpreter is not part of
// moe.cpp): ChatML (<|im_start|>: Qwen), [INST] (Mistral/Mixtral) and <|user|>/<|assistant|>
// (Tulu: OLMoE-Instruct). Other templates are refused with a message; --template forces one.
// Each turn re-encodes and re-feeds the whole conversation (prefill is fast next to decoding).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "moe/checked.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/runtime.h"
#include "moe/tokenizer.h"
#include "tools/checked_flags.h"
#include "tools/command.h"
#include "tools/hf_tools.h"
#include "train/generate.h"

namespace moe::tools {

struct ChatOptions {
    std::string model, system, tmpl = "auto";
    SampleOptions sample;
    int threads = 0;
};

struct Message {
    std::string role, content;
};

// The conversation as text, ending with the assistant's turn opened (the generation prompt).
static std::string render_chat(const std::string& kind, const std::vector<Message>& msgs,
                               const Tokenizer& tok) {
    std::string s;
    auto eos_text = [&]() {
        return tok.special().eos.empty() ? std::string() : tok.piece(tok.special().eos[0]);
    };
    if (kind == "chatml") {
        for (auto& m : msgs) s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        return s + "<|im_start|>assistant\n";
    }
    if (kind == "inst") {  // system text goes in front of the first user message
        std::string pending;
        for (auto& m : msgs) {
            if (m.role == "system") pending = m.content + "\n\n";
            if (m.role == "user") s += "[INST] " + pending + m.content + " [/INST]", pending.clear();
            if (m.role == "assistant") s += m.content + eos_text();
        }
        return s;
    }
    for (auto& m : msgs) {  // tulu
        if (m.role == "assistant")
            s += "<|assistant|>\n" + m.content + eos_text() + "\n";
        else
            s += "<|" + m.role + "|>\n" + m.content + "\n";
    }
    return s + "<|assistant|>\n";
}

static std::string detect_template(const std::string& t) {
    if (t.find("<|im_start|>") != std::string::npos) return "chatml";
    if (t.find("[INST]") != std::string::npos) return "inst";
    if (t.find("<|assistant|>") != std::string::npos) return "tulu";
    return "";
}

static int run_chat(const ChatOptions& o) {
    set_threads(o.threads);
    if (!is_hf_model_dir(o.model))
        usage_fail("{}: moe chat needs a Hugging Face model folder (config.json with model_type)",
                   o.model);
    auto model = load_hf_model(o.model);
    std::unique_ptr<Tokenizer> tok = load_tokenizer(o.model);
    std::string kind = o.tmpl;
    if (kind == "auto") {
        kind = detect_template(tok->special().chat_template);
        if (kind.empty())
            fail("{}: {}; give --template chatml|inst|tulu if you know the model's format", o.model,
                 tok->special().chat_template.empty()
                     ? "tokenizer_config.json has no chat_template (a base model, not a chat one?)"
                     : "its chat_template is none of the formats moe chat knows");
    }
    std::vector<int32_t> eos = tok->special().eos;
    if (eos.empty()) eos = model->config().eos_token_ids;
    if (kind == "chatml") {  // a turn ends with <|im_end|> even where EOS is another token
        int32_t im_end = tok->token_id("<|im_end|>");
        if (im_end >= 0) eos.push_back(im_end);
    }
    std::vector<Message> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    std::fprintf(stderr, "chat (%s format): type a message, an empty line or Ctrl-D ends\n",
                 kind.c_str());
    std::string line;
    while (true) {
        std::fprintf(stderr, "> ");
        if (!std::getline(std::cin, line) || line.empty()) break;
        msgs.push_back({"user", line});
        std::vector<int32_t> ids;
        if (tok->special().add_bos && tok->special().bos >= 0) ids.push_back(tok->special().bos);
        std::vector<int32_t> body = tok->encode(render_chat(kind, msgs, *tok));
        ids.insert(ids.end(), body.begin(), body.end());
        if ((int64_t)ids.size() >= model->config().max_positions) {
            std::fprintf(stderr, "chat: the conversation fills the context; ending\n");
            break;
        }
        std::string stop;
        StreamDecoder stream(*tok);
        std::vector<int32_t> out = generate_hf(
            *model, ids, o.sample, eos,
            [&](int32_t id) {
                if (std::find(eos.begin(), eos.end(), id) != eos.end()) return;
                std::fputs(stream.push(id).c_str(), stdout);
                std::fflush(stdout);
            },
            &stop);
        std::fputs(stream.flush().c_str(), stdout);
        std::printf("\n");
        if (!out.empty() && std::find(eos.begin(), eos.end(), out.back()) != eos.end())
            out.pop_back();
        msgs.push_back({"assistant", tok->decode(out)});
    }
    return 0;
}

static void register_chat(CLI::App& app) {
    auto o = std::make_shared<ChatOptions>();
    o->sample.max_tokens = 512;
    o->sample.temperature = 0.7f;
    CLI::App* sub = app.add_subcommand(
        "chat",
        "Chat with a Hugging Face instruction model (its chat template: ChatML, [INST], Tulu).\n"
        "Example: moe chat ~/models/Qwen1.5-MoE-A2.7B-Chat --system \"You are concise.\"");
    sub->add_option("model", o->model, "Hugging Face model folder")->required();
    sub->add_option("--system", o->system, "a system message first");
    add_choice(sub, "--template", o->tmpl, "auto|chatml|inst|tulu",
               "the prompt format (auto: from tokenizer_config.json's chat_template)");
    add_checked(sub, "--max-tokens", o->sample.max_tokens, Range::in(1, 1 << 20),
                "tokens per answer at most");
    add_checked(sub, "--temperature", o->sample.temperature, Range::in(0, 1e6),
                "softmax temperature; 0 = greedy");
    add_checked(sub, "--top-k", o->sample.top_k, Range::in(0, 1 << 24), "top-k (0 = off)");
    add_checked(sub, "--top-p", o->sample.top_p, Range{0, 1, true, false}, "nucleus mass");
    add_checked(sub, "--seed", o->sample.seed, Range::at_least(0), "sampling seed");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    sub->callback([o]() { exit_code() = run_chat(*o); });
}

static RegisterCommand reg_chat("chat", register_chat);

}  // namespace moe::tools
