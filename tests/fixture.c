/* fixture.c — see fixture.h for the format. */
#include "fixture.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_u32(FILE *f, uint32_t *v) { return fread(v, 4, 1, f) == 1 ? 0 : -1; }

int fixture_load(Fixture *fx, const char *path) {
    memset(fx, 0, sizeof *fx);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fixture %s: cannot open (run tools/reference/make_fixtures.sh)\n", path); return -1; }
    char magic[4];
    uint32_t version, count;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "BRFX", 4) != 0 || read_u32(f, &version) ||
        version != 1 || read_u32(f, &count)) {
        fprintf(stderr, "fixture %s: not a BRFX v1 file\n", path);
        fclose(f);
        return -1;
    }
    fx->tensors = calloc(count, sizeof(FixtureTensor));
    fx->count = (int)count;
    for (uint32_t t = 0; t < count; t++) {
        FixtureTensor *ft = &fx->tensors[t];
        uint32_t len, ndim;
        if (read_u32(f, &len) || len >= sizeof ft->name || fread(ft->name, 1, len, f) != len ||
            read_u32(f, &ndim) || ndim > 8) goto bad;
        ft->name[len] = 0;
        ft->ndim = (int)ndim;
        ft->n = 1;
        for (uint32_t d = 0; d < ndim; d++) {
            uint32_t s;
            if (read_u32(f, &s)) goto bad;
            ft->shape[d] = (int)s;
            ft->n *= s;
        }
        ft->data = malloc(ft->n * sizeof(float) + 1);
        if (fread(ft->data, sizeof(float), ft->n, f) != ft->n) goto bad;
    }
    fclose(f);
    return 0;
bad:
    fprintf(stderr, "fixture %s: truncated or malformed\n", path);
    fclose(f);
    fixture_free(fx);
    return -1;
}

const FixtureTensor *fixture_get(const Fixture *fx, const char *name) {
    for (int i = 0; i < fx->count; i++)
        if (strcmp(fx->tensors[i].name, name) == 0) return &fx->tensors[i];
    fprintf(stderr, "fixture: no tensor named '%s'\n", name);
    return NULL;
}

void fixture_free(Fixture *fx) {
    for (int i = 0; i < fx->count; i++) free(fx->tensors[i].data);
    free(fx->tensors);
    fx->tensors = NULL;
    fx->count = 0;
}
