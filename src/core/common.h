/* common.h — errors, checked allocation, small utilities shared by every module.
 *
 * Two kinds of failure, handled differently (see STYLE.md):
 *  - A user's input is bad (config, checkpoint, dataset, flag): the innermost call
 *    fills a BraidError and returns -1; each caller may prefix context ("reading
 *    config x.yaml: ..."); the executable prints it and exits non-zero. Tests can
 *    then check the message, and nothing is left half-written.
 *  - An internal invariant breaks or the system fails (out of memory, CUDA error):
 *    BRAID_CHECK / braid_die abort on the spot with file and line, as llm.c does. */
#ifndef BRAID_COMMON_H
#define BRAID_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct BraidError {
    char message[4096];
} BraidError;

/* Sets e->message (printf-style) and returns -1 so callers can `return error_set(...)`. */
int error_set(BraidError *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context: "<context>: <previous message>". Returns -1. */
int error_prefix(BraidError *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void braid_die(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define BRAID_DIE(...) braid_die(__FILE__, __LINE__, __VA_ARGS__)
#define BRAID_CHECK(cond, ...) do { if (!(cond)) braid_die(__FILE__, __LINE__, __VA_ARGS__); } while (0)

void *braid_malloc(size_t bytes, const char *what);   /* dies naming `what` on failure */
void *braid_calloc(size_t count, size_t size, const char *what);
void  braid_free(void *p);

double time_seconds(void);  /* monotonic wall clock */

/* s as a JSON string literal: quotes, backslashes and control characters escaped (paths
 * and names in the executables' JSON output can hold any of them). */
void json_write_string(FILE *f, const char *s);

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }
static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

#endif
