/*
 * router.c -- prompt features and the complexity score (see router.h).
 *
 * One linear pass over the bytes, no allocation: the cost is a few ns per
 * byte, so routing adds microseconds to a request.
 */
#include "router.h"

#include <math.h>

void ampr__router_defaults(ampr__router_config *rc) {
    /* Hand-set defaults: code and math need precision most; a calibration
     * file (ampr calibrate) replaces them with fitted values. */
    static const float w[AMPR__F_COUNT] = {1.2f, 3.0f, 2.5f, 1.5f, 0.8f, 1.0f};
    memcpy(rc->weights, w, sizeof w);
    rc->bias = -2.0f;
    rc->thresholds[0] = 0.35f;
    rc->thresholds[1] = 0.6f;
    rc->system_weight = 0.25f;
}

static int is_alpha(unsigned c) { return (c | 32) - 'a' < 26; }
static int is_digit(unsigned c) { return c - '0' < 10; }

void ampr__router_features(const char *text, size_t n, float *f) {
    const unsigned char *s = (const unsigned char *)text;
    size_t words = 0, long_words = 0, code = 0, math = 0, digits = 0, nonascii = 0;
    size_t wlen = 0, line_start = 1, indent_lines = 0, lines = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned c = s[i];
        if (is_alpha(c)) {
            wlen++;
        } else {
            if (wlen) {
                words++;
                if (wlen >= 8) long_words++;
            }
            wlen = 0;
        }
        if (c >= 0x80) nonascii++;
        else if (is_digit(c)) digits++;
        switch (c) {
        case '{': case '}': case ';': case '#': case '[': case ']': case '_': case '`':
        case '(': case ')':
            code++;
            break;
        case '+': case '-': case '*': case '/': case '=': case '^': case '<': case '>':
        case '%':
            math++;
            break;
        case '\n':
            lines++;
            line_start = 1;
            continue;
        default:
            break;
        }
        if (line_start && (c == ' ' || c == '\t') && i + 1 < n && (s[i + 1] == ' ' || s[i + 1] == '\t'))
            indent_lines++;
        line_start = 0;
    }
    if (wlen) {
        words++;
        if (wlen >= 8) long_words++;
    }
    double len = n ? (double)n : 1.0;
    f[AMPR__F_LEXICAL] = words ? (float)((double)long_words / (double)words) : 0.0f;
    f[AMPR__F_CODE] = (float)fmin(1.0, (double)code / len * 8.0 + (double)indent_lines / (double)lines);
    f[AMPR__F_MATH] = (float)fmin(1.0, (double)math / len * 10.0);
    f[AMPR__F_DIGITS] = (float)fmin(1.0, (double)digits / len * 5.0);
    f[AMPR__F_LENGTH] = (float)fmin(1.0, log1p((double)n) / log1p(8192.0));
    f[AMPR__F_NONASCII] = (float)((double)nonascii / len);
}

float ampr__router_score(const ampr__router_config *rc, const float *f) {
    float z = rc->bias;
    for (int i = 0; i < AMPR__F_COUNT; i++) z += rc->weights[i] * f[i];
    return 1.0f / (1.0f + expf(-z));
}
