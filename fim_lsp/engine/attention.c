/* Attention of a few new tokens over a KV cache in fp16 or fp32, for x86-64 CPUs with AVX2,
 * FMA and F16C (built by attention.py, which falls back to torch where this cannot run).
 *
 * Why not torch: a decode step reads the whole KV cache once per layer, so attention is memory
 * bound, and torch on a CPU without AVX-512 has no fast fp16 matmul (about 1 GB/s here). Storing
 * the cache in fp16 halves the bytes read; this kernel converts them in registers as it reads.
 * A decode step runs it inside layer.c's team of threads (fim_attend_task_f16, fim_rope_store).
 *
 * Layouts (all contiguous along the last dimension):
 *   query [heads][new][dim] fp32, scaled here by `scale`
 *   keys, values: head h's token t at (h * head_stride + t * dim)
 *   out [new][heads][dim] fp32 (the layout transformers expects back)
 * New token i sits at position past + i and sees tokens 0 .. past + i (causal).
 * dim must be a multiple of 8 and at most MAX_DIM.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#include "shares.h"
#include "simd.h"

#define MAX_DIM 256
#define PREFETCH 1024 /* bytes ahead: 5-10% faster than the hardware prefetcher alone here */

static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* One (head, new token) pair: softmax(q . K^T) V over the tokens it sees, with `scores` as
 * scratch. The query is held in registers (dim / 8 of them), keys and values stream by once. */
#define ATTEND_ONE(NAME, TYPE, LOAD8)                                                         \
    static inline void NAME(const Attention *job, int head, int token, const int dim, float *scores) { \
        const TYPE *keys = (const TYPE *)job->keys + head * job->head_stride;                 \
        const TYPE *values = (const TYPE *)job->values + head * job->head_stride;             \
        const float *q = job->query + ((long)head * job->new_tokens + token) * dim;           \
        const int seen = job->past + token + 1, blocks = dim / 8;                             \
        __m256 qv[MAX_DIM / 8], acc[MAX_DIM / 8];                                             \
        const __m256 scale = _mm256_set1_ps(job->scale);                                      \
        for (int b = 0; b < blocks; b++) qv[b] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * b), scale); \
        float top = -INFINITY;                                                                \
        for (int t = 0; t < seen; t++) {                                                      \
            const TYPE *row = keys + (long)t * dim;                                           \
            for (int at = 0; at < dim * (int)sizeof(TYPE); at += 64)                          \
                _mm_prefetch((const char *)row + PREFETCH + at, _MM_HINT_T0);                 \
            __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();                     \
            for (int b = 0; b + 1 < blocks; b += 2) {                                         \
                even = _mm256_fmadd_ps(qv[b], LOAD8(row + 8 * b), even);                      \
                odd = _mm256_fmadd_ps(qv[b + 1], LOAD8(row + 8 * b + 8), odd);                \
            }                                                                                 \
            if (blocks % 2) even = _mm256_fmadd_ps(qv[blocks - 1], LOAD8(row + dim - 8), even); \
            scores[t] = sum8(_mm256_add_ps(even, odd));                                       \
            top = scores[t] > top ? scores[t] : top;                                          \
        }                                                                                     \
        /* e^(score - top), 8 at a time: a scalar expf per score took a third of the time. */ \
        __m256 sums = _mm256_setzero_ps();                                                    \
        const __m256 top8 = _mm256_set1_ps(top);                                              \
        int t = 0;                                                                            \
        for (; t + 8 <= seen; t += 8) {                                                       \
            const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + t), top8)); \
            _mm256_storeu_ps(scores + t, e);                                                  \
            sums = _mm256_add_ps(sums, e);                                                    \
        }                                                                                     \
        float total = sum8(sums);                                                             \
        for (; t < seen; t++) total += scores[t] = expf(scores[t] - top);                     \
        for (int b = 0; b < blocks; b++) acc[b] = _mm256_setzero_ps();                        \
        for (int t = 0; t < seen; t++) {                                                      \
            const TYPE *row = values + (long)t * dim;                                         \
            for (int at = 0; at < dim * (int)sizeof(TYPE); at += 64)                          \
                _mm_prefetch((const char *)row + PREFETCH + at, _MM_HINT_T0);                 \
            const __m256 weight = _mm256_set1_ps(scores[t]);                                  \
            for (int b = 0; b < blocks; b++) acc[b] = _mm256_fmadd_ps(weight, LOAD8(row + 8 * b), acc[b]); \
        }                                                                                     \
        float *out = job->out + ((long)token * job->heads + head) * dim;                      \
        const __m256 inverse = _mm256_set1_ps(1.f / total);                                   \
        for (int b = 0; b < blocks; b++) _mm256_storeu_ps(out + 8 * b, _mm256_mul_ps(acc[b], inverse)); \
    }

ATTEND_ONE(attend_one_f32, float, load8_f32)
ATTEND_ONE(attend_one_f16, uint16_t, load8_f16)

/* Task number `task` = head * new_tokens + token. The usual head size gets its own copy, with
 * dim a constant the compiler unrolls. */
#define ATTEND_TASK(NAME, ONE)                                                                \
    void NAME(const Attention *job, long task, float *scores) {                               \
        const int head = task / job->new_tokens, token = task % job->new_tokens;              \
        if (job->dim == 128) ONE(job, head, token, 128, scores);                              \
        else ONE(job, head, token, job->dim, scores);                                         \
    }

ATTEND_TASK(fim_attend_task_f32, attend_one_f32)
ATTEND_TASK(fim_attend_task_f16, attend_one_f16)

/* The (head, new token) pairs are shared out over OpenMP threads (shares.h). Loaded into a
 * process that has torch, this is torch's own OpenMP runtime (same soname), so these are torch's
 * threads: threads of our own would compete with torch's, which spin a while after each
 * operator. */
#define ATTEND(NAME, TYPE, TASK)                                                              \
    int NAME(const float *query, const TYPE *keys, const TYPE *values, float *out, int heads, \
             int dim, int past, int new_tokens, long head_stride, float scale, int threads) { \
        if (dim % 8 || dim > MAX_DIM || heads < 1 || new_tokens < 1 || past < 0 || threads < 1) \
            return -1;                                                                        \
        const Attention job = {query, keys, values, out, heads, dim, past, new_tokens, head_stride, scale}; \
        const int tasks = heads * new_tokens, length = past + new_tokens;                     \
        if (threads > tasks) threads = tasks;                                                 \
        if (threads > MAX_TEAM) threads = MAX_TEAM;                                           \
        float *scratch = malloc(sizeof(float) * (size_t)threads * (size_t)length);            \
        if (!scratch) return -1;                                                              \
        Share shares[MAX_TEAM];                                                               \
        _Pragma("omp parallel num_threads(threads)")                                          \
        {                                                                                     \
            const int team = omp_get_num_threads(), me = omp_get_thread_num();               \
            _Pragma("omp single")                                                             \
            share_out(shares, team, tasks);                                                   \
            float *scores = scratch + (size_t)me * (size_t)length;                            \
            for (long task; (task = take(shares, team, me)) >= 0;) TASK(&job, task, scores);  \
        }                                                                                     \
        free(scratch);                                                                        \
        return 0;                                                                             \
    }

/* Each returns 0, or -1 for arguments it does not take (the caller then uses torch). */
ATTEND(fim_attend_f32, float, fim_attend_task_f32)
ATTEND(fim_attend_f16, uint16_t, fim_attend_task_f16)

/* GPT-NeoX's rotary embedding on the new tokens' queries and keys, then their keys and values
 * into an fp16 cache, for a decode step (one call instead of some twenty torch operators).
 *   qkv [new][heads][3][dim] fp32: the fused projection's output
 *   cos, sin [new][rotary]: the model's tables for the tokens' positions (halves repeated)
 *   query [heads][new][dim] fp32 out, as the attention above reads it
 *   keys, values: the cache's layout above; the new tokens go at past .. past + new - 1
 * The first `rotary` dims of each head turn; the rest pass. Computed as transformers computes
 * it (x * cos + rotate_half(x) * sin, rounded after each operation, fp16 rounded to nearest
 * even), so the cache holds the same values either way. */
__attribute__((optimize("fp-contract=off")))
int fim_rope_store(const float *qkv, int new_tokens, int heads, int dim, int rotary,
                   const float *cos, const float *sin, float *query, uint16_t *keys,
                   uint16_t *values, long head_stride, int past) {
    if (dim % 8 || dim > MAX_DIM || rotary % 2 || rotary > dim || new_tokens < 1 || past < 0)
        return -1;
    const int half = rotary / 2;
    float turned[MAX_DIM];
    for (int t = 0; t < new_tokens; t++) {
        const float *c = cos + (long)t * rotary, *s = sin + (long)t * rotary;
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + ((long)t * heads + h) * 3 * dim, *k = q + dim, *v = k + dim;
            const long at = h * head_stride + (long)(past + t) * dim;
            float *q_out = query + ((long)h * new_tokens + t) * dim;
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
                _mm_storeu_si128((__m128i *)(keys + at + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(turned + i), _MM_FROUND_TO_NEAREST_INT));
                _mm_storeu_si128((__m128i *)(values + at + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT));
            }
        }
    }
    return 0;
}
