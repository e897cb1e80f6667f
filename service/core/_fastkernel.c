/* The dropout kernel's inner loop in one pass: out = keep flag ? x / keep : +0.0.
 *
 * Optional: service/core/fastkernel.py uses it when it is built and falls back to the
 * numpy kernel (service/core/kernel.py), which stays the reference, when it is not.
 *
 * The tensor is seen as (rows, spatial, width) elements, contiguous, with one keep flag per
 * (row, width) pair: spatial dropout channels_last is (N, H*W, C), channels_first is
 * (N*C, H*W, 1), element-wise dropout is (1, 1, size). A row whose flags are all set is only
 * divided, one whose flags are all clear is zero-filled without reading x.
 *
 * Arithmetic, identical to the numpy kernel's: float32 and float64 divide in their own type
 * (IEEE division, correctly rounded). float16 and bfloat16 divide in float32 and round once
 * to nearest-even, which is their correctly rounded quotient (float32 has at least 2p + 2
 * bits for both); bfloat16 NaN becomes the quiet NaN 0x7FC0 with its sign, as ml_dtypes'
 * cast does. Nothing here is compiled with fast-math: x / keep is never x * (1 / keep).
 *
 * On x86_64 an AVX2 + F16C version of each loop is chosen at run time when the CPU has
 * them (__builtin_cpu_supports), so the module is built for any x86_64. Elsewhere, and
 * without F16C, float16 looks its quotient up in a 65536-entry table that the caller builds
 * with the numpy kernel's own division.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_DISPATCH 1
#include <immintrin.h>
#else
#define HAVE_X86_DISPATCH 0
#endif

enum dtype_code { F16 = 0, BF16 = 1, F32 = 2, F64 = 3 };

static const size_t ITEMSIZE[4] = {2, 2, 4, 8};

/* Flags shorter than this are tiled so that each masked call covers at least this many
 * elements: the vector loops then rarely end in a scalar tail. */
#define MIN_PERIOD 256

typedef struct {
    int dtype;
    float keep32;
    double keep64;
    const uint16_t *table; /* float16 quotient bits by input bits, or NULL */
} params;

/* ---- portable loops: flags == NULL means every element is kept ------------------------- */

static inline uint16_t bf16_round(float q) {
    uint32_t b;
    memcpy(&b, &q, 4);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(((b >> 16) & 0x8000u) | 0x7FC0u);
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline float bf16_widen(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float v;
    memcpy(&v, &b, 4);
    return v;
}

/* All ones where the element is kept, zero where it is dropped: the loops below mask bits
 * rather than branch, so that the compiler can vectorise them. */
#define KEPT(type, flags, i) ((type) - (type)(!(flags) || (flags)[i] != 0))

static void plain_loop(const params *p, const void *src, void *dst, size_t n,
                       const uint8_t *flags) {
    switch (p->dtype) {
    case F16: {
        const uint16_t *s = src;
        uint16_t *d = dst;
        const uint16_t *t = p->table;
        for (size_t i = 0; i < n; i++) d[i] = t[s[i]] & KEPT(uint16_t, flags, i);
        break;
    }
    case BF16: {
        const uint16_t *s = src;
        uint16_t *d = dst;
        const float k = p->keep32;
        for (size_t i = 0; i < n; i++)
            d[i] = bf16_round(bf16_widen(s[i]) / k) & KEPT(uint16_t, flags, i);
        break;
    }
    case F32: {
        const float *s = src;
        uint32_t *d = dst;
        const float k = p->keep32;
        for (size_t i = 0; i < n; i++) {
            float q = s[i] / k;
            uint32_t b;
            memcpy(&b, &q, 4);
            d[i] = b & KEPT(uint32_t, flags, i);
        }
        break;
    }
    case F64: {
        const double *s = src;
        uint64_t *d = dst;
        const double k = p->keep64;
        for (size_t i = 0; i < n; i++) {
            double q = s[i] / k;
            uint64_t b;
            memcpy(&b, &q, 8);
            d[i] = b & KEPT(uint64_t, flags, i);
        }
        break;
    }
    }
}

/* ---- AVX2 + F16C loops ------------------------------------------------------------------ */

#if HAVE_X86_DISPATCH
#define AVX2 __attribute__((target("avx2,f16c")))

/* 0 or all ones per 32-bit lane, from 8 flag bytes. */
AVX2 static inline __m256i lanes32(const uint8_t *flags) {
    __m128i bytes = _mm_loadl_epi64((const __m128i *)flags);
    return _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_setzero_si256());
}

AVX2 static inline __m256i lanes64(const uint8_t *flags) {
    int32_t four;
    memcpy(&four, flags, 4);
    __m128i bytes = _mm_cvtsi32_si128(four);
    return _mm256_cmpgt_epi64(_mm256_cvtepu8_epi64(bytes), _mm256_setzero_si256());
}

AVX2 static inline __m128i lanes16(const uint8_t *flags) {
    __m128i bytes = _mm_loadl_epi64((const __m128i *)flags);
    return _mm_cmpgt_epi16(_mm_cvtepu8_epi16(bytes), _mm_setzero_si128());
}

/* bfloat16 bits (32-bit lanes, below 2**16) of the float32 quotients, rounded to nearest-even;
 * NaN lanes are fixed afterwards, from the input's bits. */
AVX2 static inline __m256i bf16_round_lanes(__m256 q) {
    __m256i b = _mm256_castps_si256(q);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, lsb), _mm256_set1_epi32(0x7FFF)),
                             16);
}

/* 16 bfloat16 quotients. Unpacking with zero below widens each value to its float32 bits
 * (x << 16) in the order that the saturating pack restores, so no lane permute is needed.
 * The quotient is NaN exactly when x is (keep is in (0, 1]; at keep 0 nothing is kept), and
 * ml_dtypes makes every NaN the quiet 0x7FC0 with its sign: done here on the 16-bit lanes. */
AVX2 static inline __m256i bf16_divide16(__m256i v, __m256 k) {
    __m256i zero = _mm256_setzero_si256();
    __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
    __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
    /* Every lane is below 2**16, so the signed-to-unsigned saturating pack is exact. */
    __m256i q = _mm256_packus_epi32(bf16_round_lanes(_mm256_div_ps(lo, k)),
                                    bf16_round_lanes(_mm256_div_ps(hi, k)));
    __m256i magnitude = _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF));
    __m256i is_nan = _mm256_cmpgt_epi16(magnitude, _mm256_set1_epi16(0x7F80));
    __m256i nan = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi16((short)0x8000)),
                                  _mm256_set1_epi16(0x7FC0));
    return _mm256_blendv_epi8(q, nan, is_nan);
}

AVX2 static void avx2_loop(const params *p, const void *src, void *dst, size_t n,
                           const uint8_t *flags) {
    size_t i = 0;
    switch (p->dtype) {
    case F16: {
        const uint16_t *s = src;
        uint16_t *d = dst;
        const __m256 k = _mm256_set1_ps(p->keep32);
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i)));
            __m128i q = _mm256_cvtps_ph(_mm256_div_ps(v, k), _MM_FROUND_TO_NEAREST_INT);
            if (flags) q = _mm_and_si128(q, lanes16(flags + i));
            _mm_storeu_si128((__m128i *)(d + i), q);
        }
        for (; i < n; i++) {
            __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128(s[i]));
            __m128i q = _mm_cvtps_ph(_mm_div_ps(v, _mm_set1_ps(p->keep32)),
                                     _MM_FROUND_TO_NEAREST_INT);
            d[i] = (!flags || flags[i]) ? (uint16_t)_mm_cvtsi128_si32(q) : 0;
        }
        return;
    }
    case BF16: {
        const uint16_t *s = src;
        uint16_t *d = dst;
        const __m256 k = _mm256_set1_ps(p->keep32);
        for (; i + 16 <= n; i += 16) {
            __m256i q = bf16_divide16(_mm256_loadu_si256((const __m256i *)(s + i)), k);
            if (flags) {
                __m128i bytes = _mm_loadu_si128((const __m128i *)(flags + i));
                __m256i keep = _mm256_cvtepu8_epi16(bytes);
                q = _mm256_and_si256(q, _mm256_cmpgt_epi16(keep, _mm256_setzero_si256()));
            }
            _mm256_storeu_si256((__m256i *)(d + i), q);
        }
        break;
    }
    case F32: {
        const float *s = src;
        float *d = dst;
        const __m256 k = _mm256_set1_ps(p->keep32);
        for (; i + 8 <= n; i += 8) {
            __m256 q = _mm256_div_ps(_mm256_loadu_ps(s + i), k);
            if (flags) q = _mm256_and_ps(q, _mm256_castsi256_ps(lanes32(flags + i)));
            _mm256_storeu_ps(d + i, q);
        }
        break;
    }
    case F64: {
        const double *s = src;
        double *d = dst;
        const __m256d k = _mm256_set1_pd(p->keep64);
        for (; i + 4 <= n; i += 4) {
            __m256d q = _mm256_div_pd(_mm256_loadu_pd(s + i), k);
            if (flags) q = _mm256_and_pd(q, _mm256_castsi256_pd(lanes64(flags + i)));
            _mm256_storeu_pd(d + i, q);
        }
        break;
    }
    }
    if (i < n) {
        size_t size = ITEMSIZE[p->dtype];
        plain_loop(p, (const char *)src + i * size, (char *)dst + i * size, n - i,
                   flags ? flags + i : NULL);
    }
}
#endif

typedef void (*loop_fn)(const params *, const void *, void *, size_t, const uint8_t *);

/* ---- rows ------------------------------------------------------------------------------- */

/* out = x / keep where the row's flags (repeated over the row, `width` at a time) are set. */
static void masked_row(loop_fn loop, const params *p, const char *src, char *dst, size_t n,
                       const uint8_t *flags, size_t width, uint8_t *tiled) {
    size_t size = ITEMSIZE[p->dtype];
    const uint8_t *pattern = flags;
    size_t period = width;
    if (width < MIN_PERIOD) {
        size_t copies = (MIN_PERIOD + width - 1) / width;
        for (size_t c = 0; c < copies; c++) memcpy(tiled + c * width, flags, width);
        period = copies * width;
        pattern = tiled;
    }
    for (size_t at = 0; at < n; at += period) {
        size_t len = n - at < period ? n - at : period;
        loop(p, src + at * size, dst + at * size, len, pattern);
    }
}

static void run_rows(loop_fn loop, const params *p, const char *src, char *dst, size_t rows,
                     size_t row_len, const uint8_t *flags, size_t width, uint8_t *tiled) {
    size_t size = ITEMSIZE[p->dtype];
    for (size_t r = 0; r < rows; r++) {
        const char *s = src + r * row_len * size;
        char *d = dst + r * row_len * size;
        const uint8_t *f = flags ? flags + r * width : NULL;
        if (!f || !memchr(f, 0, width))
            loop(p, s, d, row_len, NULL);
        else if (!memchr(f, 1, width))
            memset(d, 0, row_len * size);
        else
            masked_row(loop, p, s, d, row_len, f, width, tiled);
    }
}

/* ---- Python ----------------------------------------------------------------------------- */

static int simd_available(void) {
#if HAVE_X86_DISPATCH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static PyObject *divide_rows(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"dtype", "x", "out", "flags", "rows", "width",
                            "keep", "table", "simd", NULL};
    int dtype, simd;
    Py_ssize_t rows, width;
    double keep;
    PyObject *flags_obj, *table_obj;
    Py_buffer x, out, flags = {0}, table = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iy*w*OnndOp", names, &dtype, &x, &out,
                                     &flags_obj, &rows, &width, &keep, &table_obj, &simd))
        return NULL;
    PyObject *result = NULL;
    int have_flags = 0, have_table = 0;
    if (dtype < F16 || dtype > F64) {
        PyErr_SetString(PyExc_ValueError, "dtype must be 0 (float16) .. 3 (float64)");
        goto done;
    }
    size_t size = ITEMSIZE[dtype];
    if (x.len != out.len || x.len % (Py_ssize_t)size != 0) {
        PyErr_SetString(PyExc_ValueError, "x and out must have the same whole number of items");
        goto done;
    }
    size_t n = (size_t)x.len / size;
    if (rows < 1 || width < 1 || n % ((size_t)rows * (size_t)width) != 0) {
        PyErr_SetString(PyExc_ValueError, "rows * width must divide the number of items");
        goto done;
    }
    if (flags_obj != Py_None) {
        if (PyObject_GetBuffer(flags_obj, &flags, PyBUF_SIMPLE) < 0) goto done;
        have_flags = 1;
        if (flags.len != rows * width) {
            PyErr_SetString(PyExc_ValueError, "flags must hold rows * width bytes");
            goto done;
        }
    }
    if (table_obj != Py_None) {
        if (PyObject_GetBuffer(table_obj, &table, PyBUF_SIMPLE) < 0) goto done;
        have_table = 1;
        if (table.len != 65536 * 2) {
            PyErr_SetString(PyExc_ValueError, "table must hold 65536 uint16 values");
            goto done;
        }
    }
    loop_fn loop = plain_loop;
#if HAVE_X86_DISPATCH
    if (simd && simd_available()) loop = avx2_loop;
#endif
    if (dtype == F16 && loop == plain_loop && !have_table) {
        PyErr_SetString(PyExc_ValueError, "float16 without F16C needs the quotient table");
        goto done;
    }
    params p = {dtype, (float)keep, keep, have_table ? table.buf : NULL};
    uint8_t *tiled = NULL;
    if (have_flags && (size_t)width < MIN_PERIOD) {
        tiled = malloc(2 * MIN_PERIOD);
        if (!tiled) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    run_rows(loop, &p, x.buf, out.buf, (size_t)rows, n / (size_t)rows,
             have_flags ? flags.buf : NULL, (size_t)width, tiled);
    Py_END_ALLOW_THREADS
    free(tiled);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    if (have_flags) PyBuffer_Release(&flags);
    if (have_table) PyBuffer_Release(&table);
    return result;
}

/* The keep mask of onnxruntime's Dropout stream (service/core/rng.py is the reference):
 * draws x_k = x_{k-1} * 16807 mod (2^31 - 1) from the first one, each made the float32
 * u = float32(x - 1) / 2^31 (clamped below 1) that libstdc++'s generate_canonical makes,
 * kept when u >= threshold. The numpy code does the same in blocks; for a small mask its
 * per-call overhead is most of the cost, and here each draw is a few instructions. */
static PyObject *keep_mask(PyObject *self, PyObject *args) {
    long long first;
    float threshold;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Lfw*", &first, &threshold, &out)) return NULL;
    const uint64_t modulus = 2147483647u;
    if (first < 1 || (uint64_t)first >= modulus) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "the first draw must be in [1, 2**31 - 1)");
        return NULL;
    }
    const float below_one = 0x1.fffffep-1f; /* nextafter(1, 0) in float32 */
    uint8_t *mask = out.buf;
    uint64_t x = (uint64_t)first;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < out.len; i++) {
        float u = (float)(int64_t)(x - 1) / 2147483648.0f;
        if (u > below_one) u = below_one;
        mask[i] = u >= threshold;
        x = x * 16807u % modulus;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    return Py_NewRef(Py_None);
}

static PyObject *has_simd(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(simd_available());
}

static PyMethodDef methods[] = {
    {"divide_rows", (PyCFunction)(void (*)(void))divide_rows, METH_VARARGS | METH_KEYWORDS,
     "divide_rows(dtype, x, out, flags, rows, width, keep, table, simd)\n\n"
     "out = x / keep where the flags are set, +0.0 elsewhere; x seen as (rows, spatial, "
     "width) items with flags of (rows, width) bytes, or None for all kept."},
    {"keep_mask", keep_mask, METH_VARARGS,
     "keep_mask(first, threshold, out)\n\n"
     "out[i] = 1 when draw i of the minstd stream that starts at the draw value first keeps "
     "its element (its uniform is >= threshold), else 0; len(out) draws."},
    {"has_simd", has_simd, METH_NOARGS, "Whether this CPU runs the AVX2 + F16C loops."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastkernel",
    .m_doc = "The dropout kernel's inner loop, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastkernel(void) { return PyModule_Create(&module); }
