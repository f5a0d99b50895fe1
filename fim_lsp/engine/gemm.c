/* The int8 products' inner loop: int32 dot products of quantized activation rows with packed
 * weight panels (kernels.h's layouts), per instruction set, chosen by CPUID at load.
 *
 *   AVX2: per 4 inputs and 16 outputs, vpmaddubsw multiplies u8 x s8 pairs into int16 (7-bit
 *   activations: 2 x 127 x 127 cannot saturate) and vpmaddwd widens them to int32; two
 *   multiplies per 32 products.
 *   AVX-512 VNNI: vpdpbusd does both in one, and one panel step (16 outputs x 4 inputs, 64
 *   bytes) fills a 512-bit register: twice AVX2's products per multiply.
 *
 * Both sum the same integers exactly, so they give the same int32 dots, bit for bit; linear.c
 * turns dots into outputs with the same code whichever computed them.
 *
 * A tile is `rows` activation rows by `count` panels: each weight loaded serves every row in
 * registers, each activation broadcast serves every panel. linear.c runs the tiles over all rows
 * of a product per group of panels, so a group's weights are read from memory once and stay in
 * the core's cache while the rows go by.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* The tile each ISA runs: AVX2 keeps 4 rows x 2 registers of sums (16 registers in all), VNNI
 * 6 rows x 4 panels (32 registers). */
static const int tile_rows[] = {4, 6}, tile_panels[] = {1, 4};
_Static_assert(TILE_ROWS >= 6 && TILE_PANELS >= 4, "kernels.h's tile bounds hold every ISA's tile");

static int isa = FIM_ISA_AVX2;

static int supported(int wanted) {
    __builtin_cpu_init();
    if (wanted == FIM_ISA_AVX512_VNNI)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
    return wanted == FIM_ISA_AVX2 && __builtin_cpu_supports("avx2");
}

__attribute__((constructor)) static void choose_isa(void) {
    isa = supported(FIM_ISA_AVX512_VNNI) ? FIM_ISA_AVX512_VNNI : FIM_ISA_AVX2;
}

int fim_select_isa(int wanted) {
    if (!supported(wanted)) return FIM_UNSUPPORTED;
    isa = wanted;
    return FIM_OK;
}

int fim_isa(void) { return isa; }

void fim_tile_shape(int *rows, int *panels) {
    *rows = tile_rows[isa];
    *panels = tile_panels[isa];
}

/* Four bytes of a row (inputs 4 step .. 4 step + 3), as one 32-bit lane. */
INLINE int32_t four_inputs(const uint8_t *row, int step) {
    int32_t four;
    memcpy(&four, row + 4 * step, 4);
    return four;
}

/* AVX2: R rows by one panel, two registers of 8 outputs per row. */
INLINE void avx2_tile(const int R, const uint8_t *q, int kp, const int8_t *panel, int32_t *dots,
                      int stride) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int step = 0; step < kp / GROUP; step++) {
        const int8_t *w = panel + step * PANEL * GROUP;
        _mm_prefetch((const char *)w + PREFETCH, _MM_HINT_T0);
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32));
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {
            const __m256i a = _mm256_set1_epi32(four_inputs(q + (long)r * kp, step));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {
        _mm256_storeu_si256((__m256i *)(dots + r * stride), acc[r][0]);
        _mm256_storeu_si256((__m256i *)(dots + r * stride + 8), acc[r][1]);
    }
}

static void avx2_dot_tile(const uint8_t *q, int kp, int rows, const int8_t *panels, int count,
                          int32_t *dots) {
    for (int p = 0; p < count; p++) {
        const int8_t *panel = panels + (long)p * PANEL * kp;
        int32_t *out = dots + p * PANEL;
        switch (rows) {
            case 4: avx2_tile(4, q, kp, panel, out, count * PANEL); break;
            case 3: avx2_tile(3, q, kp, panel, out, count * PANEL); break;
            case 2: avx2_tile(2, q, kp, panel, out, count * PANEL); break;
            case 1: avx2_tile(1, q, kp, panel, out, count * PANEL); break;
        }
    }
}

/* AVX-512 VNNI: R rows by P panels, one register per row and panel. */
VNNI INLINE void vnni_tile(const int R, const int P, const uint8_t *q, int kp,
                           const int8_t *panels, int32_t *dots) {
    const long panel = (long)PANEL * kp; /* bytes */
    __m512i acc[6][4];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) acc[r][p] = _mm512_setzero_si512();
    for (int step = 0; step < kp / GROUP; step++) {
        __m512i w[4];
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) {
            const int8_t *at = panels + p * panel + step * PANEL * GROUP;
            _mm_prefetch((const char *)at + PREFETCH, _MM_HINT_T0);
            w[p] = _mm512_loadu_si512(at);
        }
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {
            const __m512i a = _mm512_set1_epi32(four_inputs(q + (long)r * kp, step));
            _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], a, w[p]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) _mm512_storeu_si512(dots + (r * P + p) * PANEL, acc[r][p]);
}

#define VNNI_ROWS(P)                                                                          \
    switch (rows) {                                                                           \
        case 6: vnni_tile(6, P, q, kp, panels, dots); break;                                 \
        case 5: vnni_tile(5, P, q, kp, panels, dots); break;                                 \
        case 4: vnni_tile(4, P, q, kp, panels, dots); break;                                 \
        case 3: vnni_tile(3, P, q, kp, panels, dots); break;                                 \
        case 2: vnni_tile(2, P, q, kp, panels, dots); break;                                 \
        case 1: vnni_tile(1, P, q, kp, panels, dots); break;                                 \
    }

VNNI static void vnni_dot_tile(const uint8_t *q, int kp, int rows, const int8_t *panels,
                               int count, int32_t *dots) {
    switch (count) {
        case 4: VNNI_ROWS(4) break;
        case 3: VNNI_ROWS(3) break;
        case 2: VNNI_ROWS(2) break;
        case 1: VNNI_ROWS(1) break;
    }
}

void fim_dot_tile(const uint8_t *q, int kp, int rows, const int8_t *panels, int count,
                  int32_t *dots) {
    if (isa == FIM_ISA_AVX512_VNNI) vnni_dot_tile(q, kp, rows, panels, count, dots);
    else avx2_dot_tile(q, kp, rows, panels, count, dots);
}
