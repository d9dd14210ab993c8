/* common.c — error reporting and checked allocation (see common.h for the policy). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int error_set(BraidError *e, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

int error_prefix(BraidError *e, const char *fmt, ...) {
    if (!e) return -1;
    char context[1024], previous[sizeof e->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    memcpy(previous, e->message, sizeof previous);
    /* Truncation of very long chains is acceptable: the innermost message comes last. */
    size_t used = (size_t)snprintf(e->message, sizeof e->message, "%s: ", context);
    if (used < sizeof e->message)
        memcpy(e->message + used, previous, strnlen(previous, sizeof e->message - used - 1));
    e->message[sizeof e->message - 1] = 0;
    if (used < sizeof e->message) e->message[used + strnlen(previous, sizeof e->message - used - 1)] = 0;
    return -1;
}

void braid_die(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "braid: fatal error at %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

void *braid_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) braid_die(__FILE__, __LINE__, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *braid_calloc(size_t count, size_t size, const char *what) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) braid_die(__FILE__, __LINE__, "out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

void braid_free(void *p) { free(p); }

double time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void json_write_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}
