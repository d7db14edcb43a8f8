// dsocr_bench: time llama.cpp's CPU vision encoder (tools/mtmd clip) on DeepSeek-OCR v1/v2 mmproj GGUFs.
//
// Uses the same code path as libmtmd at llama.cpp commit 0c1e57098:
//   image load   : mtmd_helper_bitmap_init_from_file (stb_image), converted to clip_image_u8 exactly as
//                  mtmd_tokenizer::add_media does
//   preprocessing: mtmd_image_preprocessor_deepseekocr::preprocess (what mtmd_context::init_vision selects
//                  for PROJECTOR_TYPE_DEEPSEEKOCR / DEEPSEEKOCR2)
//   view order   : tiles (v1: one fused tile-row per view, v2: one tile per view) row-major, then the
//                  global view (ov_img_first = false)
//   encoding     : clip_image_batch_encode, grouped either like mtmd_batch_add_chunk (llama-server,
//                  llama-mtmd-cli: consecutive chunks with equal n_tokens, total <= batch_max_tokens = 1024)
//                  or one view per call (mtmd_encode_chunk / mtmd_helper_eval_chunks)
//   clip_init    : same clip_context_params as mtmd_init_from_file with mtmd_context_params_default()
//                  (flash_attn AUTO, warmup on, image_min/max_tokens -1), CPU only.

#include "clip.h"
#include "clip-impl.h"
#include "clip-model.h"
#include "mtmd-image.h"
#include "mtmd.h"
#include "mtmd-helper.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

struct args_t {
    std::string mmproj;
    std::string image;
    int n_threads = 2;
    int repeat = 3;
    bool global_only = false;
    std::string fa = "auto";       // auto | on | off
    std::string batching = "mtmd"; // mtmd | none
    int batch_max_tokens = 1024;   // mtmd_context_params_default().batch_max_tokens
    std::string dump;
    bool verbose = false;
};

static void usage(const char * argv0) {
    fprintf(stderr,
        "usage: %s --mmproj FILE --image PNG [--threads N] [--repeat R] [--global-only]\n"
        "          [--fa auto|on|off] [--batching mtmd|none] [--batch-max-tokens N]\n"
        "          [--dump OUT(.npy|.bin)] [--verbose]\n"
        "  --threads N           n_threads passed to clip_image_batch_encode (default 2)\n"
        "  --repeat R            timed repeats after 1 untimed warm-up (default 3; 0 = warm-up only)\n"
        "  --global-only         encode only the global (last) view\n"
        "  --fa                  flash attention: auto (mtmd default; resolves to ON on CPU), on, off\n"
        "  --batching mtmd       group views like mtmd_batch_add_chunk (llama-server / llama-mtmd-cli) [default]\n"
        "  --batching none       one view per clip_image_batch_encode call (mtmd_encode_chunk / mtmd_helper_eval_chunks)\n"
        "  --batch-max-tokens N  mtmd batch_max_tokens (default 1024, = mtmd_context_params_default)\n"
        "  --dump OUT            write the concatenated embeddings of the warm-up run (LLM order, float32\n"
        "                        [n_tokens, n_embd]); .npy -> numpy file, else raw .bin + OUT.shape\n"
        "  --verbose             show llama.cpp's INFO log\n", argv0);
}

static bool parse_args(int argc, char ** argv, args_t & a) {
    for (int i = 1; i < argc; i++) {
        std::string s = argv[i];
        auto need = [&](const char * name) -> const char * {
            if (i + 1 >= argc) { fprintf(stderr, "missing value for %s\n", name); exit(1); }
            return argv[++i];
        };
        if      (s == "--mmproj")           a.mmproj = need("--mmproj");
        else if (s == "--image")            a.image = need("--image");
        else if (s == "--threads" || s == "-t") a.n_threads = atoi(need("--threads"));
        else if (s == "--repeat")           a.repeat = atoi(need("--repeat"));
        else if (s == "--global-only")      a.global_only = true;
        else if (s == "--fa")               a.fa = need("--fa");
        else if (s == "--batching")         a.batching = need("--batching");
        else if (s == "--batch-max-tokens") a.batch_max_tokens = atoi(need("--batch-max-tokens"));
        else if (s == "--dump")             a.dump = need("--dump");
        else if (s == "--verbose" || s == "-v") a.verbose = true;
        else if (s == "-h" || s == "--help") { usage(argv[0]); exit(0); }
        else { fprintf(stderr, "unknown argument: %s\n", s.c_str()); return false; }
    }
    if (a.mmproj.empty() || a.image.empty()) return false;
    if (a.fa != "auto" && a.fa != "on" && a.fa != "off") return false;
    if (a.batching != "mtmd" && a.batching != "none") return false;
    if (a.n_threads < 1 || a.repeat < 0) return false;
    return true;
}

// log callback: capture the resolved flash-attention setting, forward warnings/errors (or everything with -v)
static std::string g_fa_resolved = "?";
static bool g_verbose = false;
static void log_cb(enum ggml_log_level level, const char * text, void * /*user*/) {
    if (text) {
        const char * p = strstr(text, "flash attention is ");
        if (p) {
            g_fa_resolved = strstr(p, "enabled") ? "enabled" : (strstr(p, "disabled") ? "disabled" : "?");
        }
    }
    if (g_verbose || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static bool write_npy(const std::string & path, const std::vector<float> & data, size_t rows, size_t cols) {
    std::ofstream f(path, std::ios::binary);
    if (!f) return false;
    std::string hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "), }";
    size_t total = 10 + hdr.size() + 1;
    size_t pad = (64 - total % 64) % 64;
    hdr += std::string(pad, ' ') + "\n";
    const char magic[] = "\x93NUMPY\x01\x00";
    f.write(magic, 8);
    uint16_t hl = (uint16_t) hdr.size();
    f.write((const char *) &hl, 2);
    f.write(hdr.data(), hdr.size());
    f.write((const char *) data.data(), data.size() * sizeof(float));
    return (bool) f;
}

struct view_t {
    const clip_image_f32 * img;
    std::string kind;
    int n_tokens;
};

struct call_t {
    std::vector<int> views; // indices into views
    clip_image_f32_batch batch;
    int n_tokens = 0;
};

int main(int argc, char ** argv) {
    args_t a;
    if (!parse_args(argc, argv, a)) { usage(argv[0]); return 1; }
    g_verbose = a.verbose;
    mtmd_helper_log_set(log_cb, nullptr); // also sets the clip/mtmd logger
    ggml_log_set(log_cb, nullptr);

    using clk = std::chrono::steady_clock;
    auto ms_since = [](clk::time_point t0) {
        return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
    };

    // ---- load image (stb, as mtmd-helper does) ----
    mtmd_helper_bitmap_wrapper bw = mtmd_helper_bitmap_init_from_file(nullptr, a.image.c_str(), false,
                                                                       mtmd_helper_init_opt_default());
    if (!bw.bitmap) { fprintf(stderr, "failed to load image %s\n", a.image.c_str()); return 1; }
    clip_image_u8 img_u8;
    {
        const int nx = (int) mtmd_bitmap_get_nx(bw.bitmap);
        const int ny = (int) mtmd_bitmap_get_ny(bw.bitmap);
        const unsigned char * d = mtmd_bitmap_get_data(bw.bitmap);
        img_u8.set_size({nx, ny}, false);
        img_u8.cpy_buf(std::vector<uint8_t>(d, d + mtmd_bitmap_get_n_bytes(bw.bitmap)));
    }
    mtmd_bitmap_free(bw.bitmap);

    // ---- clip_init with mtmd's default context params ----
    clip_context_params cparams {
        /* use_gpu           */ false, // CPU-only build: identical to mtmd's default use_gpu=true
        /* device            */ nullptr,
        /* flash_attn_type   */ a.fa == "on" ? CLIP_FLASH_ATTN_TYPE_ENABLED
                                : a.fa == "off" ? CLIP_FLASH_ATTN_TYPE_DISABLED : CLIP_FLASH_ATTN_TYPE_AUTO,
        /* image_min_tokens  */ -1,
        /* image_max_tokens  */ -1,
        /* warmup            */ true,
        /* cb_eval           */ nullptr,
        /* cb_eval_user_data */ nullptr,
        /* no_alloc          */ false,
        /* progress_callback */ nullptr,
        /* progress_callback_user_data */ nullptr,
    };
    auto t_load = clk::now();
    clip_init_result res = clip_init(a.mmproj.c_str(), cparams);
    const double load_ms = ms_since(t_load);
    clip_ctx * ctx = res.ctx_v;
    if (!ctx) { fprintf(stderr, "failed to load vision encoder from %s\n", a.mmproj.c_str()); return 1; }
    const projector_type ptype = clip_get_projector_type(ctx);
    if (ptype != PROJECTOR_TYPE_DEEPSEEKOCR && ptype != PROJECTOR_TYPE_DEEPSEEKOCR2) {
        fprintf(stderr, "not a DeepSeek-OCR mmproj (projector type %d)\n", (int) ptype);
        return 1;
    }
    const bool is_v1 = ptype == PROJECTOR_TYPE_DEEPSEEKOCR;
    const int n_embd = clip_n_mmproj_embd(ctx);

    // ---- preprocessing (timed once here, also once per repeat below) ----
    mtmd_image_preprocessor_deepseekocr preproc(ctx);
    auto t_pp = clk::now();
    mtmd_image_preproc_out pp = preproc.preprocess(img_u8);
    const double pp_ms_first = ms_since(t_pp);

    // views in LLM order: tiles / tile rows, then the global view
    std::vector<view_t> views;
    for (auto & e : pp.entries) {
        views.push_back({&e, is_v1 ? "tile_row" : "tile", clip_n_output_tokens(ctx, &e)});
    }
    views.push_back({&pp.overview, "global", clip_n_output_tokens(ctx, &pp.overview)});
    const int first_view = a.global_only ? (int) views.size() - 1 : 0;

    // ---- group views into clip_image_batch_encode calls ----
    std::vector<call_t> calls;
    const bool can_batch = clip_support_batch(ctx);
    for (int i = first_view; i < (int) views.size(); i++) {
        bool added = false;
        if (a.batching == "mtmd" && !calls.empty() && can_batch) {
            // mtmd_batch_add_chunk: consecutive media chunks, same (nx, ny, pos) -> same n_tokens for
            // DeepSeek-OCR, total tokens <= batch_max_tokens
            call_t & c = calls.back();
            if (c.n_tokens + views[i].n_tokens <= a.batch_max_tokens &&
                views[c.views[0]].n_tokens == views[i].n_tokens) {
                c.views.push_back(i);
                c.n_tokens += views[i].n_tokens;
                added = true;
            }
        }
        if (!added) {
            call_t c;
            c.views.push_back(i);
            c.n_tokens = views[i].n_tokens;
            calls.push_back(std::move(c));
        }
    }
    for (auto & c : calls) {
        c.batch.is_audio = false;
        for (int vi : c.views) c.batch.entries.push_back(*views[vi].img); // copy, as mtmd_batch_encode clones
    }

    int total_tokens = 0;
    for (auto & c : calls) total_tokens += c.n_tokens;

    // ---- report setup ----
    printf("mmproj        : %s\n", a.mmproj.c_str());
    printf("projector     : %s\n", is_v1 ? "deepseekocr (v1)" : "deepseekocr2 (v2)");
    printf("image         : %s (%d x %d)\n", a.image.c_str(), img_u8.get_size().width, img_u8.get_size().height);
    printf("threads       : %d\n", a.n_threads);
    printf("flash attn    : requested %s -> resolved %s\n", a.fa.c_str(), g_fa_resolved.c_str());
    printf("batching      : %s%s (clip_support_batch=%d)\n", a.batching.c_str(),
           a.batching == "mtmd" ? (" batch_max_tokens=" + std::to_string(a.batch_max_tokens)).c_str() : "",
           (int) can_batch);
    printf("grid (mtmd)   : grid_x=%d grid_y=%d%s\n", pp.grid_x, pp.grid_y,
           is_v1 && pp.grid_y > 0 ? " (v1: one fused tile row per view)" : "");
    printf("load          : %.1f ms (clip_init incl. mtmd-style warmup)\n", load_ms);
    printf("preprocess    : %.1f ms (first call)\n", pp_ms_first);
    printf("n_embd        : %d\n", n_embd);
    for (int i = 0; i < (int) views.size(); i++) {
        const auto & v = views[i];
        printf("view %d        : %-8s %4d x %-4d  -> %d tokens x %d%s\n", i, v.kind.c_str(), v.img->nx(), v.img->ny(),
               v.n_tokens, n_embd, i < first_view ? "  (skipped: --global-only)" : "");
    }
    for (int k = 0; k < (int) calls.size(); k++) {
        printf("encode call %d : views [", k);
        for (size_t j = 0; j < calls[k].views.size(); j++) printf("%s%d", j ? "," : "", calls[k].views[j]);
        printf("], batch of %zu image(s), %d tokens\n", calls[k].views.size(), calls[k].n_tokens);
    }
    printf("output        : %d tokens x %d = %zu floats\n", total_tokens, n_embd, (size_t) total_tokens * n_embd);
    fflush(stdout);

    // ---- run: 1 warm-up + R timed repeats ----
    std::vector<std::vector<float>> outs(calls.size());
    std::vector<double> totals, pp_times;
    std::vector<std::vector<double>> call_times(calls.size());
    for (int r = 0; r <= a.repeat; r++) {
        // preprocessing is timed separately (not part of the encode total)
        auto tp = clk::now();
        mtmd_image_preproc_out pp_tmp = preproc.preprocess(img_u8);
        const double pp_ms = ms_since(tp);
        (void) pp_tmp;

        std::vector<double> ct(calls.size());
        auto t0 = clk::now();
        for (size_t k = 0; k < calls.size(); k++) {
            auto tc = clk::now();
            outs[k].resize((size_t) n_embd * calls[k].n_tokens); // as mtmd_encode_impl
            if (!clip_image_batch_encode(ctx, a.n_threads, &calls[k].batch, outs[k])) {
                fprintf(stderr, "clip_image_batch_encode failed (call %zu)\n", k);
                return 1;
            }
            ct[k] = ms_since(tc);
        }
        const double total = ms_since(t0);

        printf("%s %d: total %.1f ms  [", r == 0 ? "warm-up" : "repeat ", r, total);
        for (size_t k = 0; k < calls.size(); k++) printf("%scall%zu %.1f", k ? ", " : "", k, ct[k]);
        printf("]  (preprocess %.1f ms)\n", pp_ms);
        fflush(stdout);

        if (r == 0) {
            size_t n_nonfinite = 0;
            for (auto & o : outs) for (float x : o) n_nonfinite += !std::isfinite(x);
            printf("output check  : %zu non-finite values%s\n", n_nonfinite, n_nonfinite ? "  (WARNING)" : "");
            if (!a.dump.empty()) {
                std::vector<float> all;
                for (auto & o : outs) all.insert(all.end(), o.begin(), o.end());
                const size_t rows = all.size() / n_embd;
                bool ok;
                if (a.dump.size() >= 4 && a.dump.substr(a.dump.size() - 4) == ".npy") {
                    ok = write_npy(a.dump, all, rows, n_embd);
                } else {
                    std::ofstream f(a.dump, std::ios::binary);
                    f.write((const char *) all.data(), all.size() * sizeof(float));
                    ok = (bool) f;
                    std::ofstream fs(a.dump + ".shape");
                    fs << rows << " " << n_embd << "\n";
                }
                printf("dumped        : %s  float32 [%zu, %d] %s\n", a.dump.c_str(), rows, n_embd, ok ? "" : "(WRITE FAILED)");
            }
            continue;
        }
        totals.push_back(total);
        pp_times.push_back(pp_ms);
        for (size_t k = 0; k < calls.size(); k++) call_times[k].push_back(ct[k]);
    }

    if (a.repeat > 0) {
        printf("median of %d  : total encode %.1f ms", a.repeat, median(totals));
        printf("  (min %.1f, max %.1f)\n", *std::min_element(totals.begin(), totals.end()),
               *std::max_element(totals.begin(), totals.end()));
        for (size_t k = 0; k < calls.size(); k++) {
            printf("  call %zu views [", k);
            for (size_t j = 0; j < calls[k].views.size(); j++) printf("%s%d:%s", j ? "," : "", calls[k].views[j], views[calls[k].views[j]].kind.c_str());
            printf("] median %.1f ms\n", median(call_times[k]));
        }
        printf("  preprocess median %.1f ms\n", median(pp_times));
    }
    printf("RESULT proj=%s threads=%d fa=%s batching=%s global_only=%d tokens=%d median_ms=%.1f\n",
           is_v1 ? "v1" : "v2", a.n_threads, g_fa_resolved.c_str(), a.batching.c_str(), (int) a.global_only,
           total_tokens, a.repeat > 0 ? median(totals) : -1.0);

    clip_free(ctx);
    if (res.ctx_a) clip_free(res.ctx_a);
    if (res.ctx_gen_a) clip_free(res.ctx_gen_a);
    return 0;
}
