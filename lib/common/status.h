/*
 * status.h -- the one list of status codes.
 *
 * X(NAME, number, text). ampr.h holds the enum itself (it is the manual);
 * this list generates ampr_strerror() and ampr_status_name(), and a compile
 * time check in status.c that both agree. Numbers are never reused.
 */
#ifndef AMPR_COMMON_STATUS_H
#define AMPR_COMMON_STATUS_H

#define AMPR__STATUS_LIST(X)                                                    \
    X(OK, 0, "success")                                                         \
    X(ERR_INVALID_ARG, 1, "invalid argument")                                   \
    X(ERR_NOMEM, 2, "out of memory")                                            \
    X(ERR_IO, 3, "I/O error")                                                   \
    X(ERR_CONFIG, 4, "invalid configuration")                                   \
    X(ERR_MODEL_FORMAT, 5, "malformed model file")                              \
    X(ERR_MODEL_TRUNCATED, 6, "model file is truncated")                        \
    X(ERR_MODEL_BOUNDS, 7, "tensor data out of bounds or overlapping")          \
    X(ERR_MODEL_SHAPE, 8, "tensor shape is wrong or overflows")                 \
    X(ERR_MODEL_DTYPE, 9, "tensor data type is unknown or not allowed")         \
    X(ERR_MODEL_MISSING, 10, "required tensor or metadata is missing")          \
    X(ERR_MODEL_HPARAMS, 11, "model hyper-parameters are invalid")              \
    X(ERR_MODEL_NONFINITE, 12, "model weights contain NaN or infinity")         \
    X(ERR_MODEL_VOCAB, 13, "tokenizer data is malformed")                       \
    X(ERR_UNSUPPORTED, 14, "not supported")                                     \
    X(ERR_BAD_UTF8, 15, "text is not valid UTF-8")                              \
    X(ERR_PROMPT_EMPTY, 16, "prompt is empty")                                  \
    X(ERR_PROMPT_TOO_LONG, 17, "prompt does not fit the context window")        \
    X(ERR_KV_FULL, 18, "KV cache arena is full")                                \
    X(ERR_CANCELLED, 19, "cancelled by the caller")                             \
    X(ERR_TIER_UNAVAILABLE, 20, "tier is not resident in this context")         \
    X(ERR_BACKEND, 21, "compute backend failure")                               \
    X(ERR_NO_DEVICE, 22, "no usable GPU")                                       \
    X(ERR_BUFFER_TOO_SMALL, 23, "output buffer is too small")                   \
    X(ERR_INTERNAL, 24, "internal error")

#endif
