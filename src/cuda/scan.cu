/* scan.cu — Mamba-1's chunked selective scan on the GPU (CPU reference:
 * selective_scan_forward/backward in layers/mamba_cpu.c; shapes in mamba_cpu.h):
 *   h_t = exp(δ_t A_c) ⊙ h_{t−1} + (δ_t u_t) B_t      h: an N-vector per (b, channel c)
 *   y_t = h_t · C_t + D_c u_t
 * Forward writes y and the state entering every chunk; backward walks the chunks last to
 * first, recomputes a chunk's states from its saved start state and runs the reverse
 * recurrence dh_t = dy_t C_t + exp(δ_{t+1} A) ⊙ dh_{t+1}.
 *
 * Work split (both kernels): a thread holds SCAN_NPT = 4 states n = 4q … 4q+3 of one
 * (b, c) in registers; the G = NP/4 threads of a channel (NP: N rounded up to a power of
 * two ≥ 4; states n ≥ N carry A = B = C = 0 and stay exactly zero) are adjacent lanes, and
 * a block of 128 threads holds 512/NP adjacent channels of one batch row. Why four and not
 * one state per thread: the per-step sums over n (y; du, dδ) then cost log2 G shuffles per
 * four states instead of log2 NP per state, B_t, C_t and the state come as one float4 each
 * from shared memory, and the four independent exp/FMA chains give the ILP that hides the
 * SFU and shared-memory latency. Why not all N in one thread: B·channels threads would be
 * too few to fill the GPU (8·1536 = 12k threads: under 3 warps per SM).
 * The time loop is sequential. Its inputs are staged per tile of time steps into shared
 * memory with coalesced loads (u, δ, dy: the block's channels are contiguous; B, C: one row
 * of N), so the recurrence itself waits only on shared memory and the exp; the forward
 * double-buffers the tiles with cp.async (the next tile lands while this one computes);
 * outputs go through shared memory too and are written back coalesced. The forward's sum
 * over n for y_t is not finished per step: a channel's G threads keep their partials of G
 * steps (D·u folded into the first thread's) and one butterfly reduce-scatter over the G
 * steps leaves each thread one step's whole y, stored with a single store for the G steps
 * (put_y_scatter; docs/performance.md, "The forward's y sums after the tile" and "Whole
 * tiles staged by precomputed addresses"). Copies are 16-byte pieces where channels and N
 * are multiples of 4 and the tensors aligned (VEC), else 4-byte; whole tiles inside the
 * tensors (every tile at jamba-small's shape) are addressed from offsets set once a kernel
 * (WholeRows), not per copy.
 * Results a step puts in shared memory (y partials, recomputed states, the reverse pass's
 * sums) are stored only after a batch of steps (SCAN_FWD_BATCH, ScanBwdBatch): the input tiles
 * share the array, so the compiler keeps every later load behind such a store, and a store
 * per step put a load's latency on every step (docs/performance.md, "The scan's loads
 * held behind its stores").
 * Why this layout and not 8 or 16 states a thread, or 1 or 2: all four measured slower at
 * jamba-small's shape (docs/performance.md, "The selective scan: where its time goes").
 * Where B·channels gives too few blocks for the SMs, T is also split into time segments
 * run in parallel (see "Segments" at the launchers).
 *
 * Backward: a chunk is processed in sub-tiles of SCAN_BWD_TILE = 16 steps, last first. The
 * sub-tile's states are recomputed into shared memory (a float4 column per thread, no
 * sharing; only the states entering even steps, SCAN_BWD_HALF_ROWS: the reverse pass takes
 * its steps in pairs and makes the odd step's from the even one with the decay and input it
 * computes for the even step anyway, a quarter of the shared-memory traffic the states
 * took), then walked in reverse. The carried gradient exp(δA)·dh stays in registers
 * across sub-tiles and chunks. A sub-tile that does not start at its chunk's start first
 * walks the recurrence over the chunk's earlier sub-tiles (staged the same way), from the
 * chunk's saved start or from a checkpoint kept in registers: with chunk = 64 a chunk
 * recomputes 4 sub-tiles' worth more than the 4 it differentiates. Why 16 steps and not
 * more: shared memory is what bounds the blocks per SM (44 KiB a block at N = 16, 54 KiB
 * before the half rows); at 16 four blocks (16 warps) fit and B=8, di=2048 runs in one wave,
 * and that occupancy is worth more than the longer walks (at 32 steps: 2 blocks, 1.4× slower).
 * The next sub-tile's inputs, and the saved state it starts from, are loaded into registers
 * while this one computes (N ≥ 16, where they fit in the 128 registers that four blocks
 * leave a thread).
 * du and dδ go out at the end of each sub-tile, added into the caller's (the op contract)
 * or written over them (selective_scan_backward_write_cuda, the Mamba layer's call: one
 * block owns each element, so nothing needs zeroing first or reading back); there dδ can
 * also leave already through δ = softplus(a) (da = dδ·(1 − e^{−δ}), from the δ tile the
 * sub-tile staged), which saves the layer a pass that reads dδ and δ and writes da.
 * dB_t, dC_t are sums over all channels: each step a warp adds its channels' 8 values per
 * thread (dB and dC for 4 n) with a butterfly reduce-scatter (7 shuffles where plain xor
 * sums would take 24; at N = 16 its first two levels without selects, SCAN_BWD_SORTED: each
 * lane holds its 4 states in a lane-dependent order, read from one of 4 swizzled copies of
 * the B and C tiles), the block adds its warps in order after the sub-tile, and each
 * block writes its partial sum to scratch; dA, dD are sums over the batch: each block
 * writes its b's partial. A second kernel adds the partials in a fixed order into dB, dC,
 * dA, dD: no atomics, the same bits each run.
 *
 * exp: ex2.approx.ftz(δ · A·log2 e), the hardware ex2 (a couple of ulp; results below
 * 2^−126 flushed to 0), well inside the 1e-4 the tests hold it to. */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "mamba_cuda.h"
#include "ptx.cuh"
#include "grid.cuh"

#define SCAN_THREADS 128
#define SCAN_WARPS (SCAN_THREADS / 32)
#define SCAN_NPT 4         /* states per thread: one float4 of n */
/* The sizes below guarded by #ifndef can be set with -D to time variants; the defaults were
 * the fastest measured (docs/performance.md). A 64-step forward tile was 6% faster at
 * jamba-small's shape, but its 64 KiB of shared memory fit 3 blocks an SM, not 7, which
 * would put larger models (B·di/32 > 396 blocks) into a second wave. */
#ifndef SCAN_FWD_TILE
#define SCAN_FWD_TILE 32   /* time steps staged per forward tile */
#endif
#define SCAN_FWD_GROUP 16  /* steps between the forward's chunk-save checks (divides the tile) */
#ifndef SCAN_FWD_BATCH
#define SCAN_FWD_BATCH 16  /* steps computed before their y partials are stored (divides the group;
                            * 16: 5% faster than 8 once the staging was cheap, twenty-first session) */
#endif
#ifndef SCAN_BWD_BATCH
#define SCAN_BWD_BATCH 8   /* the backward's: steps recomputed, or reversed, before their stores
                            * (8: 3% faster than 4 at jamba-small's shape; NP = 32 keeps 4, at 8
                            * it spills: ScanBwdBatch) */
#endif
#ifndef SCAN_BWD_REV_BATCH
#define SCAN_BWD_REV_BATCH SCAN_BWD_BATCH
#endif
#define SCAN_BWD_TILE 16   /* time steps per backward sub-tile (its states live in smem) */
/* the backward's batches at NP states: at most 4 for NP > 16 (the 128 registers) */
template <int NP>
struct ScanBwdBatch {
    static constexpr int recompute = NP > 16 && SCAN_BWD_BATCH > 4 ? 4 : SCAN_BWD_BATCH;
    static constexpr int reverse = NP > 16 && SCAN_BWD_REV_BATCH > 4 ? 4 : SCAN_BWD_REV_BATCH;
};
#ifndef SCAN_BWD_HALF_ROWS
#define SCAN_BWD_HALF_ROWS 1   /* the backward keeps the states of even steps only (ScanBackwardSmem) */
#endif
#ifndef SCAN_BWD_SORTED
#define SCAN_BWD_SORTED 1      /* the backward's lanes hold their states in lane order (ScanBackwardSmem) */
#endif
#ifndef SCAN_BWD_MIN_BLOCKS
#define SCAN_BWD_MIN_BLOCKS 4   /* blocks per SM the backward is built for (registers ≤ 128;
                                 * 3 (156 registers): 2% faster at jamba-small's 384 blocks,
                                 * 32% slower at di 2048's 512, which then need a second wave) */
#endif
#define LOG2E 1.4426950408889634f
#define SCAN_FWD_Y_ROUNDS 1   /* shuffle rounds over a channel's partial y before it is stored */
#ifndef SCAN_FWD_Y_SCATTER
#define SCAN_FWD_Y_SCATTER 1  /* y summed over a batch's G steps at once, one whole y a lane (below) */
#endif
/* the backward's flags: du and dδ WRITTEN (one block owns each element), not added into;
 * and dδ taken through δ = softplus(a), written as da = dδ·σ(a) = dδ·(1 − e^{−δ}) */
#define SCAN_BWD_WRITE 1
#define SCAN_BWD_DELTA_SOFTPLUS 2

/* The partial sums of a channel's y_t the forward keeps in shared memory per step: its G
 * threads' sums over their 4 states, added pairwise SCAN_FWD_Y_ROUNDS times by shuffles
 * first; the tile's write-out adds the P that remain. */
template <int NP>
struct ScanYParts {
    static constexpr int G = NP / SCAN_NPT;
    static constexpr int P = SCAN_FWD_Y_SCATTER ? 1 : (G >> SCAN_FWD_Y_ROUNDS) > 0 ? (G >> SCAN_FWD_Y_ROUNDS) : 1;
};

static int padded_state(int N) {
    int np = 4;
    while (np < N) np *= 2;
    return np;
}

/* channels per block: SCAN_THREADS threads of SCAN_NPT states each */
static int channel_blocks(int channels, int N) {
    const int per_block = SCAN_THREADS * SCAN_NPT / padded_state(N);
    return (channels + per_block - 1) / per_block;
}

/* Stage rows [t0, t0+len) of a (Bsz,T,cols) tensor's columns [col0, col0+W) into
 * tile[L][W] (cp.async; zero where s ≥ len or the column ≥ cols).
 * VEC: in 16-byte pieces, for cols and col0 multiples of 4 and a 16-byte aligned tensor
 * (selective_scan_*_cuda check): a quarter of the copies, and the index arithmetic per
 * copy (a division, a 64-bit address) was most of the staging's instructions. */
template <int L, int W, bool VEC>
__device__ __forceinline__ void stage_rows(float *tile, const float *src, int b, int T, int t0, int len,
                                           int cols, int col0, int tid) {
    if constexpr (VEC) {
        constexpr int W4 = W / 4;
#pragma unroll
        for (int i = tid; i < L * W4; i += SCAN_THREADS) {
            const int s = i / W4, j = 4 * (i % W4);
            float *dst = tile + s * W + j;
            if (s < len && col0 + j < cols) cp_async16(dst, src + ((size_t)b * T + t0 + s) * cols + col0 + j);
            else *(float4 *)dst = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    } else {
        for (int i = tid; i < L * W; i += SCAN_THREADS) {
            const int s = i / W, j = i % W;
            if (s < len && col0 + j < cols) cp_async4(tile + i, src + ((size_t)b * T + t0 + s) * cols + col0 + j);
            else tile[i] = 0.0f;
        }
    }
}

/* stage_rows for a whole tile (len = L) that lies inside the tensor (col0 + W ≤ cols), in
 * 16-byte pieces (VEC). Piece i = tid + r·SCAN_THREADS sits at row i / (W/4), column
 * 4·(i % (W/4)), and W/4 divides SCAN_THREADS: a thread's column is the same in every round
 * and its rows RS = SCAN_THREADS/(W/4) apart. So its source is an offset set once a kernel
 * (shared by the tensors of one width) plus (t0 + r·RS)·cols, and its tile offset is 4i:
 * a few instructions a copy where stage_rows' division, bounds checks and 64-bit index
 * products took ~45 (in the forward ~280 instructions a thread a 32-step tile, 9 of its 46
 * a step at jamba-small's shape, per Nsight Compute). */
template <int L, int W>
struct WholeRows {
    static constexpr int W4 = W / 4, PIECES = L * W4, RS = SCAN_THREADS / W4;
    static constexpr int ROUNDS = (PIECES + SCAN_THREADS - 1) / SCAN_THREADS;
    static_assert(SCAN_THREADS % W4 == 0, "a thread's column must stay the same between rounds");
    size_t off;   /* the thread's round-0 piece of the tile at t0 = 0, in elements */
    size_t cols;
    __device__ __forceinline__ WholeRows(int b, int T, int cols_, int col0, int tid)
        : off(((size_t)b * T + tid / W4) * cols_ + col0 + 4 * (tid % W4)), cols((size_t)cols_) {}
    __device__ __forceinline__ static bool has(int r, int tid) {
        return PIECES % SCAN_THREADS == 0 || tid + r * SCAN_THREADS < PIECES;
    }
    __device__ __forceinline__ size_t index(int t0, int r) const { return off + ((size_t)t0 + (size_t)r * RS) * cols; }
    __device__ __forceinline__ const float *at(const float *src, int t0, int r) const { return src + index(t0, r); }
    __device__ __forceinline__ void copy(float *tile, const float *src, int t0, int tid) const {
#pragma unroll
        for (int r = 0; r < ROUNDS; r++)
            if (has(r, tid)) cp_async16(tile + 4 * (tid + r * SCAN_THREADS), at(src, t0, r));
    }
};

/* The same rows as stage_rows, through registers: load() issues the global loads (they
 * are in flight while the thread computes), store() writes them into the tile. ON = false
 * (a tile too large for registers) makes both no-ops: the caller stages with cp.async.
 * VEC as in stage_rows: float4 loads and stores. */
template <int L, int W, bool ON, bool VEC>
struct RowRegs {
    static constexpr int P = VEC ? 4 : 1;   /* floats per piece */
    static constexpr int WP = W / P, n = ON ? (L * WP + SCAN_THREADS - 1) / SCAN_THREADS : 0;
    float4 v[n > 0 ? n : 1];   /* VEC: whole float4s; else .x only */
    __device__ __forceinline__ void load(const float *src, int b, int T, int t0, int len, int cols,
                                         int col0, int tid) {
#pragma unroll
        for (int r = 0; r < n; r++) {
            const int i = tid + r * SCAN_THREADS, s = i / WP, j = P * (i % WP);
            const bool in = i < L * WP && s < len && col0 + j < cols;
            const float *at = src + ((size_t)b * T + t0 + s) * cols + col0 + j;
            if constexpr (VEC) v[r] = in ? *(const float4 *)at : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            else v[r].x = in ? *at : 0.0f;
        }
    }
    /* load() of a whole tile inside the tensor (VEC), addressed as WholeRows */
    __device__ __forceinline__ void load_whole(const float *src, const WholeRows<L, W> &rows, int t0, int tid) {
#pragma unroll
        for (int r = 0; r < n; r++)
            if (WholeRows<L, W>::has(r, tid)) v[r] = *(const float4 *)rows.at(src, t0, r);
    }
    __device__ __forceinline__ void store(float *tile, int tid) const {
#pragma unroll
        for (int r = 0; r < n; r++) {
            const int i = tid + r * SCAN_THREADS;
            if (i < L * WP) {
                if constexpr (VEC) *(float4 *)(tile + P * i) = v[r];
                else tile[i] = v[r].x;
            }
        }
    }
    /* store() into 4 copies of the tile (copy m at tile + m·stride, W a multiple of 4), copy
     * m with column j at j ^ m: each quad of columns swizzled (the backward's lane orders) */
    __device__ __forceinline__ void store_swizzled(float *tile, int stride, int tid) const {
        static_assert(W % 4 == 0, "quads of columns");
#pragma unroll
        for (int r = 0; r < n; r++) {
            const int i = tid + r * SCAN_THREADS;
            if (i < L * WP) {
                if constexpr (VEC) {
                    const float4 a = v[r];
                    float *at = tile + P * i;
                    *(float4 *)(at) = a;
                    *(float4 *)(at + stride) = make_float4(a.y, a.x, a.w, a.z);
                    *(float4 *)(at + 2 * stride) = make_float4(a.z, a.w, a.x, a.y);
                    *(float4 *)(at + 3 * stride) = make_float4(a.w, a.z, a.y, a.x);
                } else {
#pragma unroll
                    for (int m = 0; m < 4; m++) tile[m * stride + (i ^ m)] = v[r].x;
                }
            }
        }
    }
};

/* σ(a) from δ = softplus(a): 1 − e^{−δ}, what the backward multiplies dδ by to leave as da.
 * Below 1/4 a series to δ⁶ (1 − ex2 would cancel its leading digits: at δ = 0.001 a 2-ulp
 * ex2 error is 1e-4 of the result), above it 1 − ex2(−δ log2 e); both within ~7e-7
 * relative. expm1f's range reduction took ~45 instructions a value, 8% of the backward's
 * at chunk 16; this takes ~11. */
__device__ __forceinline__ float sigmoid_of_softplus(float d) {
    const float series =
        d * fmaf(d, fmaf(d, fmaf(d, fmaf(d, fmaf(d, -1.0f / 720, 1.0f / 120), -1.0f / 24), 1.0f / 6), -0.5f), 1.0f);
    return fabsf(d) < 0.25f ? series : 1.0f - ex2(-d * LOG2E);
}

/* A butterfly reduce-scatter of a lane's V values over the lanes lane ^ o, o = FIRST,
 * 2·FIRST, … < END: at each level a lane keeps half of the values it still holds (the upper
 * half where its bit o is set), sends its partner the other half and adds what comes back,
 * so the values in flight halve each level (V − 1 shuffles in all, where plain xor sums
 * would take V a level); once one is left, plain xor sums. v[0] … then hold the lane's sums
 * of the values butterfly_slot names. The forward's y over a channel's lanes and the
 * backward's dB/dC over a warp's channels. lane: the lane, or any index whose bits
 * FIRST … END/2 are the lane's (the forward passes q: ptxas then knows it is below G and
 * the kernel keeps 80 registers, not 89).
 * SORTED: the first SORTED levels take no selects because the caller has put each lane's
 * values in lane order: its register j holds value j ^ slot (slot: butterfly_slot's, in the
 * bits those levels split), so the half a lane keeps is always v[0 … m−1] and its partner's
 * v[m …] hold the same values (the backward's dB/dC; see ScanBackwardSmem's B copies). */
template <int V, int FIRST, int END, int SORTED = 0>
__device__ __forceinline__ void butterfly_reduce_scatter(float (&v)[V], int lane) {
    int m = V, level = 0;
#pragma unroll
    for (int o = FIRST; o < END; o *= 2, level++) {
        const bool bit = (lane & o) != 0;
        if (m > 1) {
            m /= 2;
#pragma unroll
            for (int i = 0; i < V / 2; i++)
                if (i < m) {
                    if (level < SORTED) {   /* the lane's keep half is already v[0 … m−1] */
                        v[i] += __shfl_xor_sync(0xffffffffu, v[i + m], o);
                    } else {
                        const float keep = bit ? v[i + m] : v[i], send = bit ? v[i] : v[i + m];
                        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
                    }
                }
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
        }
    }
}

/* Which values a lane's sums are after butterfly_reduce_scatter<V, FIRST, END>: the index
 * of the first of them, and in *sole (unless null) whether this lane is the one of the
 * lanes holding the same sums (past the last halving, plain xor sums leave copies) that
 * should use them. */
template <int V, int FIRST, int END>
__device__ __forceinline__ int butterfly_slot(int lane, bool *sole) {
    int m = V, slot = 0;
    if (sole) *sole = true;
#pragma unroll
    for (int o = FIRST; o < END; o *= 2) {
        const bool bit = (lane & o) != 0;
        if (m > 1) {
            m /= 2;
            slot += bit ? m : 0;
        } else if (bit && sole) {
            *sole = false;
        }
    }
    return slot;
}

/* *dst += a for 4 floats (dst global, 16-byte aligned) */
__device__ __forceinline__ void add4(float *dst, const float4 a) {
    float4 d = *(float4 *)dst;
    d.x += a.x;
    d.y += a.y;
    d.z += a.z;
    d.w += a.w;
    *(float4 *)dst = d;
}

/* ---------------------------------------------------------------- forward */

/* Dynamic shared memory of the forward kernel, in floats (every array a multiple of 4). */
template <int NP>
struct ScanForwardSmem {
    static constexpr int CB = SCAN_THREADS * SCAN_NPT / NP;   /* channels per block */
    static constexpr int L = SCAN_FWD_TILE;
    static constexpr int u = 0;                  /* [2][L][CB]: double-buffered input tiles */
    static constexpr int dt = u + 2 * L * CB;
    static constexpr int B = dt + 2 * L * CB;    /* [2][L][NP] */
    static constexpr int C = B + 2 * L * NP;
    static constexpr int y = C + 2 * L * NP;     /* [L][CB][P]: a channel's P partial sums */
    static constexpr int total = y + L * CB * ScanYParts<NP>::P;
};

/* grid (channel blocks, Bsz); thread (channel cl = tid / G, state group q = tid % G),
 * holding states n = 4q … 4q+3 of channel c0 + cl in registers. */
/* ENDS = false: the scan proper over segment blockIdx.z, [ts, ts + seg_len) ∩ [0, T), from
 * the state chunk_states holds for the segment's first chunk (segment 0: zero), writing y
 * and every chunk start state.
 * ENDS = true (segments 0 … S−2 only): the same recurrence from a zero state, without C or
 * y; writes the segment's end state into the next segment's first chunk_states slot and
 * its Σδ into y at the next segment's first step (y[b][te][c], before the scan proper
 * overwrites it), for scan_segment_starts_kernel. */
template <int NP, bool VEC, bool ENDS>
__global__ void __launch_bounds__(SCAN_THREADS)
selective_scan_forward_kernel(float *y, float *chunk_states, const float *u, const float *delta,
                              const float *A, const float *B, const float *C, const float *D,
                              int T, int channels, int N, int chunk, int seg_len) {
    using S = ScanForwardSmem<NP>;
    constexpr int G = NP / SCAN_NPT, CB = S::CB, L = S::L;
    constexpr int YP = ScanYParts<NP>::P, PER = G / YP;   /* y partials a channel, threads a partial */
    extern __shared__ __align__(16) float scan_smem[];
    float *y_tile = scan_smem + S::y;
    const int tid = threadIdx.x, cl = tid / G, q = tid % G, n0 = q * SCAN_NPT;
    const int c0 = blockIdx.x * CB, c = c0 + cl, b = blockIdx.y;
    const bool active = c < channels;
    const int ts = blockIdx.z * seg_len, te = min(T, ts + seg_len);
    const int n_chunks = (T + chunk - 1) / chunk, n_tiles = (te - ts + L - 1) / L;
    float A2[SCAN_NPT], h[SCAN_NPT];
    const float *start = chunk_states + (((size_t)b * n_chunks + ts / chunk) * channels + c) * N + n0;
#pragma unroll
    for (int i = 0; i < SCAN_NPT; i++) {
        const bool live = active && n0 + i < N;
        A2[i] = live ? A[(size_t)c * N + n0 + i] * LOG2E : 0.0f;
        h[i] = !ENDS && ts > 0 && live ? start[i] : 0.0f;
    }
    const float Dc = (active && D) ? D[c] : 0.0f;
    const float Dq = q == 0 ? Dc : 0.0f;   /* D·u joins the partial of the channel's first thread */
    static_assert(SCAN_FWD_BATCH % G == 0, "put_y_scatter takes G steps at a time");
    /* the step of a batch's G whose y the lane ends with (G values over G lanes: one each) */
    const int y_slot = butterfly_slot<G, 1, G>(q, nullptr);
    /* chunk starts fall on the starts of SCAN_FWD_GROUP-step groups (chunk a multiple of
     * the group; segments and tiles start on chunk and group starts): the save is checked
     * once a group in a full tile, not per step, which kept the step's unrolled code free
     * of the save's address arithmetic (at chunk 16 the per-step check nearly doubled the
     * time loop's instructions) */
    const bool save_at_groups = chunk % SCAN_FWD_GROUP == 0;
    float dt_sum = 0.0f;                              /* ENDS: Σδ over the segment */
    int next_save = ts, save_chunk = ts / chunk;   /* the next chunk start (no t % chunk per step) */
    auto save_state = [&]() {   /* h is the state entering chunk save_chunk */
        float *at = chunk_states + (((size_t)b * n_chunks + save_chunk) * channels + c) * N + n0;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i++)
            if (active && n0 + i < N) at[i] = h[i];
        next_save += chunk;
        save_chunk++;
    };

    /* tile i+1 is copied (cp.async) while tile i is computed; whole tiles of a block whose
     * channels and states all exist (jamba-small's every tile) by the cheap copier */
    const bool whole_cols = VEC && c0 + CB <= channels && N == NP;
    const WholeRows<L, CB> rows_c(b, T, channels, c0, tid);   /* u, δ */
    const WholeRows<L, NP> rows_n(b, T, N, 0, tid);           /* B, C */
    auto stage = [&](int tile, int p) {
        const int t0 = ts + tile * L, len = min(L, te - t0);
        if (whole_cols && len == L) {
            rows_c.copy(scan_smem + S::u + p * L * CB, u, t0, tid);
            rows_c.copy(scan_smem + S::dt + p * L * CB, delta, t0, tid);
            rows_n.copy(scan_smem + S::B + p * L * NP, B, t0, tid);
            if (!ENDS) rows_n.copy(scan_smem + S::C + p * L * NP, C, t0, tid);
            return;
        }
        stage_rows<L, CB, VEC>(scan_smem + S::u + p * L * CB, u, b, T, t0, len, channels, c0, tid);
        stage_rows<L, CB, VEC>(scan_smem + S::dt + p * L * CB, delta, b, T, t0, len, channels, c0, tid);
        stage_rows<L, NP, VEC>(scan_smem + S::B + p * L * NP, B, b, T, t0, len, N, 0, tid);
        if (!ENDS) stage_rows<L, NP, VEC>(scan_smem + S::C + p * L * NP, C, b, T, t0, len, N, 0, tid);
    };
    stage(0, 0);
    cp_async_commit();
    for (int tile = 0; tile < n_tiles; tile++) {
        const int p = tile & 1, t0 = ts + tile * L, len = min(L, te - t0);
        /* buffer p^1 was last read by tile−1, which every thread has finished (the
         * barrier after its compute) */
        if (tile + 1 < n_tiles) stage(tile + 1, p ^ 1);
        cp_async_commit();   /* (an empty group on the last tile keeps the count uniform) */
        cp_async_wait<1>();  /* this thread's copies of tile `tile` have landed ... */
        __syncthreads();     /* ... and everyone's; y_tile of tile−1 has been written out */
        const float *u_t = scan_smem + S::u + p * L * CB, *dt_t = scan_smem + S::dt + p * L * CB;
        const float *B_t = scan_smem + S::B + p * L * NP, *C_t = scan_smem + S::C + p * L * NP;
        /* one step of the recurrence; returns this thread's partial of y_t (for put_y) */
        auto step = [&](int s) -> float {
            if (ENDS) {   /* the recurrence alone */
                const float dt = dt_t[s * CB + cl], dtu = dt * u_t[s * CB + cl];
                const float4 Bv = *(const float4 *)(B_t + s * NP + n0);
                const float Bn[SCAN_NPT] = {Bv.x, Bv.y, Bv.z, Bv.w};
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) h[i] = ex2(dt * A2[i]) * h[i] + dtu * Bn[i];
                dt_sum += dt;
                return 0.0f;
            }
            const float dt = dt_t[s * CB + cl], uu = u_t[s * CB + cl], dtu = dt * uu;
            const float4 Bv = *(const float4 *)(B_t + s * NP + n0);
            const float4 Cv = *(const float4 *)(C_t + s * NP + n0);
            const float Bn[SCAN_NPT] = {Bv.x, Bv.y, Bv.z, Bv.w}, Cn[SCAN_NPT] = {Cv.x, Cv.y, Cv.z, Cv.w};
            float p_y = 0.0f;
#pragma unroll
            for (int i = 0; i < SCAN_NPT; i++) {
                h[i] = ex2(dt * A2[i]) * h[i] + dtu * Bn[i];
                p_y += h[i] * Cn[i];
            }
            if constexpr (!SCAN_FWD_Y_SCATTER) {
#pragma unroll
                for (int off = 1; off < PER; off *= 2) p_y += __shfl_xor_sync(0xffffffffu, p_y, off);
            }
            return fmaf(Dq, uu, p_y);
        };
        auto put_y = [&](int s, float v) {   /* one step's partial */
            if constexpr (ENDS) return;
            if constexpr (SCAN_FWD_Y_SCATTER) {
#pragma unroll
                for (int off = 1; off < G; off *= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
                if (q == 0) y_tile[s * CB + cl] = v;
            } else if (PER == 1 || q % PER == 0) {
                y_tile[(s * CB + cl) * YP + q / PER] = v;
            }
        };
        /* G steps' partials v[0 … G) of this lane: a butterfly reduce-scatter over the
         * channel's G lanes (at offset o a lane keeps half its values and sends the other
         * half) leaves each lane the whole y of one step, s0 + y_slot, and one store a lane
         * puts G steps' y in shared memory. Stored per step, after a shuffle round, the y
         * partials took a shared-memory wavefront a step for 16 values and the write-out read
         * two partials a y: with the forward bound by the shared-memory pipe (86% busy once
         * the staging was cheap), the stores had become a tenth of its wavefronts. */
        auto put_y_scatter = [&](int s0, float (&v)[G]) {
            butterfly_reduce_scatter<G, 1, G>(v, q);
            y_tile[(s0 + y_slot) * CB + cl] = v[0];
        };
        /* A full tile: a fixed trip count, so shared-memory offsets become immediates, and
         * SCAN_FWD_BATCH steps at a time store their y partials only after all of them are
         * computed: the compiler cannot tell the y_tile stores from the input tiles' loads
         * (one shared array), so a store between two steps kept the next step's loads from
         * being issued before it, putting their latency on every step's path. */
        if (len == L && (ENDS || save_at_groups)) {
#pragma unroll 1
            for (int g = 0; g < L; g += SCAN_FWD_GROUP) {
                if (!ENDS && t0 + g == next_save) save_state();
#pragma unroll
                for (int s0 = g; s0 < g + SCAN_FWD_GROUP; s0 += SCAN_FWD_BATCH) {
                    float yv[SCAN_FWD_BATCH / G][G];
#pragma unroll
                    for (int k = 0; k < SCAN_FWD_BATCH; k++) yv[k / G][k % G] = step(s0 + k);
                    if constexpr (SCAN_FWD_Y_SCATTER && !ENDS) {
#pragma unroll
                        for (int k = 0; k < SCAN_FWD_BATCH / G; k++) put_y_scatter(s0 + k * G, yv[k]);
                    } else {
#pragma unroll
                        for (int k = 0; k < SCAN_FWD_BATCH; k++) put_y(s0 + k, yv[k / G][k % G]);
                    }
                }
            }
        } else if (len == L) {
#pragma unroll 8
            for (int s = 0; s < L; s++) {
                if (t0 + s == next_save) save_state();
                put_y(s, step(s));
            }
        } else {
            for (int s = 0; s < len; s++) {
                if (!ENDS && t0 + s == next_save) save_state();
                put_y(s, step(s));
            }
        }
        __syncthreads();   /* y_tile complete; buffer p free for tile+2 */
        if (ENDS) continue;
        /* y = Σ of a channel's YP partials (adjacent in y_tile: [s][cl][YP]) */
        if constexpr (VEC) {
            /* channels j … j+3 of step s: 4·YP partials, as YP float4s */
            auto y_sum = [&](int s, int j) -> float4 {
                const float *part = y_tile + (s * CB + j) * YP;
                float out[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int k = 0; k < YP; k++) {
                    const float4 v = *(const float4 *)(part + 4 * k);
                    const float w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int e = 0; e < 4; e++) out[(4 * k + e) / YP] += w[e];
                }
                return make_float4(out[0], out[1], out[2], out[3]);
            };
            if (whole_cols && len == L) {   /* y's rows as u's (WholeRows) */
                using R = WholeRows<L, CB>;
#pragma unroll
                for (int r = 0; r < R::ROUNDS; r++)
                    if (R::has(r, tid))
                        *(float4 *)(y + rows_c.index(t0, r)) = y_sum(tid / R::W4 + r * R::RS, 4 * (tid % R::W4));
            } else {
                for (int i = tid; i < len * (CB / 4); i += SCAN_THREADS) {
                    const int s = i / (CB / 4), j = 4 * (i % (CB / 4));
                    if (c0 + j < channels)
                        *(float4 *)(y + ((size_t)b * T + t0 + s) * channels + c0 + j) = y_sum(s, j);
                }
            }
        } else {
            for (int i = tid; i < len * CB; i += SCAN_THREADS) {
                const int s = i / CB, j = i % CB;
                float sum = 0.0f;
#pragma unroll
                for (int k = 0; k < YP; k++) sum += y_tile[(s * CB + j) * YP + k];
                if (c0 + j < channels) y[((size_t)b * T + t0 + s) * channels + c0 + j] = sum;
            }
        }
    }
    if (ENDS && active) {   /* te < T: this is not the last segment */
        float *end = chunk_states + (((size_t)b * n_chunks + te / chunk) * channels + c) * N + n0;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i++)
            if (n0 + i < N) end[i] = h[i];
        if (q == 0) y[((size_t)b * T + te) * channels + c] = dt_sum;
    }
}

/* The state entering each segment p = 1 … S−1, in order: h(p) = exp(A·Σδ(p−1)) ⊙ h(p−1) +
 * e(p−1), h(0) = 0, where e and Σδ are what the ENDS pass left in chunk_states and y
 * (the product of a segment's decays is exp(A·Σδ)). Written where e(p−1) was: the state
 * the scan proper starts segment p from. One thread per (b, c, n). */
__global__ void scan_segment_starts_kernel(float *chunk_states, const float *y, const float *A, int Bsz,
                                           int T, int channels, int N, int chunk, int seg_len, int n_seg) {
    const size_t n = (size_t)Bsz * channels * N;
    const int n_chunks = (T + chunk - 1) / chunk;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int nn = (int)(i % N), c = (int)(i / N % channels), b = (int)(i / N / channels);
        const float a2 = A[(size_t)c * N + nn] * LOG2E;
        float h = 0.0f;
        for (int p = 1; p < n_seg; p++) {
            const int ts = p * seg_len;
            float *at = chunk_states + (((size_t)b * n_chunks + ts / chunk) * channels + c) * N + nn;
            h = ex2(a2 * y[((size_t)b * T + ts) * channels + c]) * h + *at;
            *at = h;
        }
    }
}

/* ---------------------------------------------------------------- backward */

/* Dynamic shared memory of the backward kernel, in floats (every array a multiple of 4). */
template <int NP>
struct ScanBackwardSmem {
    static constexpr int CB = SCAN_THREADS * SCAN_NPT / NP;
    static constexpr int L = SCAN_BWD_TILE;
    /* SCAN_BWD_HALF_ROWS: only the states entering even steps are kept (row r: s = 2r); the
     * reverse pass makes an odd step's from the even one before it (see there) */
    static constexpr bool HALF = SCAN_BWD_HALF_ROWS != 0;
    static constexpr int ROWS = HALF ? L / 2 + 1 : L + 1;
    /* SCAN_BWD_SORTED at NP = 16: B and C in 4 copies, copy m with each quad's states
     * swizzled n ↔ n ^ m, one per lane order (the lane's pm below). The copies are COPY
     * floats apart, 8 more than a tile: a quarter-warp's lanes read copies m and m ^ 2,
     * which then sit 16 banks apart (at L·NP apart they were in the same banks: a 2-way
     * conflict on every B and C load, the backward 10% slower). */
    static constexpr bool SORTED = SCAN_BWD_SORTED != 0 && NP == 16;
    static constexpr int COPIES = SORTED ? 4 : 1, COPY = SORTED ? L * NP + 8 : L * NP;
    static_assert(!SORTED || (2 * COPY) % 32 == 16, "copies m, m ^ 2 in opposite bank halves");
    static constexpr int states = 0;   /* [ROWS][threads] float4: h_{ts0−1+s}, row 0 the start */
    static constexpr int u = states + ROWS * SCAN_THREADS * SCAN_NPT;   /* [L][CB] */
    static constexpr int dt = u + L * CB;
    static constexpr int dy = dt + L * CB;
    static constexpr int du = dy + L * CB;   /* [L][CB] Σ_n, before the write-out */
    static constexpr int ddt = du + L * CB;
    static constexpr int B = ddt + L * CB;   /* [COPIES][L][NP], COPY floats apart */
    static constexpr int C = B + COPIES * COPY;
    static constexpr int dBC = C + COPIES * COPY;   /* [L][warps][2][NP]: a warp's Σ_c of dB, dC */
    static constexpr int total = dBC + L * SCAN_WARPS * 2 * NP;
    __device__ __forceinline__ static int row(int s) { return HALF ? s / 2 : s; }
};

/* grid (channel blocks, Bsz, segments); thread (cl = tid / G, q = tid % G) as in the
 * forward. Segment z covers the chunks of [z·seg_len, (z+1)·seg_len) ∩ [0, T); the gradient
 * carried in from its right is carry_in[z][b][c][n] (scan_segment_carries_kernel; zero for
 * the last segment). Partials written (not accumulated):
 *   dB_part, dC_part[blockIdx.x][b][t][n]   dA_part[z][b][c][n]   dD_part[z][b][c] */
template <int NP, bool VEC>
__global__ void __launch_bounds__(SCAN_THREADS, SCAN_BWD_MIN_BLOCKS)
selective_scan_backward_kernel(float *du, float *ddelta, float *dB_part, float *dC_part,
                               float *dA_part, float *dD_part, const float *dy, const float *u,
                               const float *delta, const float *A, const float *B, const float *C,
                               const float *D, const float *chunk_states, const float *carry_in,
                               int Bsz, int T, int channels, int N, int chunk, int seg_len, int flags) {
    using S = ScanBackwardSmem<NP>;
    constexpr int G = NP / SCAN_NPT, CB = S::CB, L = S::L, V = 2 * SCAN_NPT;
    extern __shared__ __align__(16) float scan_smem[];
    float4 *states = (float4 *)(scan_smem + S::states);
    const float *u_t = scan_smem + S::u, *dt_t = scan_smem + S::dt, *dy_t = scan_smem + S::dy;
    const float *B_t = scan_smem + S::B, *C_t = scan_smem + S::C;
    float *du_t = scan_smem + S::du, *ddt_t = scan_smem + S::ddt, *dBC = scan_smem + S::dBC;
    const bool overwrite = flags & SCAN_BWD_WRITE, softplus = flags & SCAN_BWD_DELTA_SOFTPLUS;

    const int tid = threadIdx.x, cl = tid / G, q = tid % G, n0 = q * SCAN_NPT;
    const int lane = tid % 32, warp = tid / 32;
    /* Where this lane's dB/dC sums land after the butterfly below (see there): the value
     * index base..base+V_OUT−1 of the lane's V values, and whether the lane writes them. */
    constexpr int CW = 32 / G;                      /* channels per warp */
    constexpr int V_OUT = V > CW ? V / CW : 1;      /* values a lane holds at the end */
    bool writer;
    const int base = butterfly_slot<V, G, 32>(lane, &writer);
    /* Lane order (S::SORTED): register i holds state n0 + (i ^ pm), pm the state of the lane's
     * butterfly slot (values in the order 2·state + kind: the first two levels of the dB/dC
     * butterfly split the state bits), and the lane reads B and C from copy pm, where they
     * sit in that order; so those levels need no selects (28 → 16 instructions a step).
     * Every per-state array of the thread follows the same order. */
    const int pm = S::SORTED ? base / 2 : 0;
    auto sn = [&](int i) { return S::SORTED ? i ^ pm : i; };   /* register i's state − n0 */
    B_t += pm * S::COPY;
    C_t += pm * S::COPY;
    const int c0 = blockIdx.x * CB, c = c0 + cl, b = blockIdx.y;
    const bool active = c < channels;
    const int n_chunks = (T + chunk - 1) / chunk, seg = blockIdx.z;
    const int k_first = seg * (seg_len / chunk), k_end = min(n_chunks, k_first + seg_len / chunk);
    const bool carried = k_end < n_chunks;   /* not the last segment */
    const float *carried_in = carry_in + (((size_t)seg * Bsz + b) * channels + c) * N + n0;
    float Ac[SCAN_NPT], A2[SCAN_NPT];
    float carry[SCAN_NPT], dA_acc[SCAN_NPT];   /* carry: exp(δ_{t+1} A) dh_{t+1}, 0 past the end */
#pragma unroll
    for (int i = 0; i < SCAN_NPT; i++) {
        const bool live = active && n0 + sn(i) < N;
        Ac[i] = live ? A[(size_t)c * N + n0 + sn(i)] : 0.0f;
        A2[i] = Ac[i] * LOG2E;
        carry[i] = carried && live ? carried_in[sn(i)] : 0.0f;
        dA_acc[i] = 0.0f;
    }
    const float Dc = (active && D) ? D[c] : 0.0f;
    float dD_acc = 0.0f;

    /* The work is a sequence of jobs, each one sub-tile staged through smem, in this order:
     * chunks k last to first; in each, sub-tiles j last to first; for sub-tile j, first
     * walk sub-tiles w = start … j−1 from the chunk's saved start (start = 0) or from the
     * checkpoint below (only if chunk > L), then the gradients of j (w = j).
     * With PF the next job's inputs are loaded into registers while this one computes. */
    constexpr bool PF = NP >= 16;   /* 2 or 4 floats per array per thread (N ≤ 8: 8 or 16) */
    RowRegs<L, CB, PF, VEC> r_u, r_dt, r_dy;
    RowRegs<L, NP, PF, VEC> r_B, r_C;
    auto n_sub_of = [&](int kk) { return (min(T, kk * chunk + chunk) - kk * chunk + L - 1) / L; };
    /* the state saved at chunk kk's start, which a job at w = 0 starts from */
    auto load_saved = [&](int kk, float *to) {
        const float *saved = chunk_states + (((size_t)b * n_chunks + kk) * channels + c) * N + n0;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i++) to[i] = active && n0 + sn(i) < N ? saved[sn(i)] : 0.0f;
    };
    /* With PF the next job's saved start state is loaded with its inputs: at chunk = L every
     * job starts from one, and loaded when the job began, its latency held every warp at the
     * states store below (the largest stall in the kernel's profile at chunk 16). */
    float saved_next[SCAN_NPT];
    /* whole sub-tiles of a block whose channels and states all exist: addresses as WholeRows */
    const bool whole_cols = VEC && c0 + CB <= channels && N == NP;
    auto fetch = [&](int kk, int jj, int ww) {   /* issue the loads of job (kk, jj, ww) */
        const int tc1 = min(T, kk * chunk + chunk), ts0 = kk * chunk + ww * L, len = min(L, tc1 - ts0);
        if (ww == 0) load_saved(kk, saved_next);
        if constexpr (VEC && PF) {
            if (whole_cols && len == L) {   /* (set up here: kept across jobs they spilled) */
                const WholeRows<L, CB> rows_c(b, T, channels, c0, tid);   /* u, δ, dy */
                const WholeRows<L, NP> rows_n(b, T, N, 0, tid);           /* B, C */
                r_u.load_whole(u, rows_c, ts0, tid);
                r_dt.load_whole(delta, rows_c, ts0, tid);
                r_B.load_whole(B, rows_n, ts0, tid);
                if (ww == jj) {
                    r_dy.load_whole(dy, rows_c, ts0, tid);
                    r_C.load_whole(C, rows_n, ts0, tid);
                }
                return;
            }
        }
        r_u.load(u, b, T, ts0, len, channels, c0, tid);
        r_dt.load(delta, b, T, ts0, len, channels, c0, tid);
        r_B.load(B, b, T, ts0, len, N, 0, tid);
        if (ww == jj) {
            r_dy.load(dy, b, T, ts0, len, channels, c0, tid);
            r_C.load(C, b, T, ts0, len, N, 0, tid);
        }
    };
    int k = k_end - 1, j = n_sub_of(k) - 1, w = 0;
    bool from_ck = false;   /* this job starts from the checkpoint ck, not the chunk start */
    if (PF) fetch(k, j, w);
    float h[SCAN_NPT] = {0.0f, 0.0f, 0.0f, 0.0f};   /* the recurrence's state, set at w = 0 */
    /* One checkpoint in registers: the state entering sub-tile ck_j of chunk k (−1: none).
     * The walk towards j saves the state entering j − 1, so the next target needs no walk:
     * with 4 sub-tiles a chunk walks 4 of them instead of 6, with 2 or 3 only 1 or 2. */
    float ck[SCAN_NPT] = {0.0f, 0.0f, 0.0f, 0.0f};
    int ck_j = -1;
    while (k >= k_first) {
        const int tc0 = k * chunk, tc1 = min(T, tc0 + chunk), ts0 = tc0 + w * L, len = min(L, tc1 - ts0);
        const bool grad = w == j;
        int nk = k, nj = j, nw = w + 1;   /* the job after this one (nk < k_first: none) */
        bool n_from_ck = false;
        if (grad) {
            nw = 0;
            nj = j - 1;
            if (nj < 0) {
                nk = k - 1;
                if (nk >= k_first) nj = n_sub_of(nk) - 1;
            } else if (ck_j == nj) {   /* (set by an earlier walk of this chunk) */
                nw = nj;
                n_from_ck = true;
            }
        }
        __syncthreads();   /* the previous job's smem has been read */
        if (PF) {
            r_u.store(scan_smem + S::u, tid);
            r_dt.store(scan_smem + S::dt, tid);
            if (S::SORTED) r_B.store_swizzled(scan_smem + S::B, S::COPY, tid);
            else r_B.store(scan_smem + S::B, tid);
            if (grad) {
                r_dy.store(scan_smem + S::dy, tid);
                if (S::SORTED) r_C.store_swizzled(scan_smem + S::C, S::COPY, tid);
                else r_C.store(scan_smem + S::C, tid);
            }
        } else {   /* (NP < 16: never SORTED) */
            stage_rows<L, CB, VEC>(scan_smem + S::u, u, b, T, ts0, len, channels, c0, tid);
            stage_rows<L, CB, VEC>(scan_smem + S::dt, delta, b, T, ts0, len, channels, c0, tid);
            stage_rows<L, NP, VEC>(scan_smem + S::B, B, b, T, ts0, len, N, 0, tid);
            if (grad) {
                stage_rows<L, CB, VEC>(scan_smem + S::dy, dy, b, T, ts0, len, channels, c0, tid);
                stage_rows<L, NP, VEC>(scan_smem + S::C, C, b, T, ts0, len, N, 0, tid);
            }
            cp_async_commit();
            cp_async_wait<0>();
        }
        __syncthreads();
        if (from_ck) {
#pragma unroll
            for (int i = 0; i < SCAN_NPT; i++) h[i] = ck[i];
        } else if (w == 0) {   /* the chunk's saved start state */
            if (PF) {
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) h[i] = saved_next[i];
            } else {
                load_saved(k, h);
            }
        }
        if (PF && nk >= k_first) fetch(nk, nj, nw);   /* (after h took saved_next) */
        if (!grad) {   /* walk a full sub-tile: h ← the state entering sub-tile w + 1 */
            if (w == j - 1) {
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) ck[i] = h[i];
                ck_j = w;
            }
#pragma unroll 2
            for (int s = 0; s < L; s++) {
                const float dt = dt_t[s * CB + cl], dtu = dt * u_t[s * CB + cl];
                const float4 Bv = *(const float4 *)(B_t + s * NP + n0);
                const float Bn[SCAN_NPT] = {Bv.x, Bv.y, Bv.z, Bv.w};
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) h[i] = ex2(dt * A2[i]) * h[i] + dtu * Bn[i];
            }
        } else {
            /* recompute the sub-tile's states: states[row(s)][tid] = h_{ts0+s−1} for s even
             * (S::HALF; every s otherwise; row 0: the start). Each thread reads back only its
             * own column: no barrier needed. SCAN_BWD_BATCH steps are computed before their
             * states are stored, and the reverse pass below stores SCAN_BWD_REV_BATCH steps'
             * results after all of them: the compiler cannot tell these stores from the input
             * tiles' loads (one shared array), so a store between two steps held the next
             * step's loads (and everything after them) behind it. */
            states[tid] = make_float4(h[0], h[1], h[2], h[3]);
            auto recompute = [&](int s) -> float4 {
                const float dt = dt_t[s * CB + cl], dtu = dt * u_t[s * CB + cl];
                const float4 Bv = *(const float4 *)(B_t + s * NP + n0);
                const float Bn[SCAN_NPT] = {Bv.x, Bv.y, Bv.z, Bv.w};
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) h[i] = ex2(dt * A2[i]) * h[i] + dtu * Bn[i];
                return make_float4(h[0], h[1], h[2], h[3]);
            };
            {
                int s = 0;
                constexpr int RCB = ScanBwdBatch<NP>::recompute;
                static_assert(!S::HALF || RCB % 2 == 0, "batches of whole pairs of steps");
#pragma unroll 1
                for (; s + RCB <= len; s += RCB) {
                    float4 hs[RCB];
#pragma unroll
                    for (int k = 0; k < RCB; k++) hs[k] = recompute(s + k);
#pragma unroll
                    for (int k = 0; k < RCB; k++)   /* (s is even: s + k + 1 is where k is odd) */
                        if (!S::HALF || (k & 1)) states[S::row(s + k + 1) * SCAN_THREADS + tid] = hs[k];
                }
                for (; s < len; s++) {
                    const float4 hs = recompute(s);
                    if (!S::HALF || ((s + 1) & 1) == 0) states[S::row(s + 1) * SCAN_THREADS + tid] = hs;
                }
            }
            /* reverse recurrence; h holds h_t, the state after step t. One step's results
             * for put_reverse: the lane's share of the warp's Σ_c dB_t, dC_t (db_c), its
             * Σ_n for dδ (r: lane q = 0), du_t (lane q = 1; G = 1: the one lane), dy·u */
            struct RevOut { float db_c[V_OUT], r, du, dD; };
            struct StepIn { float dt, uu, dyv, Bn[SCAN_NPT], Cn[SCAN_NPT]; };
            auto load_in = [&](int s) -> StepIn {
                StepIn in;
                in.dt = dt_t[s * CB + cl];
                in.uu = u_t[s * CB + cl];
                in.dyv = dy_t[s * CB + cl];
                const float4 Bv = *(const float4 *)(B_t + s * NP + n0);
                const float4 Cv = *(const float4 *)(C_t + s * NP + n0);
                in.Bn[0] = Bv.x; in.Bn[1] = Bv.y; in.Bn[2] = Bv.z; in.Bn[3] = Bv.w;
                in.Cn[0] = Cv.x; in.Cn[1] = Cv.y; in.Cn[2] = Cv.z; in.Cn[3] = Cv.w;
                return in;
            };
            /* one step of the reverse pass from its inputs, h_{t−1} (prev) and e^{δ_t A} */
            auto reverse = [&](const StepIn &in, const float (&prev)[SCAN_NPT],
                               const float (&decay)[SCAN_NPT]) -> RevOut {
                const float dt = in.dt, uu = in.uu, dyv = in.dyv;
                const float dtu = dt * uu;
                /* dδ = Σ_n dh (A e^{δA} h_{t−1} + u B) = Σ_n A·wgt + u·Σ_n dh B with
                 * wgt = dh e^{δA} h_{t−1}, which dA (+= δ·wgt) needs too; its first two
                 * factors are the carry to step t−1, so wgt costs one product */
                float g_A = 0.0f, g_u = 0.0f;   /* Σ_n A·wgt, Σ_n dh B */
                /* this thread's dB_t[n], dC_t[n] terms: v[i], v[4 + i], or in lane order
                 * v[2i], v[2i + 1] (the butterfly's sorted levels split the state bits) */
                float v[V];
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) {
                    const float dh = carry[i] + dyv * in.Cn[i];
                    carry[i] = decay[i] * dh;
                    const float wgt = carry[i] * prev[i];
                    g_A += Ac[i] * wgt;
                    g_u += dh * in.Bn[i];
                    dA_acc[i] += dt * wgt;
                    v[S::SORTED ? 2 * i : i] = dh * dtu;
                    v[S::SORTED ? 2 * i + 1 : SCAN_NPT + i] = dyv * h[i];
                    h[i] = prev[i];
                }
                const float g_dt = g_A + uu * g_u;
                /* Σ_n over the channel's G lanes for dδ and du at once: at offset 1 a lane
                 * keeps one of the two and sends its partner the other (one shuffle for
                 * both), then plain xor sums; lane q = 0 ends with Σ g_dt, q = 1 with Σ g_u. */
                float r = g_dt;
                if (G > 1) {
                    const bool odd = (lane & 1) != 0;
                    const float keep = odd ? g_u : g_dt, send = odd ? g_dt : g_u;
                    r = keep + __shfl_xor_sync(0xffffffffu, send, 1);
#pragma unroll
                    for (int off = 2; off < G; off *= 2) r += __shfl_xor_sync(0xffffffffu, r, off);
                }
                /* Σ_c over the warp's channels (lanes q, q+G, q+2G, …) of the V values */
                butterfly_reduce_scatter<V, G, 32, S::SORTED ? 2 : 0>(v, lane);
                RevOut o;
#pragma unroll
                for (int i = 0; i < V_OUT; i++) o.db_c[i] = v[i];
                o.r = r;
                o.du = dt * (G == 1 ? g_u : r) + Dc * dyv;
                o.dD = dyv * uu;
                return o;
            };
            auto decays_of = [&](float dt, float (&decay)[SCAN_NPT]) {
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) decay[i] = ex2(dt * A2[i]);
            };
            /* st ← the state after a step, from the state before it: the recompute's step */
            auto advance = [&](float (&st)[SCAN_NPT], const float (&decay)[SCAN_NPT], const StepIn &in) {
                const float dtu = in.dt * in.uu;
#pragma unroll
                for (int i = 0; i < SCAN_NPT; i++) st[i] = decay[i] * st[i] + dtu * in.Bn[i];
            };
            /* h_{t−1} at step s: a states row where s is even (or every s without HALF), else
             * one recurrence step from the even step before (what the recompute did) */
            auto state_before = [&](int s, float (&prev)[SCAN_NPT]) {
                const int se = S::HALF ? s & ~1 : s;
                const float4 P = states[S::row(se) * SCAN_THREADS + tid];
                prev[0] = P.x; prev[1] = P.y; prev[2] = P.z; prev[3] = P.w;
                if (S::HALF && se != s) {
                    const StepIn ie = load_in(se);
                    float de[SCAN_NPT];
                    decays_of(ie.dt, de);
                    advance(prev, de, ie);
                }
            };
            auto reverse_one = [&](int s) -> RevOut {
                const StepIn in = load_in(s);
                float prev[SCAN_NPT], decay[SCAN_NPT];
                state_before(s, prev);
                decays_of(in.dt, decay);
                return reverse(in, prev, decay);
            };
            auto put_reverse = [&](int s, const RevOut &o) {
                if (writer) {
                    float *out = dBC + (s * SCAN_WARPS + warp) * 2 * NP;
#pragma unroll
                    for (int i = 0; i < V_OUT; i++) {
                        /* value idx: kind idx / 4, n = n0 + idx % 4 (lane order: kind
                         * idx % 2, n = n0 + idx / 2) */
                        const int idx = base + i;
                        if (S::SORTED) out[(idx % 2) * NP + n0 + idx / 2] = o.db_c[i];
                        else out[(idx / SCAN_NPT) * NP + n0 + idx % SCAN_NPT] = o.db_c[i];
                    }
                }
                if (q == 0) {
                    ddt_t[s * CB + cl] = o.r;
                    dD_acc += o.dD;
                }
                if (G == 1 || q == 1) du_t[s * CB + cl] = o.du;
            };
            {
                constexpr int RB = ScanBwdBatch<NP>::reverse;
                static_assert(!S::HALF || RB % 2 == 0, "batches of whole pairs of steps");
                int s = len - 1;
                if (S::HALF && s >= 0 && (s & 1) == 0) {   /* (len odd) the batches start on odd steps */
                    put_reverse(s, reverse_one(s));
                    s--;
                }
#pragma unroll 1
                for (; s + 1 >= RB; s -= RB) {
                    RevOut o[RB];
                    if constexpr (S::HALF) {
                        /* pairs (s − k, s − k − 1), the second even: its row and its decays
                         * give the first its h_{t−1} */
#pragma unroll
                        for (int k = 0; k < RB; k += 2) {
                            const StepIn io = load_in(s - k), ie = load_in(s - k - 1);
                            const float4 P = states[S::row(s - k - 1) * SCAN_THREADS + tid];
                            const float pe[SCAN_NPT] = {P.x, P.y, P.z, P.w};
                            float de[SCAN_NPT], dec[SCAN_NPT], po[SCAN_NPT] = {P.x, P.y, P.z, P.w};
                            decays_of(ie.dt, de);
                            decays_of(io.dt, dec);
                            advance(po, de, ie);
                            o[k] = reverse(io, po, dec);
                            o[k + 1] = reverse(ie, pe, de);
                        }
                    } else {
#pragma unroll
                        for (int k = 0; k < RB; k++) o[k] = reverse_one(s - k);
                    }
#pragma unroll
                    for (int k = 0; k < RB; k++) put_reverse(s - k, o[k]);
                }
                for (; s >= 0; s--) put_reverse(s, reverse_one(s));
            }
            __syncthreads();
            if constexpr (VEC) {   /* float4 pieces: channels and N are multiples of 4 */
                /* du, dδ of channels jj … jj+3 at step s, element at */
                auto put_du_dd = [&](int s, int jj, size_t at) {
                    float4 gd = *(const float4 *)(ddt_t + s * CB + jj);
                    if (softplus) {   /* the δ tile is still this sub-tile's */
                        const float4 d = *(const float4 *)(dt_t + s * CB + jj);
                        gd = make_float4(gd.x * sigmoid_of_softplus(d.x), gd.y * sigmoid_of_softplus(d.y),
                                         gd.z * sigmoid_of_softplus(d.z), gd.w * sigmoid_of_softplus(d.w));
                    }
                    if (overwrite) {   /* one block writes each element: nothing to read */
                        if (du) *(float4 *)(du + at) = *(const float4 *)(du_t + s * CB + jj);
                        if (ddelta) *(float4 *)(ddelta + at) = gd;
                    } else {
                        if (du) add4(du + at, *(const float4 *)(du_t + s * CB + jj));
                        if (ddelta) add4(ddelta + at, gd);
                    }
                };
                /* the block's Σ over its channels of dB, dC at step s, states m … m+3, warps in order */
                auto put_dBC = [&](int s, int m, size_t at) {
                    float4 sum_B = make_float4(0.0f, 0.0f, 0.0f, 0.0f), sum_C = sum_B;
#pragma unroll
                    for (int w = 0; w < SCAN_WARPS; w++) {
                        const float4 pb = *(const float4 *)(dBC + (s * SCAN_WARPS + w) * 2 * NP + m);
                        const float4 pc = *(const float4 *)(dBC + (s * SCAN_WARPS + w) * 2 * NP + NP + m);
                        sum_B = make_float4(sum_B.x + pb.x, sum_B.y + pb.y, sum_B.z + pb.z, sum_B.w + pb.w);
                        sum_C = make_float4(sum_C.x + pc.x, sum_C.y + pc.y, sum_C.z + pc.z, sum_C.w + pc.w);
                    }
                    *(float4 *)(dB_part + at) = sum_B;
                    *(float4 *)(dC_part + at) = sum_C;
                };
                if (whole_cols && len == L) {   /* addresses as WholeRows (the partials: row b' = x·Bsz + b) */
                    using RC = WholeRows<L, CB>;
                    using RN = WholeRows<L, NP>;
                    const RC rows_c(b, T, channels, c0, tid);
                    const RN rows_n((int)blockIdx.x * Bsz + b, T, N, 0, tid);
#pragma unroll
                    for (int r = 0; r < RC::ROUNDS; r++)
                        if (RC::has(r, tid))
                            put_du_dd(tid / RC::W4 + r * RC::RS, 4 * (tid % RC::W4), rows_c.index(ts0, r));
#pragma unroll
                    for (int r = 0; r < RN::ROUNDS; r++)
                        if (RN::has(r, tid))
                            put_dBC(tid / RN::W4 + r * RN::RS, 4 * (tid % RN::W4), rows_n.index(ts0, r));
                } else {
                    for (int i = tid; i < len * (CB / 4); i += SCAN_THREADS) {
                        const int s = i / (CB / 4), jj = 4 * (i % (CB / 4));
                        if (c0 + jj < channels) put_du_dd(s, jj, ((size_t)b * T + ts0 + s) * channels + c0 + jj);
                    }
                    for (int i = tid; i < len * (N / 4); i += SCAN_THREADS) {
                        const int s = i / (N / 4), m = 4 * (i % (N / 4));
                        put_dBC(s, m, (((size_t)blockIdx.x * Bsz + b) * T + ts0 + s) * N + m);
                    }
                }
            } else {
                for (int i = tid; i < len * CB; i += SCAN_THREADS) {
                    const int s = i / CB, jj = i % CB;
                    if (c0 + jj >= channels) continue;
                    const size_t at = ((size_t)b * T + ts0 + s) * channels + c0 + jj;
                    const float gd = softplus ? ddt_t[i] * sigmoid_of_softplus(dt_t[i]) : ddt_t[i];
                    if (du) du[at] = overwrite ? du_t[i] : du[at] + du_t[i];
                    if (ddelta) ddelta[at] = overwrite ? gd : ddelta[at] + gd;
                }
                for (int i = tid; i < len * N; i += SCAN_THREADS) {
                    const int s = i / N, m = i % N;
                    float sum_B = 0.0f, sum_C = 0.0f;
#pragma unroll
                    for (int w = 0; w < SCAN_WARPS; w++) {
                        sum_B += dBC[(s * SCAN_WARPS + w) * 2 * NP + m];
                        sum_C += dBC[(s * SCAN_WARPS + w) * 2 * NP + NP + m];
                    }
                    const size_t at = (((size_t)blockIdx.x * Bsz + b) * T + ts0 + s) * N + m;
                    dB_part[at] = sum_B;
                    dC_part[at] = sum_C;
                }
            }
        }
        if (nk != k) ck_j = -1;
        k = nk;
        j = nj;
        w = nw;
        from_ck = n_from_ck;
    }
    if (active) {
        const size_t part = ((size_t)seg * Bsz + b) * channels + c;
        float *at = dA_part + part * N + n0;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i++)
            if (n0 + sn(i) < N) at[sn(i)] = dA_acc[i];
        if (q == 0) dD_part[part] = dD_acc;
    }
}

/* Dynamic shared memory of the carry pass, in floats: double-buffered tiles of δ, dy
 * ([2][L][CB]) and C ([2][L][NP]). */
template <int NP>
struct ScanCarrySmem {
    static constexpr int CB = SCAN_THREADS * SCAN_NPT / NP;
    static constexpr int L = SCAN_FWD_TILE;
    static constexpr int dt = 0, dy = dt + 2 * L * CB, C = dy + 2 * L * CB;
    static constexpr int total = C + 2 * L * NP;
};

/* The backward's carry pass, for segments z = 1 … S−1 (blockIdx.z + 1): the reverse
 * recurrence dh_t = dy_t C_t + g_t, g_{t−1} = exp(δ_t A) dh_t from g = 0 at the segment's
 * last step down to its first, ts; writes g_{ts−1} (what the segment passes to its left
 * neighbour when nothing comes in from its right) to carry[z−1][b][c][n] and the segment's
 * Σδ to dt_sum[z−1][b][c]. Same thread layout and staging as the forward, tiles last first. */
template <int NP, bool VEC>
__global__ void __launch_bounds__(SCAN_THREADS)
selective_scan_carry_kernel(float *carry, float *dt_sum, const float *dy, const float *delta,
                            const float *A, const float *C, int Bsz, int T, int channels, int N,
                            int seg_len) {
    using S = ScanCarrySmem<NP>;
    constexpr int G = NP / SCAN_NPT, CB = S::CB, L = S::L;
    extern __shared__ __align__(16) float scan_smem[];
    const int tid = threadIdx.x, cl = tid / G, q = tid % G, n0 = q * SCAN_NPT;
    const int c0 = blockIdx.x * CB, c = c0 + cl, b = blockIdx.y, z = blockIdx.z + 1;
    const bool active = c < channels;
    const int ts = z * seg_len, te = min(T, ts + seg_len), n_tiles = (te - ts + L - 1) / L;
    float A2[SCAN_NPT], g[SCAN_NPT];
#pragma unroll
    for (int i = 0; i < SCAN_NPT; i++) {
        A2[i] = active && n0 + i < N ? A[(size_t)c * N + n0 + i] * LOG2E : 0.0f;
        g[i] = 0.0f;
    }
    float sum = 0.0f;
    auto stage = [&](int tile, int p) {   /* tile 0 is the segment's last */
        const int t0 = ts + (n_tiles - 1 - tile) * L, len = min(L, te - t0);
        stage_rows<L, CB, VEC>(scan_smem + S::dt + p * L * CB, delta, b, T, t0, len, channels, c0, tid);
        stage_rows<L, CB, VEC>(scan_smem + S::dy + p * L * CB, dy, b, T, t0, len, channels, c0, tid);
        stage_rows<L, NP, VEC>(scan_smem + S::C + p * L * NP, C, b, T, t0, len, N, 0, tid);
    };
    stage(0, 0);
    cp_async_commit();
    for (int tile = 0; tile < n_tiles; tile++) {
        const int p = tile & 1, t0 = ts + (n_tiles - 1 - tile) * L, len = min(L, te - t0);
        if (tile + 1 < n_tiles) stage(tile + 1, p ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const float *dt_t = scan_smem + S::dt + p * L * CB, *dy_t = scan_smem + S::dy + p * L * CB;
        const float *C_t = scan_smem + S::C + p * L * NP;
#pragma unroll 4
        for (int s = len - 1; s >= 0; s--) {
            const float dt = dt_t[s * CB + cl], dyv = dy_t[s * CB + cl];
            const float4 Cv = *(const float4 *)(C_t + s * NP + n0);
            const float Cn[SCAN_NPT] = {Cv.x, Cv.y, Cv.z, Cv.w};
#pragma unroll
            for (int i = 0; i < SCAN_NPT; i++) g[i] = ex2(dt * A2[i]) * (g[i] + dyv * Cn[i]);
            sum += dt;
        }
        __syncthreads();   /* buffer p free for tile+2 */
    }
    if (active) {
        const size_t part = ((size_t)(z - 1) * Bsz + b) * channels + c;
        float *at = carry + part * N + n0;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i++)
            if (n0 + i < N) at[i] = g[i];
        if (q == 0) dt_sum[part] = sum;
    }
}

/* The gradient carried into each segment z = S−2 … 0 from its right, in order:
 * in(z) = g(z+1) + exp(A·Σδ(z+1)) ⊙ in(z+1), in(S−1) = 0 (g, Σδ: the carry pass's, in
 * carry[z] and dt_sum[z]; in(z) overwrites carry[z], which held g(z+1)). One thread per
 * (b, c, n). */
__global__ void scan_segment_carries_kernel(float *carry, const float *dt_sum, const float *A, int Bsz,
                                            int channels, int N, int n_seg) {
    const size_t n = (size_t)Bsz * channels * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t bc = i / N;
        const int c = (int)(bc % channels);
        const float a2 = A[(size_t)c * N + i % N] * LOG2E;
        float in = 0.0f;
        for (int z = n_seg - 2; z >= 0; z--) {
            in = carry[(size_t)z * n + i] + ex2(a2 * dt_sum[(size_t)z * Bsz * channels + bc]) * in;
            carry[(size_t)z * n + i] = in;
        }
    }
}

/* dB[i] += Σ_k dB_part[k][i] (and dC) over the channel blocks k in order; i = (b,t,n). */
__global__ void scan_sum_dBC_kernel(float *dB, float *dC, const float *dB_part, const float *dC_part,
                                    int n_parts, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float sum_B = 0.0f, sum_C = 0.0f;
        for (int k = 0; k < n_parts; k++) {
            sum_B += dB_part[(size_t)k * n + i];
            sum_C += dC_part[(size_t)k * n + i];
        }
        if (dB) dB[i] += sum_B;
        if (dC) dC[i] += sum_C;
    }
}

/* dA[i] += Σ_b dA_part[b][i] (i = (c,n)); dD[c] += Σ_b dD_part[b][c]; b in order. */
__global__ void scan_sum_dAD_kernel(float *dA, float *dD, const float *dA_part, const float *dD_part,
                                    int Bsz, int channels, int N) {
    const size_t n_A = (size_t)channels * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_A + channels;
         i += (size_t)gridDim.x * blockDim.x) {
        if (i < n_A) {
            if (!dA) continue;
            float sum = 0.0f;
            for (int b = 0; b < Bsz; b++) sum += dA_part[(size_t)b * n_A + i];
            dA[i] += sum;
        } else {
            if (!dD) continue;
            const size_t c = i - n_A;
            float sum = 0.0f;
            for (int b = 0; b < Bsz; b++) sum += dD_part[(size_t)b * channels + c];
            dD[c] += sum;
        }
    }
}

/* ---------------------------------------------------------------- launchers */

static void check_scan_shape(int N, int chunk, const char *who) {
    if (N < 1 || N > 32 || chunk < 1) {
        fprintf(stderr, "%s: d_state %d / chunk %d unsupported (1 ≤ N ≤ 32, chunk ≥ 1)\n", who, N, chunk);
        abort();
    }
}

/* The 16-byte (VEC) staging applies when every row the kernels copy starts 16-byte aligned. */
static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
static bool scan_vec_ok(int channels, int N, const void *const *ptrs, int n_ptrs) {
    if (channels % 4 != 0 || N % 4 != 0) return false;
    for (int i = 0; i < n_ptrs; i++)
        if (ptrs[i] && !aligned16(ptrs[i])) return false;
    return true;
}

/* Segments: the scans run over S time segments of seg_len steps (a multiple of chunk) in
 * parallel, S× the B·channel blocks. The price is a pass over segments 0 … S−2 for their
 * end states (forward: the recurrence from zero, without C or y) or over 1 … S−1 for the
 * gradient carried in from their right (backward), and a short sequential combine.
 * Measured on an H100 (test_cuda_scan --bench, di 1536, N 16, chunk 64; docs/performance.md
 * "The scan over time segments"): where B·channels gives too few blocks for the SMs (evaluation batches,
 * B = 1 or 2 at T = 8192) it is 2.8–4.9× faster; at jamba-small's training shape (384
 * blocks) the forward is ~2% slower split and the backward 2–3% faster. Hence the policies
 * (`blocks_per_sm`: what the SMs hold of this kernel at once):
 *   forward: S = (SMs·blocks_per_sm) / base, but 1 where that is under 3 (a split in two
 *     pays the end-state pass over half of T for too little);
 *   backward: 1 where one segment's blocks fill at least half the slots; else the
 *     S ≤ SCAN_MAX_SEGMENTS whose blocks fill their last wave best (blocks over waves ×
 *     slots), the smallest S where several tie (the carry pass grows with S). The first
 *     rule is the whole step's measurement: at jamba-small's shape (384 blocks, 528 slots)
 *     the best fill is S = 4, which the backward alone liked by 2% in the tenth session,
 *     but the jamba-small bf16 step ran 0.3 ms faster with S = 1 (H100, seventeenth
 *     session: 44.62 / 44.90 against 44.99 / 45.09 ms at chunk 64, 43.45 / 43.77 against
 *     44.00 / 44.25 at chunk 16): the carry pass reads δ, dy and C over 3/4 of T.
 * Segments are at least SCAN_MIN_SEGMENT steps; BRAID_SCAN_SEGMENTS overrides (tests and
 * measurements). */
#define SCAN_MAX_SEGMENTS 8
#define SCAN_MIN_SEGMENT 64

enum SegmentPolicy { SEGMENTS_FORWARD, SEGMENTS_BACKWARD };

/* The segment count S (the return) and *seg_len, the segment length in steps: whole
 * chunks, the last segment the shortest, none empty. */
static int scan_segments(enum SegmentPolicy policy, int base_blocks, int blocks_per_sm, int T, int chunk,
                         int *seg_len) {
    const int n_chunks = (T + chunk - 1) / chunk;
    int most = SCAN_MAX_SEGMENTS;
    if (most > n_chunks) most = n_chunks;
    if (most > T / SCAN_MIN_SEGMENT) most = T / SCAN_MIN_SEGMENT;
    if (most < 1) most = 1;
    if (base_blocks < 1) base_blocks = 1;
    int S = 1;
    const char *env = getenv("BRAID_SCAN_SEGMENTS");
    if (env && *env) {
        S = atoi(env);
        if (S > SCAN_MAX_SEGMENTS) S = SCAN_MAX_SEGMENTS;
    } else {
        const long slots = (long)cuda_sm_count() * (blocks_per_sm > 0 ? blocks_per_sm : 1);
        if (policy == SEGMENTS_FORWARD) {
            S = (int)(slots / base_blocks);
            if (S < 3) S = 1;
            if (S > most) S = most;
        } else if (2 * (long)base_blocks >= slots) {
            S = 1;
        } else {
            double best = 0.0;
            for (int s = 1; s <= most; s++) {
                const long blocks = (long)s * base_blocks, waves = (blocks + slots - 1) / slots;
                const double fill = (double)blocks / (double)(waves * slots);
                if (fill > best + 0.01) { best = fill; S = s; }
            }
        }
    }
    if (S > n_chunks) S = n_chunks;
    if (S < 1) S = 1;
    const int chunks_per_seg = (n_chunks + S - 1) / S;
    *seg_len = chunks_per_seg * chunk;
    return (n_chunks + chunks_per_seg - 1) / chunks_per_seg;
}

template <typename K>
static int resident_blocks(K kernel, size_t smem_bytes) {
    int n = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, SCAN_THREADS, smem_bytes));
    return n;
}

template <int NP, bool VEC>
static void launch_forward(float *y, float *chunk_states, const float *u, const float *delta,
                           const float *A, const float *B, const float *C, const float *D, int Bsz,
                           int T, int channels, int N, int chunk, cudaStream_t stream) {
    const size_t smem_bytes = ScanForwardSmem<NP>::total * sizeof(float);
    /* above 48 KiB (NP = 4: 84 KiB) a kernel must opt in to the larger shared memory */
    CUDA_CHECK(cudaFuncSetAttribute(selective_scan_forward_kernel<NP, VEC, false>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes));
    CUDA_CHECK(cudaFuncSetAttribute(selective_scan_forward_kernel<NP, VEC, true>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes));
    const int cblocks = channel_blocks(channels, N);
    int seg_len;
    const int n_seg = scan_segments(SEGMENTS_FORWARD, cblocks * Bsz,
                                    resident_blocks(selective_scan_forward_kernel<NP, VEC, false>, smem_bytes), T,
                                    chunk, &seg_len);
    if (n_seg > 1) {
        selective_scan_forward_kernel<NP, VEC, true>
            <<<dim3((unsigned)cblocks, (unsigned)Bsz, (unsigned)(n_seg - 1)), SCAN_THREADS, smem_bytes, stream>>>(
                y, chunk_states, u, delta, A, B, C, D, T, channels, N, chunk, seg_len);
        CUDA_CHECK_LAUNCH();
        const size_t n = (size_t)Bsz * channels * N;
        scan_segment_starts_kernel<<<grid_stride_blocks(n, 256, 4096), 256, 0, stream>>>(
            chunk_states, y, A, Bsz, T, channels, N, chunk, seg_len, n_seg);
        CUDA_CHECK_LAUNCH();
    }
    selective_scan_forward_kernel<NP, VEC, false>
        <<<dim3((unsigned)cblocks, (unsigned)Bsz, (unsigned)n_seg), SCAN_THREADS, smem_bytes, stream>>>(
            y, chunk_states, u, delta, A, B, C, D, T, channels, N, chunk, seg_len);
    CUDA_CHECK_LAUNCH();
}

extern "C" void selective_scan_forward_cuda(float *y, float *chunk_states, const float *u,
                                            const float *delta, const float *A, const float *B,
                                            const float *C, const float *D, int Bsz, int T,
                                            int channels, int N, int chunk, cudaStream_t stream) {
    check_scan_shape(N, chunk, "selective_scan_forward_cuda");
    if (Bsz == 0 || T == 0 || channels == 0) return;
    const void *rows[] = {y, u, delta, B, C};
    const bool vec = scan_vec_ok(channels, N, rows, 5);
#define SCAN_FORWARD(NP)                                                                             \
    (vec ? launch_forward<NP, true>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream) \
         : launch_forward<NP, false>(y, chunk_states, u, delta, A, B, C, D, Bsz, T, channels, N, chunk, stream))
    switch (padded_state(N)) {
    case 4: SCAN_FORWARD(4); break;
    case 8: SCAN_FORWARD(8); break;
    case 16: SCAN_FORWARD(16); break;
    default: SCAN_FORWARD(32); break;
    }
#undef SCAN_FORWARD
}

/* scratch: dB_part, dC_part (n_cblocks·Bsz·T·N each), dA_part (S·Bsz·C·N), dD_part (S·Bsz·C),
 * the segments' carries (S·Bsz·C·N) and Σδ (S·Bsz·C), for up to S = SCAN_MAX_SEGMENTS. */
extern "C" size_t selective_scan_backward_cuda_scratch_floats(int Bsz, int T, int channels, int N) {
    const size_t btn = (size_t)Bsz * T * N;
    return 2 * (size_t)channel_blocks(channels, N) * btn + 2 * (size_t)SCAN_MAX_SEGMENTS * Bsz * channels * (N + 1);
}

template <int NP, bool VEC>
static void launch_backward(float *du, float *ddelta, float *dB_part, float *dC_part, float *dA_part,
                            float *dD_part, float *carry, float *dt_sum, int *n_seg_out,
                            const float *dy, const float *u, const float *delta,
                            const float *A, const float *B, const float *C, const float *D,
                            const float *chunk_states, int Bsz, int T, int channels, int N, int chunk,
                            int flags, cudaStream_t stream) {
    const size_t smem_bytes = ScanBackwardSmem<NP>::total * sizeof(float);
    /* above 48 KiB a kernel must opt in to the larger shared memory */
    CUDA_CHECK(cudaFuncSetAttribute(selective_scan_backward_kernel<NP, VEC>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes));
    const int cblocks = channel_blocks(channels, N);
    int seg_len;
    const int n_seg = scan_segments(SEGMENTS_BACKWARD, cblocks * Bsz,
                                    resident_blocks(selective_scan_backward_kernel<NP, VEC>, smem_bytes), T, chunk,
                                    &seg_len);
    *n_seg_out = n_seg;
    if (n_seg > 1) {
        const size_t carry_smem = ScanCarrySmem<NP>::total * sizeof(float);
        CUDA_CHECK(cudaFuncSetAttribute(selective_scan_carry_kernel<NP, VEC>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)carry_smem));
        selective_scan_carry_kernel<NP, VEC>
            <<<dim3((unsigned)cblocks, (unsigned)Bsz, (unsigned)(n_seg - 1)), SCAN_THREADS, carry_smem, stream>>>(
                carry, dt_sum, dy, delta, A, C, Bsz, T, channels, N, seg_len);
        CUDA_CHECK_LAUNCH();
        const size_t n = (size_t)Bsz * channels * N;
        scan_segment_carries_kernel<<<grid_stride_blocks(n, 256, 4096), 256, 0, stream>>>(
            carry, dt_sum, A, Bsz, channels, N, n_seg);
        CUDA_CHECK_LAUNCH();
    }
    selective_scan_backward_kernel<NP, VEC>
        <<<dim3((unsigned)cblocks, (unsigned)Bsz, (unsigned)n_seg), SCAN_THREADS, smem_bytes, stream>>>(
            du, ddelta, dB_part, dC_part, dA_part, dD_part, dy, u, delta, A, B, C, D, chunk_states, carry,
            Bsz, T, channels, N, chunk, seg_len, flags);
    CUDA_CHECK_LAUNCH();
}

/* flags: SCAN_BWD_WRITE, SCAN_BWD_DELTA_SOFTPLUS (selective_scan_backward_write_cuda); who:
 * the entry point, for the error messages */
static void scan_backward(const char *who, float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD, const float *dy,
                          const float *u, const float *delta, const float *A, const float *B, const float *C,
                          const float *D, const float *chunk_states, int Bsz, int T, int channels, int N,
                          int chunk, float *scratch, size_t scratch_floats, int flags, cudaStream_t stream) {
    check_scan_shape(N, chunk, who);
    if (Bsz == 0 || T == 0 || channels == 0) return;
    const size_t need = selective_scan_backward_cuda_scratch_floats(Bsz, T, channels, N);
    if (scratch_floats < need) {
        fprintf(stderr, "%s: scratch of %zu floats, need %zu\n", who, scratch_floats, need);
        abort();
    }
    const int n_parts = channel_blocks(channels, N);
    const size_t btn = (size_t)Bsz * T * N, per_seg = (size_t)Bsz * channels;
    float *dB_part = scratch, *dC_part = dB_part + (size_t)n_parts * btn;
    float *dA_part = dC_part + (size_t)n_parts * btn, *dD_part = dA_part + SCAN_MAX_SEGMENTS * per_seg * N;
    float *carry = dD_part + SCAN_MAX_SEGMENTS * per_seg, *dt_sum = carry + SCAN_MAX_SEGMENTS * per_seg * N;
    const void *rows[] = {du, ddelta, dy, u, delta, B, C, scratch};
    const bool vec = scan_vec_ok(channels, N, rows, 8);
    int n_seg = 1;
#define SCAN_BACKWARD(NP)                                                                            \
    (vec ? launch_backward<NP, true>(du, ddelta, dB_part, dC_part, dA_part, dD_part, carry, dt_sum, &n_seg, \
                                     dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, flags, stream) \
         : launch_backward<NP, false>(du, ddelta, dB_part, dC_part, dA_part, dD_part, carry, dt_sum, &n_seg, \
                                      dy, u, delta, A, B, C, D, chunk_states, Bsz, T, channels, N, chunk, flags, stream))
    switch (padded_state(N)) {
    case 4: SCAN_BACKWARD(4); break;
    case 8: SCAN_BACKWARD(8); break;
    case 16: SCAN_BACKWARD(16); break;
    default: SCAN_BACKWARD(32); break;
    }
#undef SCAN_BACKWARD
    if (dB || dC) {
        scan_sum_dBC_kernel<<<grid_stride_blocks(btn, 256, 4096), 256, 0, stream>>>(dB, dC, dB_part, dC_part,
                                                                         n_parts, btn);
        CUDA_CHECK_LAUNCH();
    }
    if (dA || dD) {   /* the partials of every (segment, b), in order */
        scan_sum_dAD_kernel<<<grid_stride_blocks((size_t)channels * (N + 1), 256, 4096), 256, 0, stream>>>(
            dA, dD, dA_part, dD_part, n_seg * Bsz, channels, N);
        CUDA_CHECK_LAUNCH();
    }
}

extern "C" void selective_scan_backward_cuda(float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD,
                                             const float *dy, const float *u, const float *delta, const float *A,
                                             const float *B, const float *C, const float *D,
                                             const float *chunk_states, int Bsz, int T, int channels, int N,
                                             int chunk, float *scratch, size_t scratch_floats,
                                             cudaStream_t stream) {
    scan_backward("selective_scan_backward_cuda", du, ddelta, dA, dB, dC, dD, dy, u, delta, A, B, C, D, chunk_states,
                  Bsz, T, channels, N, chunk, scratch, scratch_floats, 0, stream);
}

extern "C" void selective_scan_backward_write_cuda(float *du, float *ddelta, float *dA, float *dB, float *dC,
                                                   float *dD, const float *dy, const float *u, const float *delta,
                                                   const float *A, const float *B, const float *C, const float *D,
                                                   const float *chunk_states, int Bsz, int T, int channels, int N,
                                                   int chunk, float *scratch, size_t scratch_floats,
                                                   int delta_softplus, cudaStream_t stream) {
    scan_backward("selective_scan_backward_write_cuda", du, ddelta, dA, dB, dC, dD, dy, u, delta, A, B, C, D,
                  chunk_states, Bsz, T, channels, N, chunk, scratch, scratch_floats,
                  SCAN_BWD_WRITE | (delta_softplus ? SCAN_BWD_DELTA_SOFTPLUS : 0), stream);
}
