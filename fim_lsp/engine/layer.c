/* One GPT-NeoX layer (parallel residuals, exact GELU) for a run of new tokens after the cached
 * ones, from one decode token to a whole prefill chunk, in one call and one team of threads,
 * for cpu_step.py.
 *
 * Why one call: a decode step is 97 int8 products and 24 attentions, each reading megabytes, and
 * run one by one each started its threads, warmed its reads up and ended with a core idle while
 * the other finished; between them ran Python. Here a layer is three rounds of shared-out work
 * (shares.h), grouped by what each needs:
 *   1. the query-key-value product and the MLP's first product (both read only the layer's input)
 *   2. attention (needs 1's queries, keys, values) and the MLP's second product (needs 1's GELU)
 *   3. the attention's output product, adding the MLP's output and the input (the residuals)
 * The sums come out in transformers' order, (mlp + attention) + input: 3 computes
 * attention + mlp, the same number. Every token's arithmetic is its own (linear.c, attention.c),
 * so a chunk gives the outputs its tokens give one at a time, bit for bit.
 */
#include <omp.h>
#include <stdlib.h>

#include "kernels.h"
#include "shares.h"

int fim_layer(const LayerWeights *w, const LayerRun *run, int threads) {
    const int m = run->new_tokens, width = w->qkv->k, inner = w->up->n;
    if (m < 1 || run->past < 0 || threads < 1 || run->dim % 8 || run->dim > MAX_DIM ||
        run->rotary % 2 || run->rotary > run->dim || run->heads * run->dim != width)
        return FIM_UNSUPPORTED;
    if (threads > MAX_TEAM) threads = MAX_TEAM;
    float *query = malloc(sizeof(float) * (size_t)m * width);
    float *attended = malloc(sizeof(float) * (size_t)m * width);
    const Attention attention = {query, run->keys, run->values, attended, run->heads, run->dim,
                                 run->past, m, run->head_stride, run->scaling, 1};
    const size_t scratch_size = fim_attend_scratch(&attention);
    float *qkv = malloc(sizeof(float) * (size_t)m * w->qkv->n);
    float *hidden = malloc(sizeof(float) * (size_t)m * inner);
    float *mlp = malloc(sizeof(float) * (size_t)m * width);
    float *scratch = malloc(sizeof(float) * scratch_size * threads);
    Activations for_qkv = {0}, for_up = {0}, for_down = {0}, for_dense = {0};
    int status = !qkv || !query || !attended || !hidden || !mlp || !scratch ? FIM_NO_MEMORY : FIM_OK;
    if (status == FIM_OK)
        status = fim_activations_init(&for_qkv, m, width, 1) || fim_activations_init(&for_up, m, width, 1)
                 || fim_activations_init(&for_down, m, inner, 0)
                 || fim_activations_init(&for_dense, m, width, 0) ? FIM_NO_MEMORY : FIM_OK;
    if (status == FIM_OK) {
        const Fused residuals = {.then_add = mlp, .and_add = run->x};
        const long qkv_items = fim_product_items(w->qkv), tasks = fim_attend_tasks(&attention);
        Share shares[MAX_TEAM];
        #pragma omp parallel num_threads(threads)
        {
            const int team = omp_get_num_threads(), me = omp_get_thread_num();
            /* 1: both layer norms of the input, then both products that read it */
            #pragma omp single nowait
            share_out(shares, team, qkv_items + fim_product_items(w->up));
            #pragma omp for schedule(static)
            for (int i = 0; i < 2 * m; i++) {
                if (i < m) fim_quantize_row(&for_qkv, run->x, i, &w->before_attention);
                else fim_quantize_row(&for_up, run->x, i - m, &w->before_mlp);
            }
            for (long item; (item = take(shares, team, me)) >= 0;) {
                if (item < qkv_items) fim_product_item(w->qkv, &for_qkv, qkv, NULL, item);
                else fim_product_item(w->up, &for_up, hidden, &w->before_mlp, item - qkv_items);
            }
            #pragma omp barrier
            /* 2: rotary embedding and the cache write, quantizing the MLP's hidden rows, then
             * attention beside the MLP's second product */
            #pragma omp single nowait
            share_out(shares, team, tasks + fim_product_items(w->down));
            #pragma omp for schedule(static) nowait
            for (int t = 0; t < m; t++) fim_rope_store(run, qkv, query, t, t + 1);
            #pragma omp for schedule(static)
            for (int t = 0; t < m; t++) fim_quantize_row(&for_down, hidden, t, NULL);
            for (long item; (item = take(shares, team, me)) >= 0;) {
                if (item < tasks) fim_attend_task(&attention, item, scratch + scratch_size * me);
                else fim_product_item(w->down, &for_down, mlp, NULL, item - tasks);
            }
            #pragma omp barrier
            /* 3: the attention's output product, with the residuals */
            #pragma omp single nowait
            share_out(shares, team, fim_product_items(w->dense));
            #pragma omp for schedule(static)
            for (int t = 0; t < m; t++) fim_quantize_row(&for_dense, attended, t, NULL);
            for (long item; (item = take(shares, team, me)) >= 0;)
                fim_product_item(w->dense, &for_dense, run->after, &residuals, item);
        }
    }
    fim_activations_free(&for_qkv), fim_activations_free(&for_up);
    fim_activations_free(&for_down), fim_activations_free(&for_dense);
    free(qkv), free(query), free(attended), free(hidden), free(mlp), free(scratch);
    return status;
}
