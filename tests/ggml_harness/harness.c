/* npggml cross-check harness: runs one ggml op on the CPU backend.
 *
 * usage: harness SPEC OUT_PREFIX
 * SPEC is a whitespace-separated text file:
 *   op NAME
 *   ints N i_1 .. i_N
 *   floats N f_1 .. f_N
 *   inputs N
 *   then N lines "TYPE ne0 ne1 ne2 ne3 PATH" (TYPE f32|f16|bf16|i32; raw packed data) or "none"
 * Writes OUT_PREFIX.bin (the result's packed bytes) and OUT_PREFIX.txt ("TYPE ne0 ne1 ne2 ne3").
 * Threads: env NPGGML_GGML_THREADS (default 1).
 */
#include "ggml.h"
#include "ggml-cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXIN 8

static void die(const char * msg, const char * arg) {
    fprintf(stderr, "harness: %s %s\n", msg, arg ? arg : "");
    exit(2);
}

static enum ggml_type parse_type(const char * s) {
    if (!strcmp(s, "f32"))  return GGML_TYPE_F32;
    if (!strcmp(s, "f16"))  return GGML_TYPE_F16;
    if (!strcmp(s, "bf16")) return GGML_TYPE_BF16;
    if (!strcmp(s, "i32"))  return GGML_TYPE_I32;
    die("unknown type", s);
    return GGML_TYPE_F32;
}

static const char * type_name(enum ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32:  return "f32";
        case GGML_TYPE_F16:  return "f16";
        case GGML_TYPE_BF16: return "bf16";
        case GGML_TYPE_I32:  return "i32";
        default:             return "other";
    }
}

int main(int argc, char ** argv) {
    if (argc != 3) die("usage: harness SPEC OUT_PREFIX", NULL);
    FILE * f = fopen(argv[1], "r");
    if (!f) die("cannot open", argv[1]);

    char word[64], name[64];
    int ni = 0, nf = 0, nin = 0;
    int iv[32];
    float fv[32];
    if (fscanf(f, "%63s %63s", word, name) != 2 || strcmp(word, "op")) die("expected: op NAME", NULL);
    if (fscanf(f, "%63s %d", word, &ni) != 2 || strcmp(word, "ints") || ni > 32) die("expected: ints N", NULL);
    for (int i = 0; i < ni; i++) if (fscanf(f, "%d", &iv[i]) != 1) die("bad int", NULL);
    if (fscanf(f, "%63s %d", word, &nf) != 2 || strcmp(word, "floats") || nf > 32) die("expected: floats N", NULL);
    for (int i = 0; i < nf; i++) if (fscanf(f, "%f", &fv[i]) != 1) die("bad float", NULL);
    if (fscanf(f, "%63s %d", word, &nin) != 2 || strcmp(word, "inputs") || nin > MAXIN) die("expected: inputs N", NULL);

    struct ggml_init_params ip = { (size_t) 1 << 30, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * in[MAXIN] = { 0 };
    for (int i = 0; i < nin; i++) {
        char ts[16], path[4096];
        long long ne[4];
        if (fscanf(f, "%15s", ts) != 1) die("bad input line", NULL);
        if (!strcmp(ts, "none")) continue;
        if (fscanf(f, "%lld %lld %lld %lld %4095s", &ne[0], &ne[1], &ne[2], &ne[3], path) != 5) die("bad input", ts);
        in[i] = ggml_new_tensor_4d(ctx, parse_type(ts), ne[0], ne[1], ne[2], ne[3]);
        FILE * g = fopen(path, "rb");
        if (!g) die("cannot open", path);
        size_t n = ggml_nbytes(in[i]);
        if (fread(in[i]->data, 1, n, g) != n) die("short read", path);
        fclose(g);
    }
    fclose(f);

    struct ggml_tensor * a = in[0], * b = in[1], * c = in[2], * d = in[3];
    struct ggml_tensor * r = NULL;
    const char * op = name;
    if      (!strcmp(op, "rope_ext"))   r = ggml_rope_ext(ctx, a, b, c, iv[0], iv[1], iv[2], fv[0], fv[1], fv[2], fv[3], fv[4], fv[5]);
    else if (!strcmp(op, "rope_multi")) {
        int sec[4] = { iv[1], iv[2], iv[3], iv[4] };
        r = ggml_rope_multi(ctx, a, b, c, iv[0], sec, iv[5], iv[6], fv[0], fv[1], fv[2], fv[3], fv[4], fv[5]);
    }
    else if (!strcmp(op, "flash_attn_ext")) r = ggml_flash_attn_ext(ctx, a, b, c, d, fv[0], fv[1], fv[2]);
    else if (!strcmp(op, "im2col"))     r = ggml_im2col(ctx, a, b, iv[0], iv[1], iv[2], iv[3], iv[4], iv[5], iv[6] != 0,
                                                        iv[7] ? GGML_TYPE_F16 : GGML_TYPE_F32);
    else if (!strcmp(op, "conv_2d"))    r = ggml_conv_2d(ctx, a, b, iv[0], iv[1], iv[2], iv[3], iv[4], iv[5]);
    else if (!strcmp(op, "conv_2d_dw")) r = ggml_conv_2d_dw(ctx, a, b, iv[0], iv[1], iv[2], iv[3], iv[4], iv[5]);
    else if (!strcmp(op, "pool_2d"))    r = ggml_pool_2d(ctx, a, (enum ggml_op_pool) iv[0], iv[1], iv[2], iv[3], iv[4], fv[0], fv[1]);
    else if (!strcmp(op, "interpolate")) r = ggml_interpolate(ctx, a, iv[0], iv[1], iv[2], iv[3], (uint32_t) iv[4]);
    else if (!strcmp(op, "win_part"))   r = ggml_win_part(ctx, a, iv[0]);
    else if (!strcmp(op, "win_unpart")) r = ggml_win_unpart(ctx, a, iv[0], iv[1], iv[2]);
    else if (!strcmp(op, "get_rel_pos")) r = ggml_get_rel_pos(ctx, a, iv[0], iv[1]);
    else if (!strcmp(op, "add_rel_pos")) r = ggml_add_rel_pos(ctx, a, b, c);
    else if (!strcmp(op, "arange"))     r = ggml_arange(ctx, fv[0], fv[1], fv[2]);
    else if (!strcmp(op, "group_norm")) r = ggml_group_norm(ctx, a, iv[0], fv[0]);
    else if (!strcmp(op, "argmax"))     r = ggml_argmax(ctx, a);
    else if (!strcmp(op, "soft_max_ext")) r = ggml_soft_max_ext(ctx, a, b, fv[0], fv[1]);
    else if (!strcmp(op, "norm"))       r = ggml_norm(ctx, a, fv[0]);
    else if (!strcmp(op, "rms_norm"))   r = ggml_rms_norm(ctx, a, fv[0]);
    else if (!strcmp(op, "mul_mat"))    r = ggml_mul_mat(ctx, a, b);
    else if (!strcmp(op, "add"))        r = ggml_add(ctx, a, b);
    else if (!strcmp(op, "mul"))        r = ggml_mul(ctx, a, b);
    else if (!strcmp(op, "sub"))        r = ggml_sub(ctx, a, b);
    else if (!strcmp(op, "div"))        r = ggml_div(ctx, a, b);
    else if (!strcmp(op, "swiglu"))     r = iv[0] ? ggml_swiglu_swapped(ctx, a) : ggml_swiglu(ctx, a);
    else if (!strcmp(op, "geglu"))      r = iv[0] ? ggml_geglu_swapped(ctx, a) : ggml_geglu(ctx, a);
    else if (!strcmp(op, "swiglu_split")) r = ggml_swiglu_split(ctx, a, b);
    else if (!strcmp(op, "geglu_split")) r = ggml_geglu_split(ctx, a, b);
    else if (!strcmp(op, "concat"))     r = ggml_concat(ctx, a, b, iv[0]);
    else if (!strcmp(op, "get_rows"))   r = ggml_get_rows(ctx, a, b);
    else if (!strcmp(op, "pad_ext"))    r = ggml_pad_ext(ctx, a, iv[0], iv[1], iv[2], iv[3], iv[4], iv[5], iv[6], iv[7]);
    else if (!strcmp(op, "repeat_4d"))  r = ggml_repeat_4d(ctx, a, iv[0], iv[1], iv[2], iv[3]);
    else if (!strcmp(op, "sqr"))        r = ggml_sqr(ctx, a);
    else if (!strcmp(op, "sqrt"))       r = ggml_sqrt(ctx, a);
    else if (!strcmp(op, "relu"))       r = ggml_relu(ctx, a);
    else if (!strcmp(op, "clamp"))      r = ggml_clamp(ctx, a, fv[0], fv[1]);
    else if (!strcmp(op, "add1"))       r = ggml_add1(ctx, a, b);
    else if (!strcmp(op, "scale"))      r = ggml_scale(ctx, a, fv[0]);
    else if (!strcmp(op, "sum_rows"))   r = ggml_sum_rows(ctx, a);
    else if (!strcmp(op, "mean"))       r = ggml_mean(ctx, a);
    else if (!strcmp(op, "gelu"))       r = ggml_gelu(ctx, a);
    else if (!strcmp(op, "gelu_erf"))   r = ggml_gelu_erf(ctx, a);
    else if (!strcmp(op, "gelu_quick")) r = ggml_gelu_quick(ctx, a);
    else if (!strcmp(op, "silu"))       r = ggml_silu(ctx, a);
    else if (!strcmp(op, "tanh"))       r = ggml_tanh(ctx, a);
    else if (!strcmp(op, "sigmoid"))    r = ggml_sigmoid(ctx, a);
    else if (!strcmp(op, "exp"))        r = ggml_exp(ctx, a);
    else die("unsupported op", op);

    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, r);
    const char * th = getenv("NPGGML_GGML_THREADS");
    if (ggml_graph_compute_with_ctx(ctx, gf, th ? atoi(th) : 1) != GGML_STATUS_SUCCESS) die("compute failed", op);

    char path[4200];
    snprintf(path, sizeof path, "%s.bin", argv[2]);
    FILE * o = fopen(path, "wb");
    if (!o) die("cannot write", path);
    struct ggml_tensor * rc = r;
    if (!ggml_is_contiguous(r)) die("result not contiguous", op);
    fwrite(rc->data, 1, ggml_nbytes(rc), o);
    fclose(o);
    snprintf(path, sizeof path, "%s.txt", argv[2]);
    o = fopen(path, "w");
    fprintf(o, "%s %lld %lld %lld %lld\n", type_name(rc->type), (long long) rc->ne[0], (long long) rc->ne[1],
            (long long) rc->ne[2], (long long) rc->ne[3]);
    fclose(o);
    ggml_free(ctx);
    return 0;
}
