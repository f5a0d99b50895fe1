/* The int8 products' inner loop: int32 dot products of quantized activation rows with packed
 * weight panels (kernels.h's layouts), per instruction set, chosen by CPUID at load.
 *
 *   AVX2: per 4 inputs and 16 outputs, vpmaddubsw multiplies u8 x s8 pairs into int16 (7-bit
 *   activations: 2 x 127 x 127 cannot saturate) and vpmaddwd widens them to int32; two
 *   multiplies per 32 products.
 *   AVX-512 VNNI: vpdpbusd does both in one, and one panel step (16 outputs x 4 inputs, 64
 *   bytes) fills a 512-bit register: twice AVX2's products per multiply.
 *   AMX (Intel Sapphire Rapids and later): tdpbusd multiplies a tile of 16 rows x 64 inputs by
 *   one of 64 inputs x 16 outputs in one instruction, 16 times VNNI's products. A panel's 16
 *   steps of 64 bytes are such a tile as they are packed (16 outputs x 4 inputs per 64-byte
 *   row), so the weights need no other layout; the activations are laid out as tiles when
 *   quantized (kernels.h's Activations.tiles). Used for products of 16 rows or more (a prompt's
 *   prefill), where the tiles fill; fewer rows (decoding) go to VNNI, which reads the weights
 *   as fast. Linux lends the tiles to a process that asks (arch_prctl), once.
 *
 * Both sum the same integers exactly, so they give the same int32 dots, bit for bit; linear.c
 * turns dots into outputs with the same code whichever computed them.
 *
 * A tile is `rows` activation rows by `count` panels: each weight loaded serves every row in
 * registers, each activation broadcast serves every panel. linear.c runs the tiles over all rows
 * of a product per group of panels, so a group's weights are read from memory once and stay in
 * the core's cache while the rows go by.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels.h"

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni")))

/* The tile each ISA runs: AVX2 keeps 4 rows x 2 registers of sums (16 registers in all), VNNI
 * 6 rows x 4 panels (32 registers), AMX 128 rows x 4 panels, 32 rows x 2 panels at a time (8
 * tiles: 4 of sums, 2 of rows, 2 of weights) in blocks of inputs (amx_dot_tile). */
static const int tile_rows[] = {4, 6, TILE_ROWS}, tile_panels[] = {1, 4, TILE_PANELS};
_Static_assert(TILE_ROWS % 32 == 0 && TILE_PANELS % 4 == 0 && TILE_PANELS % 2 == 0,
               "kernels.h's tile bounds hold every ISA's tile");
#define AMX_ROWS 16   /* a tile's rows */
#define AMX_BLOCK 512 /* inputs per block of amx_dot_tile (measured: 256 and 1,024 slower) */
#define AMX_BYTES 64  /* a tile row's bytes: 64 inputs of a row, or 16 outputs x 4 inputs */

static int isa = FIM_ISA_AVX2;

/* AMX-TILE and AMX-INT8 (CPUID leaf 7: EDX bits 24 and 25), and the tiles' state granted to
 * this process by Linux (ARCH_REQ_XCOMP_PERM for XTILEDATA), else 0. */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25)))
        return 0;
#ifdef __linux__
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static int supported(int wanted) {
    __builtin_cpu_init();
    const int vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vnni");
    if (wanted == FIM_ISA_AMX) return vnni && amx_usable();
    if (wanted == FIM_ISA_AVX512_VNNI) return vnni;
    return wanted == FIM_ISA_AVX2 && __builtin_cpu_supports("avx2");
}

__attribute__((constructor)) static void choose_isa(void) {
    isa = supported(FIM_ISA_AMX)           ? FIM_ISA_AMX
          : supported(FIM_ISA_AVX512_VNNI) ? FIM_ISA_AVX512_VNNI
                                           : FIM_ISA_AVX2;
}

int fim_select_isa(int wanted) {
    if (!supported(wanted)) return FIM_UNSUPPORTED;
    isa = wanted;
    return FIM_OK;
}

int fim_isa(void) { return isa; }

/* On AMX: its tiles for products of whole 64-byte steps and a tile of rows at least, VNNI's for
 * the rest. */
int fim_tiled(int m, int kp) { return isa == FIM_ISA_AMX && m >= AMX_ROWS && kp % AMX_BYTES == 0; }

void fim_tile_shape(int m, int kp, int *rows, int *panels) {
    const int chosen = isa == FIM_ISA_AMX && !fim_tiled(m, kp) ? FIM_ISA_AVX512_VNNI : isa;
    *rows = tile_rows[chosen];
    *panels = tile_panels[chosen];
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

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes[16]; /* per tile: bytes per row */
    uint8_t rows[16];
} TileConfig;

/* Tiles 0-3: sums of rows [0, 16) and [16, 32) by panels 0 and 1; 4-5: those rows' inputs; 6-7:
 * the two panels' weights. `upper`: rows of the second half. Loaded at every tile, not once per
 * thread: other code in the thread (oneDNN, through torch) configures the tiles its own way and
 * releases them. */
AMX static void amx_configure(int lower, int upper) {
    TileConfig config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    const int rows[8] = {lower, lower, upper, upper, lower, upper, AMX_ROWS, AMX_ROWS};
    for (int t = 0; t < 8; t++) {
        config.rows[t] = (uint8_t)rows[t];
        config.bytes[t] = rows[t] ? AMX_BYTES : 0;
    }
    __asm__ volatile("" : : "r"(&config) : "memory"); /* GCC may drop the stores otherwise */
    _tile_loadconfig(&config);
}

/* Up to TILE_ROWS rows by up to TILE_PANELS panels; kp a multiple of 64; q: the rows' first
 * tile (Activations.tiles). In blocks of AMX_BLOCK inputs, outermost: a block of the rows'
 * inputs (64 KB for 128 rows) stays in the L2 cache while every panel reads it, and a block of
 * two panels' weights (16 KB) in L1 while the rows go by 32 at a time (4 tiles of sums, which
 * wait in `dots` between blocks). Whole rows read again for each pair of panels came from L3
 * for the MLP's second product (8,192 inputs: 2 MB of rows): 3 times slower than the others. */
AMX static void amx_dot_tile(const uint8_t *q, int kp, int rows, const int8_t *panels, int count,
                             int32_t *dots) {
    const long panel = (long)PANEL * kp; /* bytes */
    const int stride = count * PANEL * (int)sizeof(int32_t);
    int configured = -1; /* the rows of the configured tiles */
    for (int k0 = 0; k0 < kp; k0 += AMX_BLOCK) {
        const int k1 = kp - k0 < AMX_BLOCK ? kp : k0 + AMX_BLOCK;
        for (int p = 0; p < count; p += 2) {
            const int8_t *weights = panels + p * panel;
            const int two = count - p > 1;
            for (int r0 = 0; r0 < rows; r0 += 2 * AMX_ROWS) {
                const int here = rows - r0 < 2 * AMX_ROWS ? rows - r0 : 2 * AMX_ROWS;
                const int lower = here < AMX_ROWS ? here : AMX_ROWS, upper = here - lower;
                if (here != configured) amx_configure(lower, upper), configured = here;
                const uint8_t *a = q + (long)r0 * kp;
                int32_t *sums = dots + (r0 * count + p) * PANEL;
                int32_t *half = sums + AMX_ROWS * count * PANEL;
                if (k0 == 0) {
                    _tile_zero(0);
                    _tile_zero(1);
                    if (upper) { /* a tile of no rows is not configured: touching it faults */
                        _tile_zero(2);
                        _tile_zero(3);
                    }
                } else {
                    _tile_loadd(0, sums, stride);
                    if (two) _tile_loadd(1, sums + PANEL, stride);
                    if (upper) {
                        _tile_loadd(2, half, stride);
                        if (two) _tile_loadd(3, half + PANEL, stride);
                    }
                }
                for (int at = k0; at < k1; at += AMX_BYTES) {
                    const int8_t *step = weights + (long)at * PANEL; /* 64 inputs of a panel: 1 KB */
                    _tile_loadd(4, a + AMX_ROWS * at, AMX_BYTES);
                    _tile_loadd(6, step, AMX_BYTES);
                    _tile_dpbusd(0, 4, 6);
                    if (two) {
                        _tile_loadd(7, step + panel, AMX_BYTES);
                        _tile_dpbusd(1, 4, 7);
                    }
                    if (upper) {
                        _tile_loadd(5, a + (long)AMX_ROWS * (kp + at), AMX_BYTES);
                        _tile_dpbusd(2, 5, 6);
                        if (two) _tile_dpbusd(3, 5, 7);
                    }
                }
                _tile_stored(0, sums, stride);
                if (two) _tile_stored(1, sums + PANEL, stride);
                if (upper) {
                    _tile_stored(2, half, stride);
                    if (two) _tile_stored(3, half + PANEL, stride);
                }
            }
        }
    }
}

void fim_dot_tile(const Activations *a, int t, int rows, const int8_t *panels, int count,
                  int32_t *dots) {
    const int kp = a->kp;
    const uint8_t *q = a->q + (long)t * kp;
    if (a->tiles) amx_dot_tile(a->tiles + (long)t * kp, kp, rows, panels, count, dots);
    else if (isa >= FIM_ISA_AVX512_VNNI) vnni_dot_tile(q, kp, rows, panels, count, dots);
    else avx2_dot_tile(q, kp, rows, panels, count, dots);
}
