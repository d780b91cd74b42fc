/* Block-quantized matrix product y = x · Wᵀ on the CPU, for any number of rows of x.

   W is [N, K] in blocks of 32 weights along K, each with its own float scale d (ggml Q4_0, Q4_1, Q8_0;
   mai's per-channel int8 is Q8 with one d per row). Like llama.cpp's CPU path, each 32-value block of a
   row of x is quantized to int8 with its own scale dx, so one AVX-512 VNNI instruction (vpdpbusd)
   multiplies 64 weight codes by 64 activation codes and sums them in int32; per block the int32 sum is
   scaled by d·dx in float32:

     Q4_0  w = d·(q − 8), q in [0, 15]:   y += d·dx·(Σ q·xq − 8·Σ xq)
     Q4_1  w = d·(q − 8) + m:              y += d·dx·(Σ q·xq − 8·Σ xq) + m·Σx   (m: the file's min + 8d)
     Q8    w = d·c, c in [−128, 127]:      y += d·dx·(Σ (c+128)·xq − 128·Σ xq)   (vpdpbusd takes u8 × s8)

   Packed layout (mai.infer.kernels.qmatmul packs it once at load): 16 output rows form a tile, so the 16
   lanes of a vector are 16 outputs, and for every 4 consecutive k the 4 codes of an output are adjacent:
   byte n·4 + j of a 64-byte vector is the code of output n at k = 4t + j. 4-bit codes pair quad t
   (low nibble) with quad t + 4 (high nibble): 4 such vectors per block and tile, 8 for 8-bit codes.
   Scales d and minimums m are float32 [N/16, K/32, 16]. The tiles are split over OpenMP threads (the
   process's libgomp, the one torch runs on).

   Exported: mai_qmm_supported() says whether this build has the VNNI path; mai_qmm(...) computes. */

#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define MAI_QMM_VNNI 1
#else
#define MAI_QMM_VNNI 0
#endif

int mai_qmm_supported(void) { return MAI_QMM_VNNI; }

#if MAI_QMM_VNNI

#define TILE 16
#define BLOCK 32
#define MAX_ROWS 4 /* rows of x that share one unpacking of a weight block */

/* Row blocks of x → int8 codes, their scale dx, the codes' sum times the code offset (8 or 128),
   and the float sum of the block (for Q4_1's minimum). */
static void quantize_rows(const float *x, int64_t rows, int64_t k, int offset, int8_t *xq, float *dx,
                          int32_t *csum, float *xsum) {
    const int64_t groups = k / BLOCK;
    for (int64_t i = 0; i < rows * groups; i++) {
        const float *p = x + i * BLOCK;
        __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        float d = amax / 127.0f;
        __m512 inv = _mm512_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));
        __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
        _mm_storeu_si128((__m128i *)(xq + i * BLOCK), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(xq + i * BLOCK + 16), _mm512_cvtsepi32_epi8(qb));
        dx[i] = d;
        csum[i] = offset * _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        xsum[i] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
    }
}

static inline __m512i bcast4(const int8_t *p) { return _mm512_set1_epi32(*(const int32_t *)p); }

/* One tile (16 outputs) × `rows` rows of x (≤ MAX_ROWS): every weight block unpacked once for all rows. */
static inline void tile_rows(const uint8_t *w, const float *d, const float *mn, int bits, int64_t groups,
                             const int8_t *xq, const float *dx, const int32_t *csum, const float *xsum,
                             int64_t k, int rows, float *y, int64_t n) {
    __m512 acc[MAX_ROWS];
    for (int r = 0; r < MAX_ROWS; r++) acc[r] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(0x0F);
    const int64_t block_bytes = bits == 4 ? 4 * 64 : 8 * 64;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wb = w + g * block_bytes;
        __m512i wv[8];
        if (bits == 4) {
            for (int t = 0; t < 4; t++) {
                __m512i v = _mm512_loadu_si512((const void *)(wb + 64 * t));
                wv[t] = _mm512_and_si512(v, low);
                wv[t + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
        } else {
            for (int t = 0; t < 8; t++) wv[t] = _mm512_loadu_si512((const void *)(wb + 64 * t));
        }
        const __m512 dv = _mm512_loadu_ps(d + g * TILE);
        const __m512 mv = mn ? _mm512_loadu_ps(mn + g * TILE) : _mm512_setzero_ps();
        for (int r = 0; r < rows; r++) {
            const int8_t *xp = xq + r * k + g * BLOCK;
            const int64_t at = r * groups + g;
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], bcast4(xp));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], bcast4(xp + 4));
            s0 = _mm512_dpbusd_epi32(s0, wv[2], bcast4(xp + 8));
            s1 = _mm512_dpbusd_epi32(s1, wv[3], bcast4(xp + 12));
            s0 = _mm512_dpbusd_epi32(s0, wv[4], bcast4(xp + 16));
            s1 = _mm512_dpbusd_epi32(s1, wv[5], bcast4(xp + 20));
            s0 = _mm512_dpbusd_epi32(s0, wv[6], bcast4(xp + 24));
            s1 = _mm512_dpbusd_epi32(s1, wv[7], bcast4(xp + 28));
            __m512i s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(csum[at]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dv, _mm512_set1_ps(dx[at])), acc[r]);
            if (mn) acc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xsum[at]), acc[r]);
        }
    }
    for (int r = 0; r < rows; r++) _mm512_storeu_ps(y + r * n, acc[r]);
}

#endif

/* y [rows, n] = x [rows, k] · Wᵀ. `offset` is the code offset above (8 for 4-bit codes, 128 for 8-bit
   ones); `mn` holds Q4_1's minimums, NULL otherwise. Returns 0, or −1 where this build cannot compute. */
int mai_qmm(const float *x, int64_t rows, int64_t k, const uint8_t *w, const float *d, const float *mn,
            int bits, int offset, float *y, int64_t n, int threads) {
#if MAI_QMM_VNNI
    const int64_t groups = k / BLOCK, tiles = n / TILE;
    int8_t *xq = malloc(rows * k);
    float *dx = malloc(sizeof(float) * rows * groups), *xsum = malloc(sizeof(float) * rows * groups);
    int32_t *csum = malloc(sizeof(int32_t) * rows * groups);
    if (!xq || !dx || !xsum || !csum) {
        free(xq), free(dx), free(xsum), free(csum);
        return -1;
    }
    quantize_rows(x, rows, k, offset, xq, dx, csum, xsum);
    const int64_t tile_bytes = groups * (bits == 4 ? 4 : 8) * 64;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
            int r = rows - r0 < MAX_ROWS ? (int)(rows - r0) : MAX_ROWS;
            tile_rows(w + t * tile_bytes, d + t * groups * TILE, mn ? mn + t * groups * TILE : NULL, bits,
                      groups, xq + r0 * k, dx + r0 * groups, csum + r0 * groups, xsum + r0 * groups, k, r,
                      y + r0 * n + t * TILE, n);
        }
    }
    free(xq), free(dx), free(xsum), free(csum);
    return 0;
#else
    (void)x, (void)rows, (void)k, (void)w, (void)d, (void)mn, (void)bits, (void)offset, (void)y, (void)n;
    (void)threads;
    return -1;
#endif
}
