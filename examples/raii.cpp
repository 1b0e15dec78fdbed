/*
 * raii.cpp -- libampr from C++17 with RAII: the context and each result are
 * std::unique_ptr with the library's own free functions as deleters, failures
 * become exceptions carrying the status and ampr_errmsg(), and streaming takes
 * any callable through a small trampoline. Nothing here is part of libampr;
 * copy and adapt it.
 *
 *   build/examples/raii [MODEL]
 *
 * Config from $AMPR_CONFIG (see common.h). Exits 0 on success, 1 on failure.
 */
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "ampr.h"
#include "common.h"

namespace ampr {

class Error : public std::runtime_error {
  public:
    Error(ampr_status status, const std::string &what)
        : std::runtime_error(what + " (" + ampr_status_name(status) + ")"), status_(status) {}
    ampr_status status() const noexcept { return status_; }

  private:
    ampr_status status_;
};

struct CtxDeleter {
    void operator()(ampr_ctx *c) const noexcept { ampr_close(c); }
};
struct ResultDeleter {
    void operator()(ampr_result *r) const noexcept { ampr_result_free(r); }
};
using CtxPtr = std::unique_ptr<ampr_ctx, CtxDeleter>;
using ResultPtr = std::unique_ptr<ampr_result, ResultDeleter>;

class Model {
  public:
    Model(const std::string &path, const char *config) {
        ampr_ctx *raw = nullptr;
        ampr_status st = ampr_open(path.c_str(), config, &raw);
        CtxPtr guard(raw); /* freed even when open failed */
        if (st != AMPR_OK) throw Error(st, "cannot open " + path + ": " + ampr_errmsg(raw));
        ctx_ = std::move(guard);
    }

    std::vector<int32_t> tokenize(std::string_view text, bool add_bos = true) const {
        size_t n = 0;
        ampr_status st = ampr_tokenize(ctx_.get(), text.data(), text.size(), add_bos, nullptr, 0, &n);
        if (st != AMPR_OK && st != AMPR_ERR_BUFFER_TOO_SMALL) fail(st);
        std::vector<int32_t> ids(n);
        check(ampr_tokenize(ctx_.get(), text.data(), text.size(), add_bos, ids.data(), ids.size(), &n));
        return ids;
    }

    /* Greedy generation; on_piece(std::string_view) -> bool (true = stop). */
    template <class F>
    ResultPtr generate(std::string_view prompt, int max_tokens, F &&on_piece) const {
        ampr_gen_params p;
        ampr_gen_params_init(&p);
        p.max_tokens = max_tokens;
        p.temperature = 0.0f;
        p.user = &on_piece;
        p.on_token = [](void *user, const char *piece, size_t len, int32_t) -> int {
            /* exceptions must not cross into C */
            try {
                return (*static_cast<F *>(user))(std::string_view(piece, len)) ? 1 : 0;
            } catch (...) {
                return 1;
            }
        };
        ampr_result *raw = nullptr;
        ampr_status st = ampr_generate(ctx_.get(), prompt.data(), prompt.size(), &p, &raw);
        ResultPtr res(raw);
        if (st != AMPR_OK && st != AMPR_ERR_CANCELLED) fail(st);
        return res;
    }

    ResultPtr generate(std::string_view prompt, int max_tokens) const {
        return generate(prompt, max_tokens, [](std::string_view) { return false; });
    }

  private:
    [[noreturn]] void fail(ampr_status st) const { throw Error(st, ampr_errmsg(ctx_.get())); }
    void check(ampr_status st) const {
        if (st != AMPR_OK) fail(st);
    }
    CtxPtr ctx_;
};

} // namespace ampr

int main(int argc, char **argv) {
    try {
        ampr::Model model(example_model(argc, argv), example_config());
        const std::string prompt = "Once upon a time";
        std::printf("prompt tokens: %zu\n", model.tokenize(prompt).size());

        std::string streamed;
        ampr::ResultPtr r = model.generate(prompt, 30, [&](std::string_view piece) {
            streamed.append(piece);
            return false;
        });
        std::printf("%s%s\n", prompt.c_str(), streamed.c_str());
        if (streamed != std::string_view(r->text, r->text_len)) {
            std::fprintf(stderr, "raii: streamed text differs from the result\n");
            return 1;
        }
        ampr::ResultPtr again = model.generate(prompt, 30);
        if (std::string_view(again->text, again->text_len) != streamed) {
            std::fprintf(stderr, "raii: greedy generation is not repeatable\n");
            return 1;
        }
        /* errors are exceptions with the library's message */
        try {
            model.generate("\xff\xfe", 4);
            std::fprintf(stderr, "raii: invalid UTF-8 was accepted\n");
            return 1;
        } catch (const ampr::Error &e) {
            std::printf("expected error: %s\n", e.what());
            if (e.status() != AMPR_ERR_BAD_UTF8) return 1;
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "raii: %s\n", e.what());
        return 1;
    }
    return 0;
}
