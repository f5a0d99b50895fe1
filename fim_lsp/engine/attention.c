/* Attention of new tokens over a KV cache in fp16 or fp32, for x86-64 CPUs with AVX2, FMA and
 * F16C (built by native.py; attention.py falls back to torch where this cannot run).
 *
 * Why not torch: a decode step reads the whole KV cache once per layer, so attention is memory
 * bound, and torch on a CPU without AVX-512 has no fast fp16 matmul (about 1 GB/s here). Storing
 * the cache in fp16 halves the bytes read; this kernel converts them in registers as it reads.
 * A prefill chunk is compute bound instead: there a task takes a block of up to QUERY_BLOCK new
 * tokens over a head's keys and values, and each key or value it converts serves several
 * tokens in registers; no fp32 copy of the cache is made, and only the block's rows of scores
 * are kept. A layer runs its tasks inside layer.c's team of threads (fim_attend_task).
 *
 * A token's arithmetic is the same in any block, in the same order (each score one chain of
 * products over the head's dims, the softmax over its row, the weighted values summed in key
 * order), so a chunk gives each token what it gets alone, bit for bit.
 *
 * On a CPU with AVX-512 (gemm.c's ISA: VNNI or AMX) a prefill's blocks of the usual head (128
 * dims, fp16 cache) run on 512-bit registers, twice the work per instruction, each lane doing
 * what a 256-bit one does: a score register holds two keys' eight lanes, a value register
 * sixteen dims. Same chains, same order: the same bits as AVX2's code, which decode steps run.
 *
 * Layouts: kernels.h's Attention. dim must be a multiple of 8 and at most MAX_DIM.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#include "shares.h"
#include "simd.h"

#define SCORE_QUERIES 2 /* score tiles: 2 tokens x 4 keys, their 8 sums, 4 keys and a query in
                          * registers (3 tokens needed 17 of AVX2's 16) */
#define SCORE_KEYS 4
#define VALUE_QUERIES 4 /* value tiles of a block: 4 tokens x 16 dims */
#define VALUE_BLOCKS 2

/* Eight keys' or values' elements from `rows` at element `at`, as fp32. */
INLINE __m256 load8(const void *rows, long at, const int half) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)rows + at)));
    return _mm256_loadu_ps((const float *)rows + at);
}

INLINE float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* Four dot products' lanes summed, each as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)):
 * [a, b, c, d]. A score's sum is the same whichever three others share its call. */
INLINE __m128 sum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
}

/* Scores of Q tokens (queries qs [Q][dim], scaled) with keys t .. t + K - 1 into scores
 * [Q][stride]: each key converted once for the Q tokens. */
INLINE void score_tile(const int Q, const int K, const float *qs, const void *keys, int t,
                       const int dim, const int half, float *scores, int stride) {
    __m256 acc[SCORE_QUERIES][SCORE_KEYS];
    for (int i = 0; i < Q; i++)
        for (int j = 0; j < K; j++) acc[i][j] = _mm256_setzero_ps();
    const long bytes = (long)dim * (half ? 2 : 4);
    if (Q == 1) /* a decode step streams the keys from memory once */
        for (long at = 0; at < K * bytes; at += 64)
            _mm_prefetch((const char *)keys + t * bytes + PREFETCH + at, _MM_HINT_T0);
    for (int b = 0; b < dim / 8; b++) {
        __m256 k[SCORE_KEYS];
        for (int j = 0; j < K; j++) k[j] = load8(keys, (long)(t + j) * dim + 8 * b, half);
        for (int i = 0; i < Q; i++) {
            const __m256 q = _mm256_loadu_ps(qs + i * dim + 8 * b);
            for (int j = 0; j < K; j++) acc[i][j] = _mm256_fmadd_ps(q, k[j], acc[i][j]);
        }
    }
    for (int i = 0; i < Q; i++) {
        float *row = scores + i * stride + t;
        if (K == 4) {
            _mm_storeu_ps(row, sum4x8(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        } else if (K == 2) {
            const __m128 two = sum4x8(acc[i][0], acc[i][1], acc[i][0], acc[i][1]);
            row[0] = _mm_cvtss_f32(two), row[1] = _mm_cvtss_f32(_mm_shuffle_ps(two, two, 1));
        } else {
            row[0] = _mm_cvtss_f32(sum4x8(acc[i][0], acc[i][0], acc[i][0], acc[i][0]));
        }
    }
}

/* Scores of Q tokens with keys 0 .. until - 1. A lone token (a decode step, memory bound) reads
 * its keys two rows at a time: the four-key tiles' interleaved reads of four rows were 5-10%
 * slower there. */
INLINE void score_rows(const int Q, const float *qs, const void *keys, int until, const int dim,
                       const int half, float *scores, int stride) {
    int t = 0;
    if (Q == 1)
        for (; t + 2 <= until; t += 2) score_tile(1, 2, qs, keys, t, dim, half, scores, stride);
    for (; t + SCORE_KEYS <= until; t += SCORE_KEYS)
        score_tile(Q, SCORE_KEYS, qs, keys, t, dim, half, scores, stride);
    for (; t < until; t++) score_tile(Q, 1, qs, keys, t, dim, half, scores, stride);
}

/* A row of `seen` scores into e^(score - top), 8 at a time (a scalar expf per score took a third
 * of a decode step's attention); returns their sum. The top is exact however it is found. */
static float softmax_row(float *scores, int seen) {
    __m256 top8 = _mm256_set1_ps(-INFINITY);
    int t = 0;
    for (; t + 8 <= seen; t += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(scores + t));
    float tops[8], top = -INFINITY;
    _mm256_storeu_ps(tops, top8);
    for (int j = 0; j < 8; j++) top = tops[j] > top ? tops[j] : top;
    for (; t < seen; t++) top = scores[t] > top ? scores[t] : top;
    __m256 sums = _mm256_setzero_ps();
    top8 = _mm256_set1_ps(top);
    for (t = 0; t + 8 <= seen; t += 8) {
        const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + t), top8));
        _mm256_storeu_ps(scores + t, e);
        sums = _mm256_add_ps(sums, e);
    }
    float total = sum8(sums);
    for (; t < seen; t++) total += scores[t] = expf(scores[t] - top);
    return total;
}

/* Outputs of Q tokens over dims 8 b0 .. 8 (b0 + D) - 1: the values weighted by their row of
 * `weights` ([Q][stride]), summed in key order, over the keys each sees (token i: seen + i),
 * divided by its total. Each value converted once for the Q tokens. */
INLINE void value_tile(const int Q, const int D, const float *weights, int stride,
                       const float *totals, const void *values, int seen, int b0, const int dim,
                       const int half, float *out, long out_stride) {
    __m256 acc[VALUE_QUERIES][MAX_DIM / 8];
    for (int i = 0; i < Q; i++)
        for (int d = 0; d < D; d++) acc[i][d] = _mm256_setzero_ps();
    const long bytes = (long)dim * (half ? 2 : 4);
    for (int t = 0; t < seen; t++) { /* keys every token of the tile sees */
        if (D * 8 == dim) /* whole rows: one sequential stream, as a decode step reads it */
            for (long at = 0; at < bytes; at += 64)
                _mm_prefetch((const char *)values + t * bytes + PREFETCH + at, _MM_HINT_T0);
        if (Q == 1) { /* each value used as it is converted: 16 of them would not stay in registers */
            const __m256 w = _mm256_set1_ps(weights[t]);
            for (int d = 0; d < D; d++)
                acc[0][d] = _mm256_fmadd_ps(w, load8(values, (long)t * dim + 8 * (b0 + d), half), acc[0][d]);
            continue;
        }
        __m256 v[MAX_DIM / 8];
        for (int d = 0; d < D; d++) v[d] = load8(values, (long)t * dim + 8 * (b0 + d), half);
        for (int i = 0; i < Q; i++) {
            const __m256 w = _mm256_set1_ps(weights[i * stride + t]);
            for (int d = 0; d < D; d++) acc[i][d] = _mm256_fmadd_ps(w, v[d], acc[i][d]);
        }
    }
    for (int t = seen; t < seen + Q - 1; t++) { /* the keys only the later tokens see */
        __m256 v[MAX_DIM / 8];
        for (int d = 0; d < D; d++) v[d] = load8(values, (long)t * dim + 8 * (b0 + d), half);
        for (int i = 0; i < Q; i++) {
            if (t < seen + i) {
                const __m256 w = _mm256_set1_ps(weights[i * stride + t]);
                for (int d = 0; d < D; d++) acc[i][d] = _mm256_fmadd_ps(w, v[d], acc[i][d]);
            }
        }
    }
    for (int i = 0; i < Q; i++) {
        const __m256 inverse = _mm256_set1_ps(1.f / totals[i]);
        for (int d = 0; d < D; d++)
            _mm256_storeu_ps(out + i * out_stride + 8 * (b0 + d), _mm256_mul_ps(acc[i][d], inverse));
    }
}

/* Q tokens' outputs over all dims, VALUE_BLOCKS blocks of 8 at a time. */
INLINE void value_rows(const int Q, const float *weights, int stride, const float *totals,
                       const void *values, int seen, const int dim, const int half, float *out,
                       long out_stride) {
    int b0 = 0;
    for (; b0 + VALUE_BLOCKS <= dim / 8; b0 += VALUE_BLOCKS)
        value_tile(Q, VALUE_BLOCKS, weights, stride, totals, values, seen, b0, dim, half, out, out_stride);
    for (; b0 < dim / 8; b0++)
        value_tile(Q, 1, weights, stride, totals, values, seen, b0, dim, half, out, out_stride);
}

#define WIDE __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))
#define WIDE_QUERIES 8 /* AVX-512 tiles: 8 tokens by 4 keys (16 sums, 2 pairs of keys, a query:
                        * 19 of the 32 registers), or by 32 dims of values: each key or value
                        * read serves 8 tokens, as the cache's 2 MB do not fit in L1 */
#define WIDE_KEYS 4
#define WIDE_DIMS 32
#define KEY_BLOCK 32 /* keys at a time for all of a block's tokens: 16 KB in fp32 */

/* Scores of Q tokens (up to 8) with keys t .. t + 3 of 128 dims, from `pairs` (fp32, converted
 * once per block: pairs_of_keys): a register holds 8 dims of two keys, each half summed as
 * score_tile sums a key's 8 lanes. */
WIDE INLINE void score_tile_wide(const int Q, const float *qs, const float *pairs, int t,
                                 float *scores, int stride) {
    __m512 acc[WIDE_QUERIES][WIDE_KEYS / 2];
    for (int i = 0; i < Q; i++)
        for (int j = 0; j < WIDE_KEYS / 2; j++) acc[i][j] = _mm512_setzero_ps();
    const float *tile = pairs + (long)t / 2 * 128 * 2;
    for (int b = 0; b < 128 / 8; b++) {
        __m512 k[WIDE_KEYS / 2];
        for (int j = 0; j < WIDE_KEYS / 2; j++) k[j] = _mm512_loadu_ps(tile + (j * 16 + b) * 16);
        for (int i = 0; i < Q; i++) {
            const __m512 q = _mm512_broadcast_f32x8(_mm256_loadu_ps(qs + i * 128 + 8 * b));
            for (int j = 0; j < WIDE_KEYS / 2; j++) acc[i][j] = _mm512_fmadd_ps(q, k[j], acc[i][j]);
        }
    }
    for (int i = 0; i < Q; i++)
        _mm_storeu_ps(scores + i * stride + t,
                      sum4x8(_mm512_castps512_ps256(acc[i][0]), _mm512_extractf32x8_ps(acc[i][0], 1),
                             _mm512_castps512_ps256(acc[i][1]), _mm512_extractf32x8_ps(acc[i][1], 1)));
}

/* Scores of Q tokens with keys t0 .. t1 - 1 (t1 - t0 a multiple of 4), 4 keys at a time. */
WIDE INLINE void score_keys_wide(const int Q, const float *qs, const float *pairs, int t0,
                                 int t1, float *scores, int stride) {
    for (int t = t0; t < t1; t += WIDE_KEYS) score_tile_wide(Q, qs, pairs, t, scores, stride);
}

/* Keys 0 .. count - 1 (count even) of 128 dims in fp32 as score_tile_wide reads them: per pair
 * of keys, per 8 dims, the first key's 8 then the second's. Each key is converted once for the
 * block's tokens, not once per 4 of them: the conversions had half of AVX-512's two ports. */
WIDE static void pairs_of_keys(const uint16_t *keys, int count, float *pairs) {
    for (int p = 0; p < count / 2; p++)
        for (int b = 0; b < 128 / 8; b++) {
            const uint16_t *first = keys + (long)2 * p * 128 + 8 * b;
            const __m256i two = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)first)),
                _mm_loadu_si128((const __m128i *)(first + 128)), 1);
            _mm512_storeu_ps(pairs + ((long)p * 16 + b) * 16, _mm512_cvtph_ps(two));
        }
}

/* Outputs of Q tokens (up to 8) over dims d0 .. d0 + 31 of 128, as value_tile computes them
 * (the same chain per lane), 16 dims a register. */
WIDE INLINE void value_tile_wide(const int Q, const float *weights, int stride,
                                 const float *totals, const uint16_t *values, int seen, int d0,
                                 float *out, long out_stride) {
    __m512 acc[WIDE_QUERIES][WIDE_DIMS / 16];
    for (int i = 0; i < Q; i++)
        for (int d = 0; d < WIDE_DIMS / 16; d++) acc[i][d] = _mm512_setzero_ps();
    for (int t = 0; t < seen + Q - 1; t++) {
        __m512 v[WIDE_DIMS / 16];
        for (int d = 0; d < WIDE_DIMS / 16; d++)
            v[d] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(values + (long)t * 128 + d0 + 16 * d)));
        for (int i = 0; i < Q; i++) {
            if (t >= seen + i) continue; /* keys only the later tokens see */
            const __m512 w = _mm512_set1_ps(weights[i * stride + t]);
            for (int d = 0; d < WIDE_DIMS / 16; d++) acc[i][d] = _mm512_fmadd_ps(w, v[d], acc[i][d]);
        }
    }
    for (int i = 0; i < Q; i++) {
        const __m512 inverse = _mm512_set1_ps(1.f / totals[i]);
        for (int d = 0; d < WIDE_DIMS / 16; d++)
            _mm512_storeu_ps(out + i * out_stride + d0 + 16 * d, _mm512_mul_ps(acc[i][d], inverse));
    }
}

/* A block of new tokens over one head (128 dims, fp16) on AVX-512: attend_block's steps. */
WIDE static void attend_block_wide(const Attention *job, int head, int first, int count,
                                   float *scratch) {
    const long offset = head * job->head_stride;
    const uint16_t *keys = (const uint16_t *)job->keys + offset;
    const uint16_t *values = (const uint16_t *)job->values + offset;
    const int seen = job->past + first + 1, stride = seen + count - 1;
    float *qs = scratch, *scores = scratch + count * 128, totals[QUERY_BLOCK];
    float *pairs = scores + (long)count * stride;
    pairs_of_keys(keys, stride / WIDE_KEYS * WIDE_KEYS, pairs);
    const float *query = job->query + ((long)head * job->new_tokens + first) * 128;
    const __m256 scale = _mm256_set1_ps(job->scale);
    for (int at = 0; at < count * 128; at += 8)
        _mm256_storeu_ps(qs + at, _mm256_mul_ps(_mm256_loadu_ps(query + at), scale));
    /* KEY_BLOCK keys at a time for all the block's tokens: their 16 KB stay in L1, where each
     * 8 tokens reading every key from L2 were bound by its bandwidth. */
    for (int t0 = 0; t0 < stride; t0 += KEY_BLOCK)
        for (int i = 0; i < count; i += WIDE_QUERIES) {
            const int q = count - i < WIDE_QUERIES ? count - i : WIDE_QUERIES;
            const int until = (seen + i + q - 1) / WIDE_KEYS * WIDE_KEYS; /* in whole tiles */
            const int t1 = until < t0 + KEY_BLOCK ? until : t0 + KEY_BLOCK;
            float *rows = scores + i * stride;
            switch (q) {
                case 8: score_keys_wide(8, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 7: score_keys_wide(7, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 6: score_keys_wide(6, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 5: score_keys_wide(5, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 4: score_keys_wide(4, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 3: score_keys_wide(3, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 2: score_keys_wide(2, qs + i * 128, pairs, t0, t1, rows, stride); break;
                case 1: score_keys_wide(1, qs + i * 128, pairs, t0, t1, rows, stride); break;
            }
        }
    for (int g = 0; g < count; g += WIDE_QUERIES) { /* the keys past whole tiles, one by one */
        const int q = count - g < WIDE_QUERIES ? count - g : WIDE_QUERIES, until = seen + g + q - 1;
        for (int i = g; i < g + q; i++)
            for (int u = until / WIDE_KEYS * WIDE_KEYS; u < until; u++)
                score_tile(1, 1, qs + i * 128, keys, u, 128, 1, scores + i * stride, stride);
    }
    for (int i = 0; i < count; i++) totals[i] = softmax_row(scores + i * stride, seen + i);
    float *out = job->out + ((long)first * job->heads + head) * 128;
    const long out_stride = (long)job->heads * 128;
    for (int i = 0; i < count; i += WIDE_QUERIES) {
        const int q = count - i < WIDE_QUERIES ? count - i : WIDE_QUERIES;
        for (int d0 = 0; d0 < 128; d0 += WIDE_DIMS) {
            float *w = scores + i * stride, *o = out + i * out_stride;
            switch (q) {
                case 8: value_tile_wide(8, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 7: value_tile_wide(7, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 6: value_tile_wide(6, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 5: value_tile_wide(5, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 4: value_tile_wide(4, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 3: value_tile_wide(3, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 2: value_tile_wide(2, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
                case 1: value_tile_wide(1, w, stride, totals + i, values, seen + i, d0, o, out_stride); break;
            }
        }
    }
}

/* New tokens first .. first + count - 1 over head `head`. scratch: count * (dim + past + first +
 * count) floats, for their scaled queries and their rows of scores. */
INLINE void attend_block(const Attention *job, int head, int first, int count, const int dim,
                         const int half, float *scratch) {
    const long offset = head * job->head_stride * (half ? 2 : 4); /* bytes */
    const void *keys = (const char *)job->keys + offset, *values = (const char *)job->values + offset;
    const int seen = job->past + first + 1; /* keys the block's first token sees; token i, seen + i */
    const int stride = seen + count - 1;    /* a row of scores: the keys the last token sees */
    float *qs = scratch, *scores = scratch + count * dim, totals[QUERY_BLOCK];
    const float *query = job->query + ((long)head * job->new_tokens + first) * dim;
    const __m256 scale = _mm256_set1_ps(job->scale);
    for (int at = 0; at < count * dim; at += 8)
        _mm256_storeu_ps(qs + at, _mm256_mul_ps(_mm256_loadu_ps(query + at), scale));
    int i = 0;
    for (; i + SCORE_QUERIES <= count; i += SCORE_QUERIES)
        score_rows(SCORE_QUERIES, qs + i * dim, keys, seen + i + SCORE_QUERIES - 1, dim, half,
                   scores + i * stride, stride);
    if (count - i == 1) score_rows(1, qs + i * dim, keys, seen + i, dim, half, scores + i * stride, stride);
    for (i = 0; i < count; i++) totals[i] = softmax_row(scores + i * stride, seen + i);
    float *out = job->out + ((long)first * job->heads + head) * dim;
    const long out_stride = (long)job->heads * dim;
    if (count == 1) { /* a decode step: each value row read once, whole */
        if (dim == 128) value_tile(1, 16, scores, stride, totals, values, seen, 0, 128, half, out, out_stride);
        else value_rows(1, scores, stride, totals, values, seen, dim, half, out, out_stride);
        return;
    }
    for (i = 0; i < count; i += VALUE_QUERIES) {
        float *w = scores + i * stride, *o = out + i * out_stride;
        switch (count - i < VALUE_QUERIES ? count - i : VALUE_QUERIES) {
            case 4: value_rows(4, w, stride, totals + i, values, seen + i, dim, half, o, out_stride); break;
            case 3: value_rows(3, w, stride, totals + i, values, seen + i, dim, half, o, out_stride); break;
            case 2: value_rows(2, w, stride, totals + i, values, seen + i, dim, half, o, out_stride); break;
            case 1: value_rows(1, w, stride, totals + i, values, seen + i, dim, half, o, out_stride); break;
        }
    }
}

long fim_attend_tasks(const Attention *job) {
    return (long)job->heads * ((job->new_tokens + QUERY_BLOCK - 1) / QUERY_BLOCK);
}

size_t fim_attend_scratch(const Attention *job) {
    const int block = job->new_tokens < QUERY_BLOCK ? job->new_tokens : QUERY_BLOCK;
    const size_t keys = (size_t)(job->past + job->new_tokens); /* at most, for a block */
    return (size_t)block * (job->dim + keys) + keys * job->dim; /* + attend_block_wide's keys */
}

/* The usual head size gets its own copies, with dim a constant the compiler unrolls. */
void fim_attend_task(const Attention *job, long task, float *scratch) {
    const int blocks = (job->new_tokens + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const int head = task / blocks, first = task % blocks * QUERY_BLOCK;
    const int count = job->new_tokens - first < QUERY_BLOCK ? job->new_tokens - first : QUERY_BLOCK;
    if (job->half && job->dim == 128 && count > 1 && fim_isa() >= FIM_ISA_AVX512_VNNI)
        attend_block_wide(job, head, first, count, scratch);
    else if (job->half && job->dim == 128) attend_block(job, head, first, count, 128, 1, scratch);
    else if (job->half) attend_block(job, head, first, count, job->dim, 1, scratch);
    else if (job->dim == 128) attend_block(job, head, first, count, 128, 0, scratch);
    else attend_block(job, head, first, count, job->dim, 0, scratch);
}

/* The tasks are shared out over OpenMP threads (shares.h). Loaded into a process that has torch,
 * this is torch's own OpenMP runtime (same soname), so these are torch's threads: threads of our
 * own would compete with torch's, which spin a while after each operator. */
int fim_attend(const Attention *job, int threads) {
    if (job->dim % 8 || job->dim > MAX_DIM || job->dim < 8 || job->heads < 1 ||
        job->new_tokens < 1 || job->past < 0 || threads < 1)
        return FIM_UNSUPPORTED;
    const long tasks = fim_attend_tasks(job);
    if (threads > tasks) threads = tasks;
    if (threads > MAX_TEAM) threads = MAX_TEAM;
    const size_t size = fim_attend_scratch(job);
    float *scratch = malloc(sizeof(float) * size * threads);
    if (!scratch) return FIM_NO_MEMORY;
    Share shares[MAX_TEAM];
    #pragma omp parallel num_threads(threads)
    {
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
        #pragma omp single
        share_out(shares, team, tasks);
        for (long task; (task = take(shares, team, me)) >= 0;)
            fim_attend_task(job, task, scratch + size * me);
    }
    free(scratch);
    return FIM_OK;
}

/* GPT-NeoX's rotary embedding on new tokens [first, end)'s queries and keys, then their keys
 * and values into the fp16 cache, for a layer (one call instead of some twenty torch operators).
 *   qkv [new][heads][3][dim] fp32: the fused projection's output
 *   run->cos, run->sin [new][rotary]: the model's tables at the tokens' positions (halves repeated)
 *   query [heads][new][dim] fp32 out, as the attention above reads it
 *   run->keys, run->values: Attention's layout; the new tokens go at past .. past + new - 1
 * The first `rotary` dims of each head turn; the rest pass. Computed as transformers computes
 * it (x * cos + rotate_half(x) * sin, rounded after each operation, fp16 rounded to nearest
 * even), so the cache holds the same values either way. */
__attribute__((optimize("fp-contract=off")))
int fim_rope_store(const LayerRun *run, const float *qkv, float *query, int first, int end) {
    const int heads = run->heads, dim = run->dim, rotary = run->rotary, half = rotary / 2;
    if (dim % 8 || dim > MAX_DIM || rotary % 2 || rotary > dim || run->past < 0 || first < 0 ||
        end > run->new_tokens)
        return FIM_UNSUPPORTED;
    float turned[MAX_DIM];
    for (int t = first; t < end; t++) {
        const float *c = run->cos + (long)t * rotary, *s = run->sin + (long)t * rotary;
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + ((long)t * heads + h) * 3 * dim, *k = q + dim, *v = k + dim;
            const long at = h * run->head_stride + (long)(run->past + t) * dim;
            float *q_out = query + ((long)h * run->new_tokens + t) * dim;
            for (int i = 0; i < dim; i++) q_out[i] = q[i];
            for (int i = 0; i < half; i++) {
                q_out[i] = q[i] * c[i] + -q[i + half] * s[i];
                q_out[i + half] = q[i + half] * c[i + half] + q[i] * s[i + half];
            }
            for (int i = 0; i < dim; i++) turned[i] = k[i];
            for (int i = 0; i < half; i++) {
                turned[i] = k[i] * c[i] + -k[i + half] * s[i];
                turned[i + half] = k[i + half] * c[i + half] + k[i] * s[i + half];
            }
            for (int i = 0; i < dim; i += 8) {
                _mm_storeu_si128((__m128i *)(run->keys + at + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(turned + i), _MM_FROUND_TO_NEAREST_INT));
                _mm_storeu_si128((__m128i *)(run->values + at + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT));
            }
        }
    }
    return FIM_OK;
}
