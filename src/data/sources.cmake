# Tokenizers, token files, the batch loader.
list(APPEND MOE_SOURCES
  src/data/tokenizer.cpp
  src/data/added_tokens.cpp
  src/data/bpe_tokenizer.cpp
  src/data/hf_tokenizer.cpp
  src/data/gguf_tokenizer.cpp
  src/data/token_file.cpp
  src/data/loader.cpp
)
