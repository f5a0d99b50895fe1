/* The library's layouts and constants by name, for abi.py to compare with its own at load. */
#include "kernels.h"

#define STRUCT(S) {#S, 0, sizeof(S)}
#define FIELD(S, F) {#S "." #F, offsetof(S, F), sizeof(((S *)0)->F)}

static const FimLayout layouts[] = {
    STRUCT(Fused), FIELD(Fused, norm_weight), FIELD(Fused, norm_bias), FIELD(Fused, norm_eps),
    FIELD(Fused, gelu), FIELD(Fused, then_add), FIELD(Fused, and_add),

    STRUCT(Weights), FIELD(Weights, k), FIELD(Weights, n), FIELD(Weights, packed),
    FIELD(Weights, scale), FIELD(Weights, sum), FIELD(Weights, bias),

    STRUCT(Attention), FIELD(Attention, query), FIELD(Attention, keys), FIELD(Attention, values),
    FIELD(Attention, out), FIELD(Attention, heads), FIELD(Attention, dim), FIELD(Attention, past),
    FIELD(Attention, new_tokens), FIELD(Attention, head_stride), FIELD(Attention, scale),
    FIELD(Attention, half),

    STRUCT(LayerWeights), FIELD(LayerWeights, qkv), FIELD(LayerWeights, dense),
    FIELD(LayerWeights, up), FIELD(LayerWeights, down), FIELD(LayerWeights, before_attention),
    FIELD(LayerWeights, before_mlp),

    STRUCT(LayerRun), FIELD(LayerRun, new_tokens), FIELD(LayerRun, heads), FIELD(LayerRun, dim),
    FIELD(LayerRun, rotary), FIELD(LayerRun, past), FIELD(LayerRun, head_stride),
    FIELD(LayerRun, scaling), FIELD(LayerRun, cos), FIELD(LayerRun, sin), FIELD(LayerRun, keys),
    FIELD(LayerRun, values), FIELD(LayerRun, x), FIELD(LayerRun, after),

    {NULL, 0, 0},
};

#define CONSTANT(C) {#C, C}

static const FimConstant constants[] = {
    CONSTANT(PANEL), CONSTANT(GROUP), CONSTANT(MAX_DIM), CONSTANT(QUERY_BLOCK),
    CONSTANT(FIM_OK), CONSTANT(FIM_NO_MEMORY), CONSTANT(FIM_UNSUPPORTED),
    CONSTANT(FIM_ISA_AVX2), CONSTANT(FIM_ISA_AVX512_VNNI), CONSTANT(FIM_ISA_AMX),
    {NULL, 0},
};

const FimLayout *fim_layouts(void) { return layouts; }

const FimConstant *fim_constants(void) { return constants; }
