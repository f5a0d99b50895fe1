/* The C kernels' interface, declared once: the constants, the status every exported function
 * returns, every struct Python passes (abi.py mirrors them and compares them with fim_layouts()
 * at load), and every function the library's files share or export. */
#ifndef FIM_KERNELS_H
#define FIM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The kernels' constants; those Python uses are also in fim_constants(), which abi.py compares
 * with its own at load. */
#define PANEL 16       /* outputs per packed weight panel */
#define GROUP 4        /* consecutive inputs per panel row: 4 bytes, one 32-bit lane of a product */
#define MAX_DIM 256    /* largest attention head */
#define QUERY_BLOCK 64 /* new tokens that one attention task takes over a head's keys */
#define MAX_TEAM 64    /* threads used at most: more gain nothing on memory-bound products */
#define PREFETCH 1024  /* bytes ahead in a streamed weight panel or cache row: enough reads in
                        * flight on one core, 5-10% faster than the hardware prefetcher alone */
#define INLINE static inline __attribute__((always_inline))

/* What every exported function returns. */
typedef enum {
    FIM_OK = 0,
    FIM_NO_MEMORY = 1,   /* scratch memory could not be had */
    FIM_UNSUPPORTED = 2, /* arguments the kernel does not take (sizes, an ISA the CPU lacks) */
} FimStatus;

/* The instruction sets the int8 products run on (gemm.c), chosen by CPUID at load. */
typedef enum {
    FIM_ISA_AVX2 = 0,        /* vpmaddubsw, vpmaddwd */
    FIM_ISA_AVX512_VNNI = 1, /* vpdpbusd on 512-bit registers */
    FIM_ISA_AMX = 2,         /* tdpbusd on AMX tiles for products of 16 rows or more, else VNNI */
} FimIsa;

/* What a product does besides multiplying; any part NULL or 0 is left out. */
typedef struct {
    const float *norm_weight, *norm_bias; /* [k]: x's rows layer-normed first */
    float norm_eps;
    int gelu;                        /* exact GELU (erf) on y after the bias */
    const float *then_add, *and_add; /* [m][n]: added to y in this order, last */
} Fused;
_Static_assert(sizeof(Fused) == 40 && offsetof(Fused, gelu) == 20, "Fused: abi.py's layout");

/* An int8 linear layer's weights: packed [ceil(n/PANEL)][ceil(k/GROUP)][PANEL][GROUP] int8, zero
 * where the padding runs past n or k; scale [n], sum [n] (each output's int8 weights summed, for
 * the activations' zero point); bias [n] or NULL. */
typedef struct {
    int k, n;
    const int8_t *packed;
    const float *scale;
    const int32_t *sum;
    const float *bias;
} Weights;
_Static_assert(sizeof(Weights) == 40 && offsetof(Weights, bias) == 32, "Weights: abi.py's layout");

/* Attention of new tokens over a KV cache (attention.c):
 *   query [heads][new][dim] fp32, scaled here by `scale`
 *   keys, values fp16 (half) or fp32: head h's token t at (h * head_stride + t * dim)
 *   out [new][heads][dim] fp32
 * New token i sits at position past + i and sees tokens 0 .. past + i (causal). */
typedef struct {
    const float *query;
    const void *keys, *values;
    float *out;
    int heads, dim, past, new_tokens;
    long head_stride;
    float scale;
    int half;
} Attention;
_Static_assert(sizeof(Attention) == 64 && offsetof(Attention, half) == 60,
               "Attention: abi.py's layout");

/* A GPT-NeoX layer's four products and its two layer norms (layer.c). */
typedef struct {
    const Weights *qkv, *dense, *up, *down;
    Fused before_attention, before_mlp; /* layer norms, and GELU after the first MLP product */
} LayerWeights;
_Static_assert(sizeof(LayerWeights) == 112 && offsetof(LayerWeights, before_mlp) == 72,
               "LayerWeights: abi.py's layout");

/* What one call of a layer reads and writes (layer.c). */
typedef struct {
    int new_tokens, heads, dim, rotary, past;
    long head_stride;
    float scaling;
    const float *cos, *sin;   /* [new][rotary]: the rotary tables at the new tokens' positions */
    uint16_t *keys, *values;  /* the layer's fp16 cache (Attention's layout), room for the new */
    const float *x;           /* [new][width]: the layer's input */
    float *after;             /* [new][width]: its output */
} LayerRun;
_Static_assert(sizeof(LayerRun) == 88 && offsetof(LayerRun, after) == 80,
               "LayerRun: abi.py's layout");

/* A struct's size or a field's offset and size, for abi.py: "Weights" or "Weights.k". */
typedef struct {
    const char *name;
    long offset, size;
} FimLayout;

/* A constant by name, for abi.py. */
typedef struct {
    const char *name;
    long value;
} FimConstant;

/* ---- Exported: called from Python (abi.py declares each). ---- */

/* abi.c: the tables above, each ending with a NULL name. */
const FimLayout *fim_layouts(void);
const FimConstant *fim_constants(void);

/* gemm.c: the ISA the int8 products run on (the best the CPU has until told otherwise);
 * FIM_UNSUPPORTED for one the CPU lacks. Not while a kernel runs. */
int fim_select_isa(int isa);
int fim_isa(void);

/* linear.c: y [m][n] = x [m][k] W^T + bias, with what `fused` adds. */
int fim_linear_i8(const float *x, int m, const Weights *weights, float *y, const Fused *fused,
                  int threads);

/* attention.c: the attention of `job` (dim a multiple of 8, at most MAX_DIM). */
int fim_attend(const Attention *job, int threads);

/* attention.c: GPT-NeoX's rotary embedding of new tokens [first, end)'s queries and keys from
 * qkv, then their keys and values into run's fp16 cache (see there for the layouts). */
int fim_rope_store(const LayerRun *run, const float *qkv, float *query, int first, int end);

/* layer.c: one layer for the new tokens of `run`. */
int fim_layer(const LayerWeights *w, const LayerRun *run, int threads);

/* ---- Shared between the library's files: the pieces layer.c runs inside one team. ---- */

/* m rows of activations quantized for a product with k inputs (linear.c): per row, asymmetric,
 * to 0..127 (7 bits: vpmaddubsw's pairs of u8 x s8 products cannot saturate int16). */
typedef struct {
    int m, k, kp; /* kp: k rounded up to GROUP, each row's stride in q */
    uint8_t *q;
    float *scale;
    int32_t *zero;
    float *normed; /* scratch for layer-normed rows, or NULL */
    uint8_t *tiles; /* q again as AMX's tiles read it, for a product AMX takes (fim_tiled), else
                     * NULL: [ceil(m / 16)][kp / 64][16 rows][64 bytes], each tile 1 KB in one
                     * piece (rows kp bytes apart put a tile's 16 lines in one or two of the L1
                     * cache's sets) */
} Activations;

int fim_activations_init(Activations *a, int m, int k, int normed); /* FIM_OK or FIM_NO_MEMORY */
void fim_activations_free(Activations *a);
/* Row t of x [m][k], layer-normed first if `fused` says so, into `a`. */
void fim_quantize_row(Activations *a, const float *x, int t, const Fused *fused);
/* A product y = x W^T + bias comes in work items (runs of weight panels), any order. */
long fim_product_items(const Weights *w);
void fim_product_item(const Weights *w, const Activations *a, float *y, const Fused *fused,
                      long item);

/* gemm.c: the int32 dot products of `rows` rows of a's, from row t, with `count` consecutive
 * weight panels from `panels`: dots [rows][count * PANEL]. At most the rows and panels that
 * fim_tile_shape gave for the product, t a multiple of those rows. */
#define TILE_ROWS 128 /* AMX's: rows that share each block of weights it reads */
#define TILE_PANELS 4 /* a multiple of every tile's panels */
void fim_dot_tile(const Activations *a, int t, int rows, const int8_t *panels, int count,
                  int32_t *dots);
/* The tile the current ISA computes best for a product of m rows of kp bytes: rows and panels
 * at a time. */
void fim_tile_shape(int m, int kp, int *rows, int *panels);
/* Whether AMX's tiles take that product (its activations need a.tiles). */
int fim_tiled(int m, int kp);

/* attention.c: one task of an attention job, task = head * blocks + block, where block b holds
 * new tokens [b * QUERY_BLOCK, ...). `scratch`: fim_attend_scratch floats. */
long fim_attend_tasks(const Attention *job);
size_t fim_attend_scratch(const Attention *job);
void fim_attend_task(const Attention *job, long task, float *scratch);

#endif
