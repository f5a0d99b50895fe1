/* int8 linear layers for x86-64 CPUs with AVX2 (built by native.py; linear.py falls back to
 * torch's dynamic int8 layers where this cannot run).
 *
 * Why not torch's (fbgemm): a decode step reads every weight once, so it is memory bound, and
 * fbgemm's int8 matrix-vector product reads at 75-85% of the rate a plain sum reaches here. This
 * one streams each thread's weights in one sequential run, with software prefetch, and shares
 * the panels out so that neither core idles at the end (shares.h). A prefill chunk is compute
 * bound: its products run gemm.c's register tiles over all the chunk's tokens per group of
 * weight panels, with AVX-512 VNNI or AMX where the CPU has them. Its pieces (kernels.h) also
 * run inside layer.c's team of threads.
 *
 * Numbers: weights are int8, symmetric, one scale per output channel. Activations are quantized
 * per row (per token), asymmetric, to 0..127 (kernels.h's Activations). Each token's result
 * depends on its own row only, and the int32 sums are exact, so a token gives the same output
 * alone or in a batch, on either ISA, bit for bit.
 *
 * Layouts (kernels.h's Weights and Fused):
 *   x [m][k] fp32, y [m][n] fp32
 *   fused (layer.c's layers, NULL for a plain product): a layer norm of x's rows before the
 *   product, GELU after the bias, then two [m][n] arrays added in order (residuals)
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "shares.h"
#include "simd.h"

#define CHUNK (128 << 10) /* weight bytes per work item shared out (shares.h) */

/* x's row into 0..127 (stride kp, zero padded); returns its scale, sets its zero point. */
static float quantize_row(const float *x, int k, int kp, uint8_t *q, int32_t *zero) {
    __m256 low = _mm256_setzero_ps(), high = low;  /* the range always holds 0 */
    int i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        low = _mm256_min_ps(low, v);
        high = _mm256_max_ps(high, v);
    }
    float lows[8], highs[8], lo = 0.f, hi = 0.f;
    _mm256_storeu_ps(lows, low);
    _mm256_storeu_ps(highs, high);
    for (int j = 0; j < 8; j++) lo = fminf(lo, lows[j]), hi = fmaxf(hi, highs[j]);
    for (int j = i; j < k; j++) lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
    float scale = (hi - lo) / 127.f;
    if (!(scale > 0.f) || !isfinite(scale)) scale = 1.f, lo = 0.f;  /* all zeros, or inf/nan */
    const float inverse = 1.f / scale;
    *zero = (int32_t)nearbyintf(-lo * inverse);
    const __m256 inv = _mm256_set1_ps(inverse);
    const __m256i z = _mm256_set1_epi32(*zero), top = _mm256_set1_epi32(127);
    const __m256i zeros = _mm256_setzero_si256();
    const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undoes the packs' lanes */
    for (i = 0; i + 32 <= k; i += 32) { /* 32 at a time, packed to bytes in registers */
        __m256i v[4];
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), inv));
            v[j] = _mm256_max_epi32(_mm256_min_epi32(_mm256_add_epi32(v[j], z), top), zeros);
        }
        const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]),
                                                  _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(bytes, in_order));
    }
    int32_t lanes[8];
    for (; i + 8 <= k; i += 8) {
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
        v = _mm256_max_epi32(_mm256_min_epi32(_mm256_add_epi32(v, z), top), zeros);
        _mm256_storeu_si256((__m256i *)lanes, v);
        for (int j = 0; j < 8; j++) q[i + j] = (uint8_t)lanes[j];
    }
    for (; i < k; i++) {
        int32_t v = (int32_t)nearbyintf(x[i] * inverse) + *zero;
        q[i] = (uint8_t)(v < 0 ? 0 : v > 127 ? 127 : v);
    }
    memset(q + k, 0, kp - k);
    return scale;
}

typedef struct {
    int k, kp, n;
    const uint8_t *q;
    const float *a_scale;
    const int32_t *a_zero;
    const float *w_scale, *bias;
    const int32_t *w_sum;
    float *y;
    const Fused *fused;
} Job;

/* x / 2 * (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (error under 1.5e-7, the
 * formula torch's own vectorized GELU uses), 8 at a time. */
static inline __m256 gelu8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678f));
    const __m256 a = _mm256_andnot_ps(sign, z);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f),
                                   _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.f)));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    const __m256 tail = _mm256_mul_ps(_mm256_mul_ps(poly, t),
                                      exp_nonpositive(_mm256_xor_ps(sign, _mm256_mul_ps(a, a))));
    const __m256 erf = _mm256_or_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), tail),
                                    _mm256_and_ps(sign, z));
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(_mm256_set1_ps(1.f), erf));
}

/* The sum of x[i] - shift (or of its squares) in double, 8 at a time in 8 lanes. */
static double sum_in_double(const float *x, int k, double shift, int squared) {
    __m256d lanes[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    const __m256d by = _mm256_set1_pd(shift);
    int i = 0;
    for (; i + 8 <= k; i += 8)
        for (int h = 0; h < 2; h++) {
            const __m256d v = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * h)), by);
            lanes[h] = _mm256_add_pd(lanes[h], squared ? _mm256_mul_pd(v, v) : v);
        }
    double four[4], sum = 0;
    _mm256_storeu_pd(four, _mm256_add_pd(lanes[0], lanes[1]));
    for (int j = 0; j < 4; j++) sum += four[j];
    for (; i < k; i++) sum += squared ? (x[i] - shift) * (x[i] - shift) : x[i] - shift;
    return sum;
}

/* One row's layer norm (mean and variance in double: 2048 inputs and more). */
static void layer_norm_row(const float *x, int k, const Fused *fused, float *out) {
    const double mean = sum_in_double(x, k, 0, 0) / k;
    const double squares = sum_in_double(x, k, mean, 1);
    const float inverse = (float)(1.0 / sqrt(squares / k + fused->norm_eps));
    for (int i = 0; i < k; i++)
        out[i] = (x[i] - (float)mean) * inverse * fused->norm_weight[i] + fused->norm_bias[i];
}

/* A panel's outputs as the epilogue reads them: each output's weight sum, scale and bias,
 * repeated past n in a last partial panel. */
typedef struct {
    int first, width; /* outputs first .. first + width - 1 */
    int32_t sums[PANEL];
    float scales[PANEL], biases[PANEL];
} PanelOutputs;

static void panel_outputs(const Job *job, int p, PanelOutputs *out) {
    out->first = p * PANEL;
    out->width = job->n - out->first < PANEL ? job->n - out->first : PANEL;
    for (int j = 0; j < PANEL; j++) {
        const int o = out->first + (j < out->width ? j : out->width - 1);
        out->sums[j] = job->w_sum[o], out->scales[j] = job->w_scale[o];
        out->biases[j] = job->bias ? job->bias[o] : 0.f;
    }
}

/* y for rows t0 .. t0 + rows - 1 of a panel from their int32 dots (dots [rows][stride], the
 * panel's 16 first): undo both zero points and scales, add the bias, then what `fused` adds. The
 * one place dots become outputs, whichever ISA computed them. */
static void finish_panel(const Job *job, const PanelOutputs *panel, int t0, int rows,
                         const int32_t *dots, int stride) {
    const int gelu = job->fused && job->fused->gelu;
    const float *then_add = job->fused ? job->fused->then_add : NULL;
    const float *and_add = job->fused ? job->fused->and_add : NULL;
    const int whole = panel->width == PANEL; /* else staged, the part past n left out */
    float staged[PANEL];
    for (int r = 0; r < rows; r++) {
        const int t = t0 + r;
        const long at = (long)t * job->n + panel->first;
        const __m256 a_scale = _mm256_set1_ps(job->a_scale[t]);
        const __m256i a_zero = _mm256_set1_epi32(job->a_zero[t]);
        for (int h = 0; h < PANEL; h += 8) {
            const __m256i dot = _mm256_loadu_si256((const __m256i *)(dots + r * stride + h));
            const __m256i sum = _mm256_loadu_si256((const __m256i *)(panel->sums + h));
            const __m256i v = _mm256_sub_epi32(dot, _mm256_mullo_epi32(a_zero, sum));
            const __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), a_scale),
                                           _mm256_loadu_ps(panel->scales + h));
            __m256 v8 = _mm256_add_ps(f, _mm256_loadu_ps(panel->biases + h));
            if (gelu) v8 = gelu8(v8);
            if (whole) {
                if (then_add) v8 = _mm256_add_ps(v8, _mm256_loadu_ps(then_add + at + h));
                if (and_add) v8 = _mm256_add_ps(v8, _mm256_loadu_ps(and_add + at + h));
                _mm256_storeu_ps(job->y + at + h, v8);
            } else {
                _mm256_storeu_ps(staged + h, v8);
            }
        }
        if (whole) continue;
        for (int j = 0; j < panel->width; j++) {
            if (then_add) staged[j] += then_add[at + j];
            if (and_add) staged[j] += and_add[at + j];
            job->y[at + j] = staged[j];
        }
    }
}

/* FIM_OK, or FIM_NO_MEMORY (with nothing left allocated). */
int fim_activations_init(Activations *a, int m, int k, int normed) {
    a->m = m, a->k = k, a->kp = (k + GROUP - 1) / GROUP * GROUP;
    a->q = aligned_alloc(64, ((size_t)m * a->kp + 63) / 64 * 64);
    a->scale = malloc(sizeof(float) * m);
    a->zero = malloc(sizeof(int32_t) * m);
    a->normed = normed ? malloc(sizeof(float) * (size_t)m * k) : NULL;
    const int tiled = fim_tiled(m, a->kp);
    a->tiles = tiled ? aligned_alloc(64, (size_t)(m + 15) / 16 * 16 * a->kp) : NULL;
    if (a->q && a->scale && a->zero && (a->normed || !normed) && (a->tiles || !tiled)) return FIM_OK;
    fim_activations_free(a);
    return FIM_NO_MEMORY;
}

void fim_activations_free(Activations *a) {
    free(a->q), free(a->scale), free(a->zero), free(a->normed), free(a->tiles);
    a->q = NULL, a->scale = NULL, a->zero = NULL, a->normed = NULL, a->tiles = NULL;
}

void fim_quantize_row(Activations *a, const float *x, int t, const Fused *fused) {
    const float *row = x + (long)t * a->k;
    if (fused && fused->norm_weight) {
        layer_norm_row(row, a->k, fused, a->normed + (long)t * a->k);
        row = a->normed + (long)t * a->k;
    }
    uint8_t *q = a->q + (long)t * a->kp;
    a->scale[t] = quantize_row(row, a->k, a->kp, q, a->zero + t);
    if (a->tiles) { /* the row's 64-byte pieces into its tiles (kernels.h) */
        uint8_t *tile_row = a->tiles + (long)(t / 16) * 16 * a->kp + (t % 16) * 64;
        for (int at = 0; at < a->kp; at += 64) memcpy(tile_row + 16 * at, q + at, 64);
    }
}

/* Panels per work item: about CHUNK bytes of weights, read in one sequential run, in whole
 * groups of TILE_PANELS (a multiple of every tile's panels). */
static int panels_per_item(const Weights *w) {
    const int panel = PANEL * ((w->k + GROUP - 1) / GROUP * GROUP);
    const int groups = CHUNK / panel / TILE_PANELS;
    return (groups > 1 ? groups : 1) * TILE_PANELS;
}

long fim_product_items(const Weights *w) {
    const int panels = (w->n + PANEL - 1) / PANEL, per_item = panels_per_item(w);
    return (panels + per_item - 1) / per_item;
}

/* The item's panels a tile's group at a time, each group over all rows while its weights stay
 * in the core's cache. */
void fim_product_item(const Weights *w, const Activations *a, float *y, const Fused *fused,
                      long item) {
    const Job job = {w->k, a->kp, w->n, a->q, a->scale, a->zero, w->scale, w->bias, w->sum, y, fused};
    int rows, group;
    fim_tile_shape(a->m, a->kp, &rows, &group);
    const int panels = (w->n + PANEL - 1) / PANEL, per_item = panels_per_item(w);
    const int end = (item + 1) * per_item < panels ? (item + 1) * per_item : panels;
    int32_t dots[TILE_ROWS * TILE_PANELS * PANEL];
    PanelOutputs outputs[TILE_PANELS];
    for (int p = item * per_item; p < end; p += group) {
        const int count = end - p < group ? end - p : group;
        for (int j = 0; j < count; j++) panel_outputs(&job, p + j, outputs + j);
        for (int t = 0; t < a->m; t += rows) {
            const int r = a->m - t < rows ? a->m - t : rows;
            fim_dot_tile(a, t, r, w->packed + (long)p * PANEL * a->kp, count, dots);
            for (int j = 0; j < count; j++)
                finish_panel(&job, outputs + j, t, r, dots + j * PANEL, count * PANEL);
        }
    }
}

int fim_linear_i8(const float *x, int m, const Weights *weights, float *y, const Fused *fused,
                  int threads) {
    if (m < 0 || weights->k < 1 || weights->n < 1 || threads < 1) return FIM_UNSUPPORTED;
    if (m == 0) return FIM_OK;
    Activations a;
    if (fim_activations_init(&a, m, weights->k, fused && fused->norm_weight)) return FIM_NO_MEMORY;
    Share shares[MAX_TEAM];
    #pragma omp parallel num_threads(threads < MAX_TEAM ? threads : MAX_TEAM)
    {
        const int team = omp_get_num_threads();
        #pragma omp single nowait
        share_out(shares, team, fim_product_items(weights));
        #pragma omp for schedule(static)
        for (int t = 0; t < m; t++) fim_quantize_row(&a, x, t, fused);
        /* (the loop's barrier: rows quantized, work shared out) */
        for (long item; (item = take(shares, team, omp_get_thread_num())) >= 0;)
            fim_product_item(weights, &a, y, fused, item);
    }
    fim_activations_free(&a);
    return FIM_OK;
}
