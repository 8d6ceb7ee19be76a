/* saekit native kernels: the Gram-path matching pursuit and the Gram mirror (fp32, CPU).
 *
 * Built on first use by saekit/kernels/native.py (cc -O3 -fPIC -shared, -mavx2 -mfma where the
 * CPU has them) and called through ctypes, which releases the GIL: the worker threads of
 * saekit/kernels/row_threads.py run chunks of rows in parallel.
 *
 * mp_gram_steps: for each row, given its correlations c = r Eᵀ + bias (P floats, −inf where an
 * atom may not be selected), run T steps of
 *     j = argmax c (first index among ties, as block_argmax), a = ReLU(<e_j, r>)·open[j],
 *     r −= a·d_j, c −= a·G[j]  (not after the last step)
 * with the next argmax tracked in the same pass as the update, so a row's c stays in L1/L2 for
 * all T steps and each step streams one G row. Rows go in pairs, step by step, each update
 * prefetching the G row the other row reads next.
 */
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SAEKIT_AVX2 1
#endif

#define BLOCK 128 /* saekit.kernels.pursuit.BLOCK: argmax blocks */
#define PF_HINT _MM_HINT_T1 /* prefetch into L2: the row's own c is there, L1 is too small */

#ifdef SAEKIT_AVX2
static float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}
#endif

/* Maximum of c[0..n) with c[i] −= a·g[i] first when g is not NULL; pf[0..n), when not NULL,
 * is prefetched meanwhile. */
static float update_max(float *c, const float *g, float a, int64_t n, const float *pf) {
    float best = -INFINITY;
    int64_t i = 0;
#ifdef SAEKIT_AVX2
    if (n >= 8) {
        /* Four running maxima, so the max chain's latency does not bound the loop (the
         * maximum is the same in any order). */
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
        if (g) {
            __m256 va = _mm256_set1_ps(a);
            /* c − (a·g), two roundings like torch's update, not one fused multiply-add */
#define SAEKIT_UPDATE(off, m)                                                                 \
    do {                                                                                       \
        __m256 v = _mm256_sub_ps(_mm256_loadu_ps(c + i + (off)),                               \
                                 _mm256_mul_ps(va, _mm256_loadu_ps(g + i + (off))));           \
        _mm256_storeu_ps(c + i + (off), v);                                                    \
        m = _mm256_max_ps(m, v);                                                               \
    } while (0)
            for (; i + 32 <= n; i += 32) {
                if (pf) {
                    _mm_prefetch((const char *)(pf + i), PF_HINT);
                    _mm_prefetch((const char *)(pf + i + 16), PF_HINT);
                }
                SAEKIT_UPDATE(0, m0);
                SAEKIT_UPDATE(8, m1);
                SAEKIT_UPDATE(16, m2);
                SAEKIT_UPDATE(24, m3);
            }
            for (; i + 8 <= n; i += 8) SAEKIT_UPDATE(0, m0);
#undef SAEKIT_UPDATE
        } else {
            for (; i + 32 <= n; i += 32) {
                m0 = _mm256_max_ps(m0, _mm256_loadu_ps(c + i));
                m1 = _mm256_max_ps(m1, _mm256_loadu_ps(c + i + 8));
                m2 = _mm256_max_ps(m2, _mm256_loadu_ps(c + i + 16));
                m3 = _mm256_max_ps(m3, _mm256_loadu_ps(c + i + 24));
            }
            for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(c + i));
        }
        best = hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    }
#endif
    for (; i < n; i++) {
        if (g) c[i] -= a * g[i];
        if (c[i] > best) best = c[i];
    }
    return best;
}

/* One pass over a row: optional update, then the first index of the maximum. As block_argmax:
 * the first block holding the maximum, then the first index inside it holding it. */
static int64_t update_argmax(float *c, const float *g, float a, int64_t P, const float *pf) {
    int64_t width = P <= BLOCK ? P : BLOCK, best_block = 0;
    float best = -INFINITY;
    for (int64_t b0 = 0; b0 < P; b0 += width) {
        float m = update_max(c + b0, g ? g + b0 : NULL, a, width, pf ? pf + b0 : NULL);
        if (m > best) {
            best = m;
            best_block = b0;
        }
    }
    for (int64_t i = best_block; i < best_block + width; i++)
        if (c[i] == best) return i;
    return best_block;
}

static float dot(const float *x, const float *y, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#ifdef SAEKIT_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    }
    __m256 t = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    s = _mm_cvtss_f32(h);
#endif
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

static void axpy(float *r, const float *d, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) r[i] -= a * d[i];
}

/* c: R×P (row stride P), r: R×D, E, Dm: S×D (Dm == E when tied), G: S×P, open: S or NULL,
 * a_out: R×T floats, j_out: R×T int64 (row stride T). */
void mp_gram_steps(int64_t R, int64_t P, int64_t D, int64_t T, float *c, float *r,
                   const float *E, const float *Dm, const float *G, const float *open,
                   float *a_out, int64_t *j_out) {
    /* Two rows in lockstep: while one row's update streams its G row, the other's next G row
     * is prefetched, so two row reads are in flight. */
    for (int64_t row0 = 0; row0 < R; row0 += 2) {
        int64_t n = R - row0 < 2 ? R - row0 : 2, jj[2];
        for (int64_t q = 0; q < n; q++)
            jj[q] = update_argmax(c + (row0 + q) * P, NULL, 0.0f, P, NULL);
        for (int64_t t = 0; t < T; t++) {
            for (int64_t q = 0; q < n; q++) {
                int64_t row = row0 + q, j = jj[q];
                float *c_P = c + row * P, *r_D = r + row * D;
                float a = dot(r_D, E + j * D, D);
                a = a > 0.0f ? a : 0.0f;
                if (open) a *= open[j];
                axpy(r_D, Dm + j * D, a, D);
                a_out[row * T + t] = a;
                j_out[row * T + t] = j;
                if (t + 1 < T) {
                    const float *pf = NULL;
                    if (n == 2) pf = G + jj[1 - q] * P; /* the other row's next G row */
                    jj[q] = update_argmax(c_P, G + j * P, a, P, pf);
                }
            }
        }
    }
}

/* The backward of mp_gram_steps for the rows [0, R) (MatchingPursuit.backward in
 * saekit/kernels/pursuit.py), one row through all T steps at a time, so r and ḡ stay in L1:
 *     r_{t−1} = r_t + a_t d_j,  s = (∂L/∂a_t − <ḡ_t, d_j>)·[a_t > 0],
 *     ∂e_j += s r_{t−1},  ∂d_j −= a_t ḡ_t,  ḡ_{t−1} = ḡ_t + s e_j.
 * r: r_T → r_0 and g: ∂L/∂r_T → ∂L/∂r_0 in place (R×D); g_a, a: R×T; j: R×T int64. Tied when
 * gD == gE (then Dm == E, one gradient). gE, gD: S×D, added to in row order. */
void mp_backward(int64_t R, int64_t D, int64_t T, float *r, float *g, const float *g_a,
                 const float *a, const int64_t *j, const float *E, const float *Dm, float *gE,
                 float *gD) {
    for (int64_t row = 0; row < R; row++) {
        float *r_D = r + row * D, *g_D = g + row * D;
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t at = row * T + t, jt = j[at];
            float a_t = a[at];
            const float *e = E + jt * D, *d = Dm + jt * D;
            float *ge = gE + jt * D, *gd = gD + jt * D;
            axpy(r_D, d, -a_t, D);
            float s = a_t > 0.0f ? g_a[at] - dot(g_D, d, D) : 0.0f;
            if (gd == ge) {
                for (int64_t i = 0; i < D; i++) ge[i] += r_D[i] * s - a_t * g_D[i];
            } else {
                for (int64_t i = 0; i < D; i++) ge[i] += r_D[i] * s;
                for (int64_t i = 0; i < D; i++) gd[i] -= a_t * g_D[i];
            }
            axpy(g_D, e, -s, D);
        }
    }
}

/* dst[r][c] = src[c][r] for an h × w block (row stride ld for both): 8 × 8 blocks through
 * registers, so both sides move whole 32-byte rows. */
static void copy_transposed(float *dst, const float *src, int64_t ld, int64_t h, int64_t w) {
#ifdef SAEKIT_AVX2
    if (h == 8 && w == 8) {
        __m256 r0 = _mm256_loadu_ps(src + 0 * ld), r1 = _mm256_loadu_ps(src + 1 * ld);
        __m256 r2 = _mm256_loadu_ps(src + 2 * ld), r3 = _mm256_loadu_ps(src + 3 * ld);
        __m256 r4 = _mm256_loadu_ps(src + 4 * ld), r5 = _mm256_loadu_ps(src + 5 * ld);
        __m256 r6 = _mm256_loadu_ps(src + 6 * ld), r7 = _mm256_loadu_ps(src + 7 * ld);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        _mm256_storeu_ps(dst + 0 * ld, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(dst + 1 * ld, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(dst + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(dst + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(dst + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(dst + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(dst + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(dst + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
        return;
    }
#endif
    for (int64_t r = 0; r < h; r++)
        for (int64_t c = 0; c < w; c++) dst[r * ld + c] = src[c * ld + r];
}

/* Symmetric G (n × n inside an n × ld row-major buffer): one triangle copied into the other,
 * for the tile rows [tile0, tile1) of the lower triangle (tile row ti holds ti + 1 tiles).
 * from_upper: the upper triangle is the source. TILE × TILE tiles keep both sides of a copy in
 * L1; inside them 8 × 8 register transposes. The diagonal stays as it is. */
#define TILE 64
void gram_mirror(float *G, int64_t n, int64_t ld, int64_t tile0, int64_t tile1,
                 int from_upper) {
    int64_t tiles = (n + TILE - 1) / TILE;
    for (int64_t ti = tile0; ti < tile1 && ti < tiles; ti++) {
        int64_t i0 = ti * TILE, i1 = i0 + TILE < n ? i0 + TILE : n;
        for (int64_t j0 = 0; j0 < i1; j0 += TILE) {
            int64_t j1 = j0 + TILE < i1 ? j0 + TILE : i1;
            for (int64_t ib = i0; ib < i1; ib += 8) {
                int64_t h = i1 - ib < 8 ? i1 - ib : 8;
                for (int64_t jb = j0; jb < j1 && jb <= ib; jb += 8) {
                    int64_t w = j1 - jb < 8 ? j1 - jb : 8;
                    /* lower block (ib, jb) and its upper mirror (jb, ib) */
                    float *lo = G + ib * ld + jb, *up = G + jb * ld + ib;
                    if (jb < ib) {
                        if (from_upper)
                            copy_transposed(lo, up, ld, h, w);
                        else
                            copy_transposed(up, lo, ld, w, h);
                        continue;
                    }
                    for (int64_t r = 0; r < h; r++) /* the diagonal block: below it only */
                        for (int64_t c = 0; c < r; c++) {
                            if (from_upper)
                                lo[r * ld + c] = up[c * ld + r];
                            else
                                up[c * ld + r] = lo[r * ld + c];
                        }
                }
            }
        }
    }
}
