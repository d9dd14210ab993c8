/* attention_wgmma.cu — the bf16 attention kernels on Hopper's warpgroup tensor-core
 * instructions (wgmma, sm_90a) for head dims in the 64 bucket (33–64): the forward and the
 * backward's two kernels, with the same math and contract as attention_tc.cu's (out and lse
 * written; dq, dk, dv accumulated; no atomics) and its operand copies as inputs (K, V, dO,
 * Q as [B][heads][Tp][64] bf16, zero-padded; the forward reads q itself). attention_tc.cu
 * calls them in place of its own where they are built and the device is compute
 * capability 9.0.
 *
 * Why: the mma.sync kernels hold every fragment and accumulator in registers and issue one
 * instruction per 16×8×16 product, so their warps run out of registers and issue slots
 * (docs/gpu.md). A wgmma is one instruction for a 64×64×16 product per warpgroup (4 warps),
 * reading its B operand, and here its A operand for S = Q·Kᵀ too, straight from shared
 * memory; only the accumulators live in registers.
 *
 * Forward, one block: 2 warpgroups, 128 query rows (64 each), read from q and rounded as they are
 * stored; key/value tiles of 64 rows from the K and V copies in two shared buffers
 * (cp.async, the next tile in flight). Per tile, each warpgroup whose rows see any key:
 *   S = Q·Kᵀ   4 wgmma m64n64k16, A = its Q rows, B = the K tile (both K-major);
 *   softmax    online, base 2, as attention_tc.cu (a warp owns 16 rows: the accumulator's
 *              layout per warp is mma.sync's C fragment, lane (g, t) rows g and g+8,
 *              columns 8j+2t, 8j+2t+1);
 *   O += P·V   4 wgmma m64n64k16 with A = P from registers (the C fragments packed to bf16
 *              in pairs are wgmma's A fragments) and B = the V tile read transposed.
 * Shared tiles are in the 128-byte-swizzle layout: a row's 64 dims are 128 bytes, rows
 * follow each other, and the 16-byte piece c of row r sits at piece c xor (r mod 8), so the
 * 8 rows of an atom (1024 bytes, 1024-aligned) spread over all banks. For S, Q and K are
 * K-major (the sum runs over the dims): stride 1024 bytes between 8-row groups, and a
 * 16-dim step moves the start 32 bytes into the row. For P·V the same V tile is N-major
 * (the sum runs over its rows, the keys): stride 1024 bytes between 8-key groups; a 16-key
 * step moves the start 2048 bytes. (The no-swizzle layout, 8×16-byte core matrices, gave
 * a forward of 0.332 ms at jamba-small's shape against 0.242 ms with this one.) The
 * backward's kernels read the same tiles the same ways (below). */
#include "attention_common.cuh"
#include "cuda_check.h"
#include "ptx.cuh"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>

#ifndef BRAID_HAVE_WGMMA
#define BRAID_HAVE_WGMMA 0   /* CMake defines it 1 where it builds for sm_90a */
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define WGMMA_BUILT 1   /* this pass (sm_90a, or the host) has the kernel */
#endif

#define WG_THREADS 256   /* 2 warpgroups */
#define WG_ROWS 128      /* query rows a block owns */
#define WG_KEYS 64       /* keys a tile */
#define WG_HD 64
#define WG_TILE_BYTES (64 * WG_HD * 2)   /* one 64-row bf16 tile */

/* byte offset of 16-byte piece c (dims 8c..8c+7) of row r in a tile: rows of 128 bytes,
 * the pieces of row r permuted by c xor (r mod 8) (the 128-byte swizzle) */
__device__ __forceinline__ uint32_t tile_piece(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

/* a shared-memory matrix descriptor, 128-byte swizzle (the tile 1024-byte aligned) */
__device__ __forceinline__ uint64_t smem_desc(const void *at, uint32_t leading, uint32_t stride) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(at);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(leading >> 4) << 16) | ((uint64_t)(stride >> 4) << 32) |
           (1ull << 62);
}

#ifdef WGMMA_BUILT
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* keeps the compiler from moving accumulator reads or writes across the asynchronous products */
__device__ __forceinline__ void pin(float (&d)[32]) {
#pragma unroll
    for (int i = 0; i < 32; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* One group of products run to completion: issue() emits its wgmma instructions between
 * the fence and the commit, the group is waited for, and the accumulators it wrote are
 * pinned, so no read of them moves above the wait. */
template <class Issue, class... Acc>
__device__ __forceinline__ void wgmma_run(Issue issue, Acc &...acc) {
    wgmma_fence();
    issue();
    wgmma_commit();
    wgmma_wait_all();
    (pin(acc), ...);
}

/* d (+)= A·B, 64×64×16, A and B from shared memory (K-major); accumulate = 0 overwrites d */
__device__ __forceinline__ void wgmma_ss(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b), "r"(accumulate));
}

/* d += A·B, 64×64×16, A from registers (four bf16 pairs a lane), B from shared memory read
 * N-major (transposed) */
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

/* ROWS rows of a [rows][64] bf16 copy (contiguous) into a tile: ROWS·8 pieces; piece i
 * is row i/8, dims 8·(i%8): 8 consecutive threads copy one row's 128 bytes, which land in
 * distinct banks. */
template <int ROWS, int THREADS = WG_THREADS>
__device__ __forceinline__ void copy_tile_async(unsigned char *tile, const __nv_bfloat16 *src) {
#pragma unroll
    for (int k = 0; k < ROWS * 8 / THREADS; k++) {
        const int i = k * THREADS + threadIdx.x, r = i >> 3, c = i & 7;
        cp_async16(tile + tile_piece(r, c), src + (size_t)r * WG_HD + 8 * c);
    }
}

/* copies landed (cp.async) are visible to the tensor cores after this, in each copying
 * thread, and a barrier */
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* a 64-row tile read K-major (the sum over its dims), 16 dims on from dims 16·step */
__device__ __forceinline__ uint64_t rows_desc(const unsigned char *tile, int step) { return smem_desc(tile + 32 * step, 16, 1024); }
/* the same tile read N-major (the sum over its rows), 16 rows on from rows 16·step */
__device__ __forceinline__ uint64_t cols_desc(const unsigned char *tile, int step) { return smem_desc(tile + 2048 * step, 8192, 1024); }
/* acc (+)= A·Bᵀ over 64 dims: two 64-row tiles read K-major (S = Q·Kᵀ, dP = dO·Vᵀ, ...);
 * the first step overwrites acc */
__device__ __forceinline__ void rows_times_rows(float (&acc)[32], const unsigned char *a, const unsigned char *b) {
#pragma unroll
    for (int ks = 0; ks < WG_HD / 16; ks++) wgmma_ss(acc, rows_desc(a, ks), rows_desc(b, ks), ks);
}
/* acc += W·X over 64 rows of X: W the A fragments of a score block (pack_a), X a tile read
 * N-major (O += P·V, dk += dSᵀ·Q, ...) */
__device__ __forceinline__ void scores_times_cols(float (&acc)[32], const uint32_t (&w)[4][4], const unsigned char *x) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_rs_tb(acc, w[kk], cols_desc(x, kk));
}
/* the first 1024-byte boundary in a kernel's dynamic shared memory (where the swizzle
 * pattern starts; each launch asks for 1 KB more) */
__device__ __forceinline__ unsigned char *swizzle_aligned(unsigned char *raw) {
    return raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(raw) & 1023)) & 1023);
}
/* a warp's C-layout block (8 n-tiles of 8 columns) as the A fragments of 4 k16 steps */
__device__ __forceinline__ void pack_a(uint32_t (&a)[4][4], const float (&w)[8][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        a[kk][0] = pack_bf16(w[2 * kk][0], w[2 * kk][1]);
        a[kk][1] = pack_bf16(w[2 * kk][2], w[2 * kk][3]);
        a[kk][2] = pack_bf16(w[2 * kk + 1][0], w[2 * kk + 1][1]);
        a[kk][3] = pack_bf16(w[2 * kk + 1][2], w[2 * kk + 1][3]);
    }
}
/* The write-back's walk over one accumulator row: a wgmma accumulator (flat [32], the C
 * layout of 8 n-tiles: element 4n+c) holds for row g (half 0) or g+8 (half 1) the columns
 * d = 8n+2t+e; each below hd is passed as put(d, index into the accumulator). The index,
 * not the value, so one walk serves dk and dv together (attention_tc.cu's for_row_columns
 * is the same walk over its [ND][4] accumulators). */
template <class Put>
__device__ __forceinline__ void for_acc_row_columns(int half, int lane, int hd, Put put) {
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int d = 8 * n + 2 * (lane % 4) + e;
            if (d < hd) put(d, 4 * n + 2 * half + e);
        }
}
#endif

__global__ void __launch_bounds__(WG_THREADS, 2)
attention_forward_wgmma_kernel(float *out, float *lse, const float *q, const __nv_bfloat16 *k,
                               const __nv_bfloat16 *v, int T, int Tp, int H, int Hkv, int hd, int window,
                               float scale) {
#ifdef WGMMA_BUILT
    extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
    /* the swizzle repeats every 1024 bytes from a 1024-byte boundary */
    unsigned char *wg_smem = swizzle_aligned(wg_smem_raw);
    unsigned char *q_tile = wg_smem;                          /* 128 rows: two 64-row tiles */
    unsigned char *kv_tiles = wg_smem + 2 * WG_TILE_BYTES;    /* [2 buffers][K, V] */
    const int tiles = (T + WG_ROWS - 1) / WG_ROWS;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, grp = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * WG_ROWS;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4;
    const int row0 = 64 * wg + 16 * warp;   /* this warp's 16 rows in the block */
    const float scale_log2 = scale * ATTN_LOG2E;
    const __nv_bfloat16 *k_head = k + ((size_t)b * Hkv + grp) * Tp * WG_HD;
    const __nv_bfloat16 *v_head = v + ((size_t)b * Hkv + grp) * Tp * WG_HD;
    const int t_last = min(T - 1, t0 + WG_ROWS - 1), j_first = first_visible_key(t0, window) / WG_KEYS * WG_KEYS;

    /* Q straight from the float32 input, rounded here: each block reads its rows once, so a
     * staged copy would only add a pass over Q (~26 µs at jamba-small's shape) */
#pragma unroll
    for (int k = 0; k < WG_ROWS * 8 / WG_THREADS; k++) {
        const int i = k * WG_THREADS + threadIdx.x, r = i >> 3, c = i & 7, t = t0 + r, d = 8 * c;
        float x[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (t < T) {
            const float *src = q + token_row(b, t, H, h, T) * hd + d;
            if (hd % 4 == 0) {   /* rows start 16-byte aligned; hd a multiple of 4 */
                if (d < hd) *reinterpret_cast<float4 *>(x) = *reinterpret_cast<const float4 *>(src);
                if (d + 4 < hd) *reinterpret_cast<float4 *>(x + 4) = *reinterpret_cast<const float4 *>(src + 4);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) x[e] = d + e < hd ? src[e] : 0.0f;
            }
        }
        *reinterpret_cast<uint4 *>(q_tile + tile_piece(r, c)) =
            make_uint4(pack_bf16(x[0], x[1]), pack_bf16(x[2], x[3]), pack_bf16(x[4], x[5]), pack_bf16(x[6], x[7]));
    }
    auto stage = [&](int buffer, int j) {
        copy_tile_async<WG_KEYS>(kv_tiles + buffer * 2 * WG_TILE_BYTES, k_head + (size_t)j * WG_HD);
        copy_tile_async<WG_KEYS>(kv_tiles + (buffer * 2 + 1) * WG_TILE_BYTES, v_head + (size_t)j * WG_HD);
    };
    stage(0, j_first);
    cp_async_commit();

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[32], s[32];
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0.0f;
    const unsigned char *q_rows = q_tile + wg * WG_TILE_BYTES;
    int buffer = 0;
    for (int j0 = j_first; j0 <= t_last; j0 += WG_KEYS) {
        __syncthreads();   /* every warpgroup is done with the buffer about to be refilled */
        if (j0 + WG_KEYS <= t_last) stage(buffer ^ 1, j0 + WG_KEYS);
        cp_async_commit();
        cp_async_wait<1>();
        /* the tensor cores read shared memory through the async proxy: make this thread's
         * landed copies visible to it, then to everyone */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const unsigned char *k_rows = kv_tiles + buffer * 2 * WG_TILE_BYTES, *v_rows = k_rows + WG_TILE_BYTES;
        buffer ^= 1;

        if (j0 > t0 + 64 * wg + 63) continue;   /* past this warpgroup's rows: nothing visible (it still
                                                  * meets the barriers at the loop's top) */
        wgmma_run([&] { rows_times_rows(s, q_rows, k_rows); }, s);
        float (&sc)[8][4] = *reinterpret_cast<float (*)[8][4]>(s);   /* n-tile j: columns 8j.. */
        if (!tile_all_visible(t0 + 64 * wg, 64, j0, WG_KEYS, T, window))   /* invisible pairs: −∞ */
            mask_scores<8>(sc, lane, [&](int r, int c) { return visible(t0 + row0 + r, j0 + c, T, window); });
#pragma unroll
        for (int half = 0; half < 2; half++) {   /* rows g (c0, c1) and g+8 (c2, c3) */
            float row_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < 8; n++) row_max = fmaxf(row_max, fmaxf(sc[n][2 * half], sc[n][2 * half + 1]));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[half], row_max * scale_log2);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;   /* no key visible yet: keep 0 sums */
            const float corr = ex2(m[half] - m_use);
            float row_sum = 0.0f;
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = sc[n][2 * half + e];
                    x = ex2(fmaf(x, scale_log2, -m_use));
                    row_sum += x;
                }
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
            l[half] = l[half] * corr + row_sum;
            m[half] = m_new;
#pragma unroll
            for (int n = 0; n < 8; n++) o[4 * n + 2 * half] *= corr, o[4 * n + 2 * half + 1] *= corr;
        }
        uint32_t p[4][4];   /* keys 16kk..16kk+15: n-tiles 2kk, 2kk+1 packed */
        pack_a(p, sc);
        wgmma_run([&] { scores_times_cols(o, p, v_rows); }, o);
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int tr = t0 + row0 + g + 8 * half;
        if (tr >= T) continue;
        if (lane % 4 == 0) lse[((size_t)b * H + h) * T + tr] = (m[half] + log2f(l[half])) * ATTN_LN2;
        float *out_row = out + token_row(b, tr, H, h, T) * hd;
        const float inv_l = 1.0f / l[half];
        for_acc_row_columns(half, lane, hd, [&](int d, int i) { out_row[d] = o[i] * inv_l; });
    }
#endif
}

/* Built for sm_90a, on a device of compute capability 9.0 (which runs that machine code),
 * and not switched off with BRAID_ATTENTION_WGMMA=0 (for comparisons). */
static bool wgmma_usable() {
    static int hopper = -1;
    if (hopper < 0) {
        int dev = 0, major = 0, minor = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
        hopper = major == 9 && minor == 0;
    }
    /* read at every call (a few a step), so a test can run both kernel families in one process */
    const char *env = getenv("BRAID_ATTENTION_WGMMA");
    return BRAID_HAVE_WGMMA && hopper && !(env && !strcmp(env, "0"));
}

int attention_forward_wgmma(float *out, float *lse, const float *q, const void *k_copy,
                            const void *v_copy, int B, int T, int Tp, int H, int Hkv, int hd, int window,
                            cudaStream_t stream) {
    if (!wgmma_usable() || hd > WG_HD || hd <= 32) return -1;
    const size_t bytes = 6 * WG_TILE_BYTES + 1024;   /* Q (2 tiles), 2 buffers of K and V; alignment */
    CUDA_CHECK(cudaFuncSetAttribute((const void *)attention_forward_wgmma_kernel,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    const dim3 grid((unsigned)((T + WG_ROWS - 1) / WG_ROWS * H * B));   /* ranked_block's order */
    const __nv_bfloat16 *k = (const __nv_bfloat16 *)k_copy, *v = (const __nv_bfloat16 *)v_copy;
    attention_forward_wgmma_kernel<<<grid, WG_THREADS, bytes, stream>>>(out, lse, q, k, v, T, Tp, H, Hkv, hd, window,
                                                                        1.0f / sqrtf((float)hd));
    CUDA_CHECK_LAUNCH();
    return 0;
}

/* ------------------------------------------------------------------ backward
 * The two kernels of attention_tc.cu's backward (same split, same math: no atomics, the
 * same bits each run), each one warpgroup of 64 rows with every product a wgmma:
 *   dk/dv: a block per (64 keys, kv head, batch), over the group's heads and the query
 *          tiles that see its keys. Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (A and B from shared
 *          memory), Pᵀ and dSᵀ on the accumulators, then dv += Pᵀ·dO and dk += dSᵀ·Q with
 *          A from registers and the dO and Q tiles read N-major.
 *   dq:    a block per (64 query rows, head, batch), over the key tiles they see. S = Q·Kᵀ,
 *          dP = dO·Vᵀ, dS, then dq += dS·K with the K tile read N-major.
 * Inputs are attention_tc.cu's copies (Q, K, V, dO as [B][heads][Tp][64] bf16, lse in base
 * 2 and D as [B·H][Tp] float). */
#define WB_THREADS 128   /* one warpgroup */

__global__ void __launch_bounds__(WB_THREADS, 2)
attention_backward_dkdv_wgmma_kernel(float *dk, float *dv, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                                     const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse2,
                                     const float *D, int T, int Tp, int H, int Hkv, int hd, int window,
                                     float scale) {
#ifdef WGMMA_BUILT
    extern __shared__ __align__(1024) unsigned char wb_smem_raw[];
    unsigned char *base = swizzle_aligned(wb_smem_raw);
    unsigned char *k_tile = base, *v_tile = base + WG_TILE_BYTES;
    unsigned char *qd_tiles = base + 2 * WG_TILE_BYTES;                   /* [2 buffers][Q, dO] */
    float *stats = reinterpret_cast<float *>(base + 6 * WG_TILE_BYTES);   /* [2 buffers][lse2, D][64] */
    const RankedBlock rb = ranked_block(Hkv, (T + 63) / 64);   /* the first keys (the longest blocks) first */
    const int b = rb.b, grp = rb.head, j0 = rb.rank * 64, group = H / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    const int row0 = 16 * warp;
    const float scale_log2 = scale * ATTN_LOG2E;
    auto stage = [&](int st, int h, int t0) {
        const size_t at = ((size_t)b * H + h) * Tp + t0;
        copy_tile_async<64, WB_THREADS>(qd_tiles + st * 2 * WG_TILE_BYTES, q + at * WG_HD);
        copy_tile_async<64, WB_THREADS>(qd_tiles + (st * 2 + 1) * WG_TILE_BYTES, dout + at * WG_HD);
        if (threadIdx.x < 32) {   /* 64 lse2 and 64 D: 16-byte pieces */
            const int which = threadIdx.x / 16, i = threadIdx.x % 16;
            cp_async16(stats + (st * 2 + which) * 64 + 4 * i, (which ? D : lse2) + at + 4 * i);
        }
    };
    const int j_last = min(T - 1, j0 + 63);
    const int t_end = window > 0 ? min(T - 1, j_last + window - 1) : T - 1;
    const int h_end = (grp + 1) * group;
    const size_t kv_at = (((size_t)b * Hkv + grp) * Tp + j0) * WG_HD;
    copy_tile_async<64, WB_THREADS>(k_tile, k + kv_at);
    copy_tile_async<64, WB_THREADS>(v_tile, v + kv_at);
    stage(0, grp * group, j0);
    cp_async_commit();
    float dk_acc[32], dv_acc[32], s[32], dp[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dk_acc[i] = dv_acc[i] = 0.0f;

    int st = 0;
    for (int h = grp * group, t0 = j0; h < h_end;) {
        const int h_next = t0 + 64 <= t_end ? h : h + 1, t0_next = t0 + 64 <= t_end ? t0 + 64 : j0;
        __syncthreads();   /* every warp is done with the buffer about to be refilled */
        if (h_next < h_end) stage(st ^ 1, h_next, t0_next);
        cp_async_commit();
        cp_async_wait<1>();
        fence_async_smem();
        __syncthreads();
        const unsigned char *q_tile = qd_tiles + st * 2 * WG_TILE_BYTES, *do_tile = q_tile + WG_TILE_BYTES;
        const float *lse_s = stats + st * 2 * 64, *D_s = lse_s + 64;
        st ^= 1;

        wgmma_run([&] {
            rows_times_rows(s, k_tile, q_tile);     /* Sᵀ  [keys × queries] */
            rows_times_rows(dp, v_tile, do_tile);   /* dPᵀ */
        }, s, dp);
        float (&sc)[8][4] = *reinterpret_cast<float (*)[8][4]>(s);    /* Sᵀ: keys as rows, queries as columns */
        float (&dpc)[8][4] = *reinterpret_cast<float (*)[8][4]>(dp);
        if (!tile_all_visible(t0, 64, j0, 64, T, window))
            mask_scores<8>(sc, lane, [&](int r, int c) { return visible(t0 + c, j0 + row0 + r, T, window); });
        transposed_probs_and_dscores<8>(sc, dpc, lse_s, D_s, scale_log2, lane);
        uint32_t pa[4][4], da[4][4];
        pack_a(pa, sc);
        pack_a(da, dpc);
        wgmma_run([&] {
            scores_times_cols(dv_acc, pa, do_tile);
            scores_times_cols(dk_acc, da, q_tile);
        }, dk_acc, dv_acc);
        h = h_next;
        t0 = t0_next;
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int key = j0 + row0 + g + 8 * half;
        if (key >= T) continue;
        const size_t row = token_row(b, key, Hkv, grp, T) * hd;
        for_acc_row_columns(half, lane, hd, [&](int d, int i) {
            if (dk) dk[row + d] += scale * dk_acc[i];
            if (dv) dv[row + d] += dv_acc[i];
        });
    }
#endif
}

__global__ void __launch_bounds__(WB_THREADS, 2)
attention_backward_dq_wgmma_kernel(float *dq, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                                   const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse2,
                                   const float *D, int T, int Tp, int H, int Hkv, int hd, int window,
                                   float scale) {
#ifdef WGMMA_BUILT
    extern __shared__ __align__(1024) unsigned char wb_smem_raw[];
    unsigned char *base = swizzle_aligned(wb_smem_raw);
    unsigned char *q_tile = base, *do_tile = base + WG_TILE_BYTES;
    unsigned char *kv_tiles = base + 2 * WG_TILE_BYTES;   /* [2 buffers][K, V] */
    const int tiles = (T + 63) / 64;
    const RankedBlock rb = ranked_block(H, tiles);   /* the latest rows (the longest blocks) first */
    const int b = rb.b, h = rb.head, grp = h / (H / Hkv), t0 = (tiles - 1 - rb.rank) * 64;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    const int row0 = 16 * warp;
    const float scale_log2 = scale * ATTN_LOG2E;
    const size_t bh = (size_t)b * H + h;
    const __nv_bfloat16 *k_head = k + ((size_t)b * Hkv + grp) * Tp * WG_HD;
    const __nv_bfloat16 *v_head = v + ((size_t)b * Hkv + grp) * Tp * WG_HD;
    const int t_last = min(T - 1, t0 + 63), j_first = first_visible_key(t0, window) / 64 * 64;
    copy_tile_async<64, WB_THREADS>(q_tile, q + (bh * Tp + t0) * WG_HD);
    copy_tile_async<64, WB_THREADS>(do_tile, dout + (bh * Tp + t0) * WG_HD);
    auto stage = [&](int buffer, int j) {
        copy_tile_async<64, WB_THREADS>(kv_tiles + buffer * 2 * WG_TILE_BYTES, k_head + (size_t)j * WG_HD);
        copy_tile_async<64, WB_THREADS>(kv_tiles + (buffer * 2 + 1) * WG_TILE_BYTES, v_head + (size_t)j * WG_HD);
    };
    stage(0, j_first);
    cp_async_commit();
    float lse_r[2], D_r[2], dq_acc[32], s[32], dp[32];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const size_t row = bh * Tp + t0 + row0 + g + 8 * half;   /* < Tp */
        lse_r[half] = lse2[row];
        D_r[half] = D[row];
    }
#pragma unroll
    for (int i = 0; i < 32; i++) dq_acc[i] = 0.0f;

    int buffer = 0;
    for (int j0 = j_first; j0 <= t_last; j0 += 64) {
        __syncthreads();
        if (j0 + 64 <= t_last) stage(buffer ^ 1, j0 + 64);
        cp_async_commit();
        cp_async_wait<1>();
        fence_async_smem();
        __syncthreads();
        const unsigned char *k_tile = kv_tiles + buffer * 2 * WG_TILE_BYTES, *v_tile = k_tile + WG_TILE_BYTES;
        buffer ^= 1;

        wgmma_run([&] {
            rows_times_rows(s, q_tile, k_tile);
            rows_times_rows(dp, do_tile, v_tile);
        }, s, dp);
        float (&sc)[8][4] = *reinterpret_cast<float (*)[8][4]>(s);
        float (&dpc)[8][4] = *reinterpret_cast<float (*)[8][4]>(dp);
        if (!tile_all_visible(t0, 64, j0, 64, T, window))
            mask_scores<8>(sc, lane, [&](int r, int c) { return visible(t0 + row0 + r, j0 + c, T, window); });
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const float p = ex2(fmaf(sc[n][c], scale_log2, -lse_r[c / 2]));
                dpc[n][c] = p * (dpc[n][c] - D_r[c / 2]);   /* dS */
            }
        uint32_t da[4][4];
        pack_a(da, dpc);
        wgmma_run([&] { scores_times_cols(dq_acc, da, k_tile); }, dq_acc);
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int tr = t0 + row0 + g + 8 * half;
        if (tr >= T) continue;
        float *dq_row = dq + token_row(b, tr, H, h, T) * hd;
        for_acc_row_columns(half, lane, hd, [&](int d, int i) { dq_row[d] += scale * dq_acc[i]; });
    }
#endif
}

int attention_backward_wgmma(float *dq, float *dk, float *dv, const void *dout_copy, const void *q_copy,
                             const void *k_copy, const void *v_copy, const float *lse2, const float *D, int B, int T,
                             int Tp, int H, int Hkv, int hd, int window, float scale, cudaStream_t stream) {
    if (!wgmma_usable() || hd > WG_HD || hd <= 32) return -1;
    const __nv_bfloat16 *dc = (const __nv_bfloat16 *)dout_copy, *qc = (const __nv_bfloat16 *)q_copy,
                        *kc = (const __nv_bfloat16 *)k_copy, *vc = (const __nv_bfloat16 *)v_copy;
    const int tiles = (T + 63) / 64;
    if (dq) {
        const size_t bytes = 6 * WG_TILE_BYTES + 1024;   /* Q, dO, 2 buffers of K and V; alignment */
        CUDA_CHECK(cudaFuncSetAttribute((const void *)attention_backward_dq_wgmma_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        attention_backward_dq_wgmma_kernel<<<(unsigned)(tiles * H * B), WB_THREADS, bytes, stream>>>(
            dq, dc, qc, kc, vc, lse2, D, T, Tp, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        const size_t bytes = 6 * WG_TILE_BYTES + 4 * 64 * sizeof(float) + 1024;   /* K, V, 2 buffers of Q and dO, stats */
        CUDA_CHECK(cudaFuncSetAttribute((const void *)attention_backward_dkdv_wgmma_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        attention_backward_dkdv_wgmma_kernel<<<(unsigned)(tiles * Hkv * B), WB_THREADS, bytes, stream>>>(
            dk, dv, dc, qc, kc, vc, lse2, D, T, Tp, H, Hkv, hd, window, scale);
        CUDA_CHECK_LAUNCH();
    }
    return 0;
}
