/* The pieces of the C kernels that a whole layer (layer.c) runs inside one team of threads.
 * linear.c and attention.c each also run them on their own (fim_linear_i8, fim_attend_*). */
#ifndef FIM_KERNELS_H
#define FIM_KERNELS_H

#include <stdint.h>

/* What a product does besides multiplying; any part NULL or 0 is left out. */
typedef struct {
    const float *norm_weight, *norm_bias;  /* [k]: x's rows layer-normed first */
    float norm_eps;
    int gelu;                              /* exact GELU (erf) on y after the bias */
    const float *then_add, *and_add;       /* [m][n]: added to y in this order, last */
} Fused;

/* An int8 linear layer's weights (linear.c's layout; linear.py's Int8Linear.kernel_args). */
typedef struct {
    int k, n;
    const int8_t *packed;
    const float *scale;
    const int32_t *sum;
    const float *bias;  /* or NULL */
} Weights;

/* m rows of activations quantized for a product with k inputs (linear.c). */
typedef struct {
    int m, k, kp;
    uint8_t *q;
    float *scale;
    int32_t *zero;
    float *normed;  /* scratch for layer-normed rows, or NULL */
} Activations;

int fim_activations_init(Activations *a, int m, int k, int normed);  /* 0, or 1: no memory */
void fim_activations_free(Activations *a);
/* Row t of x [m][k], layer-normed first if `fused` says so, into `a`. */
void fim_quantize_row(Activations *a, const float *x, int t, const Fused *fused);
/* A product y = x W^T + bias comes in work items (runs of weight panels), any order. */
long fim_product_items(const Weights *w);
void fim_product_item(const Weights *w, const Activations *a, float *y, const Fused *fused,
                      long item);

/* Attention of new tokens over a KV cache (attention.c's layouts). */
typedef struct {
    const float *query;
    const void *keys, *values;
    float *out;
    int heads, dim, past, new_tokens;
    long head_stride;
    float scale;
} Attention;

/* One (head, new token) pair, task = head * new_tokens + token, with `scores` (past + new_tokens
 * floats) as scratch; keys and values fp32 or fp16. */
void fim_attend_task_f32(const Attention *job, long task, float *scores);
void fim_attend_task_f16(const Attention *job, long task, float *scores);
int fim_rope_store(const float *qkv, int new_tokens, int heads, int dim, int rotary,
                   const float *cos, const float *sin, float *query, uint16_t *keys,
                   uint16_t *values, long head_stride, int past);

#endif
