/*
 * fieldcrypt._native: the batch cell kernel, AES-256-GCM over whole Arrow binary arrays.
 *
 * Format (docs/FORMAT.md sections 2 and 3, fieldcrypt/format/cell.py is the reference):
 *
 *   cell = 0x01 || nonce (12 bytes) || AES-256-GCM ciphertext (n bytes) || tag (16 bytes)
 *   ad   = prefix                                  (dataset without a primary key)
 *   ad   = prefix || u32be(len(row_key)) || row_key (dataset with a primary key)
 *
 * `prefix` is built by fieldcrypt.format.cell.ad_prefix; this module never interprets it.
 *
 * An Arrow binary array arrives as (offsets buffer, data buffer, array offset, offset
 * width 4 or 8) and a length. Every offset is read once, with the GIL held, into the call's
 * own copy, which is checked (in range, non-decreasing, within the data buffer) before any
 * byte is read through it; the output is sized from that copy and the cells are read through
 * it, so a writable offsets buffer changed meanwhile cannot make the two disagree (view_open).
 * A call succeeds only when its cells filled its output exactly. Outputs are the offsets
 * (int32) and data of a new binary array: bytes, and for plaintext a bytearray, which the
 * caller can wipe (wipe) when another slice of the column fails.
 *
 * Failures: a cell that does not decrypt is a (index, reason, detail) result; OpenSSL failing
 * (not the data) is KernelFailure, also when the failing step is decryption's final one
 * (tag_verdict tells the two apart). A failed call wipes its plaintext, and the calls of one
 * column share its first failure (failed_before), so slices after it stop.
 *
 * Keys: the 32-byte data key is read from the caller's buffer into one cipher context per
 * call (cell_cipher); the context is freed (OpenSSL cleanses its key schedule) before
 * returning, and this module makes no copy of its own. Nonces: RAND_bytes, drawn NONCE_BATCH at a time.
 * The GIL is released while cells are processed.
 *
 * Speed: the cipher is fetched once (EVP_CIPHER_fetch) and one context per call is keyed
 * once; each cell then only gives the context its nonce (and, decrypting, the tag to expect).
 * See cell_cipher for the two paths a context takes (EVP, or the same provider implementation
 * called directly), known_answers (published GCM answers; the EVP path must pass them or the
 * module does not import) and self_test_direct, which decides between the paths at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

/*
 * Under AddressSanitizer (make sanitize), every region handed to libcrypto, which is not
 * instrumented, is checked first, so an out-of-bounds pointer or length given to OpenSSL is
 * caught like an overrun in this file.
 */
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#define CHECK_REGION(pointer, size)                                                                    \
    do {                                                                                               \
        if ((size) > 0 && __asan_region_is_poisoned((void *)(pointer), (size_t)(size)) != NULL) {      \
            fprintf(stderr, "fieldcrypt._native: region of %lld bytes handed to OpenSSL is out of bounds\n", \
                    (long long)(size));                                                                \
            __asan_describe_address(__asan_region_is_poisoned((void *)(pointer), (size_t)(size)));      \
            abort();                                                                                   \
        }                                                                                              \
    } while (0)
#else
#define CHECK_REGION(pointer, size) ((void)0)
#endif

#define CELL_VERSION 1
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define CELL_OVERHEAD (1 + NONCE_SIZE + TAG_SIZE)
#define KEY_SIZE 32
#define NONCE_BATCH 1024
/* Largest EVP update chunk (EVP lengths are int). */
#define EVP_CHUNK (1 << 30)

/* Why a cell did not decrypt (fieldcrypt.format.kernel turns these into IntegrityError messages). */
#define FAIL_SHORT 1
#define FAIL_VERSION 2
#define FAIL_TAG 3
#define FAIL_STOPPED 4 /* not a failure of this call's cells: an earlier row of the column failed */

static PyObject *KernelFailure; /* OpenSSL itself failed: not a property of the data */

typedef struct {
    Py_buffer offsets;
    Py_buffer data;
    int acquired; /* bit 1: offsets, bit 2: data */
    Py_ssize_t length;
    int64_t *own; /* the length + 1 offsets, each read once from the caller's buffer (view_open) */
} binary_view;

static void view_release(binary_view *view) {
    if (view->acquired & 1) PyBuffer_Release(&view->offsets);
    if (view->acquired & 2) PyBuffer_Release(&view->data);
    PyMem_Free(view->own);
    view->own = NULL;
    view->acquired = 0;
}

static inline int64_t view_offset(const binary_view *view, Py_ssize_t i) { return view->own[i]; }

/*
 * Acquire the buffers, copy the offsets into the view's own array and check the copy (in
 * range, non-decreasing, within the data buffer). GIL held throughout, so no Python thread
 * changes a writable offsets buffer (a memoryview of a bytearray, a NumPy array) while it
 * is copied; whatever else might, the checked copy is what counts. Every later read (output sizes, the cell loop) is of the checked copy: an
 * offset read twice from the caller's buffer could differ between the reads once the GIL is
 * released, and the output would be sized by one read and filled by the other.
 */
static int view_open(binary_view *view, const char *name, PyObject *offsets, PyObject *data, Py_ssize_t start,
                     Py_ssize_t length, int width) {
    memset(view, 0, sizeof(*view));
    view->length = length;
    if (width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "%s: offset width must be 4 or 8, got %d", name, width);
        return -1;
    }
    if (start < 0 || length < 0) {
        PyErr_Format(PyExc_ValueError, "%s: negative array offset or length", name);
        return -1;
    }
    if (PyObject_GetBuffer(offsets, &view->offsets, PyBUF_SIMPLE) < 0) return -1;
    view->acquired |= 1;
    if (PyObject_GetBuffer(data, &view->data, PyBUF_SIMPLE) < 0) {
        view_release(view);
        return -1;
    }
    view->acquired |= 2;
    /* start + length + 1 offsets must lie inside the offsets buffer (no overflow: both < PY_SSIZE_T_MAX / 2). */
    Py_ssize_t slots = view->offsets.len / width;
    if (start > slots || length > slots - start || slots - start - length < 1) {
        PyErr_Format(PyExc_ValueError, "%s: offsets buffer of %zd bytes is too short for %zd values at offset %zd",
                     name, view->offsets.len, length, start);
        view_release(view);
        return -1;
    }
    /* length + 1 <= slots <= offsets.len / 4: the copy is at most twice a buffer that exists. */
    view->own = PyMem_Malloc((size_t)(length + 1) * sizeof(int64_t));
    if (view->own == NULL) {
        view_release(view);
        PyErr_NoMemory();
        return -1;
    }
    const unsigned char *at = (const unsigned char *)view->offsets.buf + (size_t)start * (size_t)width;
    int64_t previous = 0;
    for (Py_ssize_t i = 0; i <= length; i++, at += width) {
        int64_t value;
        if (width == 4) {
            int32_t narrow;
            memcpy(&narrow, at, 4);
            value = narrow;
        } else {
            memcpy(&value, at, 8);
        }
        if (value < (i == 0 ? 0 : previous) || value > (int64_t)view->data.len) {
            PyErr_Format(PyExc_ValueError, "%s: offsets out of order or outside the data buffer", name);
            view_release(view);
            return -1;
        }
        view->own[i] = previous = value;
    }
    return 0;
}

/* The i-th value: its bytes and size, from the checked copy of the offsets. */
static inline void view_value(const binary_view *view, Py_ssize_t i, const unsigned char **value, int64_t *size) {
    int64_t begin = view->own[i];
    *size = view->own[i + 1] - begin;
    *value = (const unsigned char *)view->data.buf + begin;
}

/*
 * A keyed AES-256-GCM context for the cells of one call, on one of two paths:
 *
 * - evp, the reference: an EVP_CIPHER_CTX keyed once; per cell EVP_*Init_ex with the nonce,
 *   the tag set or read through OSSL_CIPHER_PARAM_AEAD_TAG.
 * - direct: the provider implementation EVP_CIPHER_fetch chose (EVP_CIPHER_get0_provider),
 *   called through its dispatch table (OSSL_PROVIDER_query_operation) the way EVP calls it:
 *   keyed once by its init function, then per cell init with the nonce (decrypting, the
 *   expected tag rides along as an init parameter), update, final. On OpenSSL 3.0 the EVP
 *   wrapper asks the provider for the IV length on every Init and needs a second parameter
 *   call for the tag: parameter lookups (strcmp) were a fifth of a small cell's decryption.
 *
 * The direct path is taken only when the self-test at import (self_test_direct) showed that
 * it seals exactly the cells the evp path seals and opens them, cell after cell on one
 * context, and refuses a wrong tag. Freeing either context cleanses its key schedule.
 */
typedef struct {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *encrypt_init;
    OSSL_FUNC_cipher_decrypt_init_fn *decrypt_init;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
} provider_gcm;

static EVP_CIPHER *aes_256_gcm;  /* fetched once at import (an implicit fetch per Init is a lookup) */
static provider_gcm direct_gcm;  /* every function found, or provctx NULL */
static int direct_proven;        /* the self-test's verdict, fixed at import */
static int use_direct;           /* the path new calls take: direct_proven unless a test switched it */
static int inject_final_failure; /* tests only: decrypting, treat every final step as failed (inject_final_failure) */

typedef struct {
    EVP_CIPHER_CTX *evp;
    void *algctx;                  /* the direct path's provider context */
    int encrypting;
    OSSL_PARAM tag[2];             /* the cell's tag: read (encrypting) or expected (decrypting) */
    unsigned char unused[TAG_SIZE]; /* where final may write its (always empty) output */
} cell_cipher;

static int cipher_open(cell_cipher *cipher, const unsigned char *key, int encrypting, int direct) {
    memset(cipher, 0, sizeof(*cipher));
    cipher->encrypting = encrypting;
    cipher->tag[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, NULL, 0);
    cipher->tag[0].data_size = TAG_SIZE;
    cipher->tag[1] = OSSL_PARAM_construct_end();
    CHECK_REGION(key, KEY_SIZE);
    if (direct) {
        cipher->algctx = direct_gcm.newctx(direct_gcm.provctx);
        if (cipher->algctx == NULL) return 0;
        return (encrypting ? direct_gcm.encrypt_init(cipher->algctx, key, KEY_SIZE, NULL, 0, NULL)
                           : direct_gcm.decrypt_init(cipher->algctx, key, KEY_SIZE, NULL, 0, NULL)) == 1;
    }
    cipher->evp = EVP_CIPHER_CTX_new();
    if (cipher->evp == NULL) return 0;
    return (encrypting ? EVP_EncryptInit_ex(cipher->evp, aes_256_gcm, NULL, key, NULL)
                       : EVP_DecryptInit_ex(cipher->evp, aes_256_gcm, NULL, key, NULL)) == 1;
}

static void cipher_close(cell_cipher *cipher) {
    if (cipher->algctx != NULL) direct_gcm.freectx(cipher->algctx);
    EVP_CIPHER_CTX_free(cipher->evp);
    cipher->algctx = NULL;
    cipher->evp = NULL;
}

/* Start a cell: its nonce (NONCE_SIZE bytes) and, decrypting, the tag to expect (TAG_SIZE bytes). */
static int cipher_start(cell_cipher *cipher, const unsigned char *nonce, const unsigned char *tag) {
    CHECK_REGION(nonce, NONCE_SIZE);
    if (!cipher->encrypting) {
        CHECK_REGION(tag, TAG_SIZE);
        cipher->tag[0].data = (void *)tag;
    }
    if (cipher->algctx != NULL)
        return (cipher->encrypting
                    ? direct_gcm.encrypt_init(cipher->algctx, NULL, 0, nonce, NONCE_SIZE, NULL)
                    : direct_gcm.decrypt_init(cipher->algctx, NULL, 0, nonce, NONCE_SIZE, cipher->tag)) == 1;
    if (cipher->encrypting) return EVP_EncryptInit_ex(cipher->evp, NULL, NULL, NULL, nonce) == 1;
    return EVP_DecryptInit_ex(cipher->evp, NULL, NULL, NULL, nonce) == 1 &&
           EVP_CIPHER_CTX_set_params(cipher->evp, cipher->tag) == 1;
}

/* Feed `size` bytes in int-sized chunks (EVP lengths are int); out NULL: associated data. */
static int cipher_update(cell_cipher *cipher, unsigned char *out, const unsigned char *in, int64_t size) {
    CHECK_REGION(in, size);
    if (out != NULL) CHECK_REGION(out, size);
    while (size > 0) {
        int chunk = size > EVP_CHUNK ? EVP_CHUNK : (int)size;
        int ok;
        if (cipher->algctx != NULL) {
            size_t written = 0;
            ok = direct_gcm.update(cipher->algctx, out, &written, (size_t)chunk, in, (size_t)chunk) == 1 &&
                 (out == NULL || written == (size_t)chunk);
        } else {
            int written = 0;
            ok = (cipher->encrypting ? EVP_EncryptUpdate(cipher->evp, out, &written, in, chunk)
                                     : EVP_DecryptUpdate(cipher->evp, out, &written, in, chunk)) == 1 &&
                 (out == NULL || written == chunk);
        }
        if (!ok) return 0;
        in += chunk;
        if (out != NULL) out += chunk;
        size -= chunk;
    }
    return 1;
}

/* Finish the cell. Encrypting: 1 with its tag in `tag` (TAG_SIZE bytes). Decrypting (tag NULL):
 * 1 when the expected tag matched, 0 when it did not. */
static int cipher_finish(cell_cipher *cipher, unsigned char *tag) {
    int ok;
    if (cipher->algctx != NULL) {
        size_t written = 0;
        ok = direct_gcm.final(cipher->algctx, cipher->unused, &written, 0) == 1 && written == 0;
    } else {
        int written = 0;
        ok = (cipher->encrypting ? EVP_EncryptFinal_ex(cipher->evp, cipher->unused, &written)
                                 : EVP_DecryptFinal_ex(cipher->evp, cipher->unused, &written)) == 1 &&
             written == 0;
    }
    if (!ok || !cipher->encrypting) return ok;
    CHECK_REGION(tag, TAG_SIZE);
    cipher->tag[0].data = tag;
    return (cipher->algctx != NULL ? direct_gcm.get_ctx_params(cipher->algctx, cipher->tag)
                                   : EVP_CIPHER_CTX_get_params(cipher->evp, cipher->tag)) == 1;
}

/*
 * The associated data of the cells, assembled in one scratch buffer so that a cell's AD is
 * usually one update: prefix || u32be(len(row key)) || row key (the key copied in when
 * it fits, fed as a second update otherwise). Each update costs a provider dispatch.
 */
#define SCRATCH_ROW_KEY 512

typedef struct {
    unsigned char *buffer; /* prefix || 4-byte length || room for SCRATCH_ROW_KEY bytes */
    size_t prefix_size;
} ad_scratch;

static int scratch_open(ad_scratch *scratch, const Py_buffer *prefix) {
    scratch->prefix_size = (size_t)prefix->len;
    scratch->buffer = malloc(scratch->prefix_size + 4 + SCRATCH_ROW_KEY);
    if (scratch->buffer == NULL) return 0;
    memcpy(scratch->buffer, prefix->buf, scratch->prefix_size);
    return 1;
}

static void scratch_close(ad_scratch *scratch) {
    free(scratch->buffer); /* not secret: names and row keys */
    scratch->buffer = NULL;
}

/* `key` NULL: a dataset without a primary key. `size` is at most UINT32_MAX (row_key_of). */
static int feed_associated_data(cell_cipher *cipher, const ad_scratch *scratch, const unsigned char *key,
                                int64_t size) {
    if (key == NULL) return cipher_update(cipher, NULL, scratch->buffer, (int64_t)scratch->prefix_size);
    unsigned char *length = scratch->buffer + scratch->prefix_size;
    length[0] = (unsigned char)(size >> 24);
    length[1] = (unsigned char)(size >> 16);
    length[2] = (unsigned char)(size >> 8);
    length[3] = (unsigned char)size;
    int64_t head = (int64_t)scratch->prefix_size + 4;
    if (size <= SCRATCH_ROW_KEY) {
        memcpy(length + 4, key, (size_t)size);
        return cipher_update(cipher, NULL, scratch->buffer, head + size);
    }
    return cipher_update(cipher, NULL, scratch->buffer, head) && cipher_update(cipher, NULL, key, size);
}

/* The i-th row key (NULL without row keys); its length fits the AD's u32 (buffers_open checked). */
static void row_key_of(const binary_view *row_keys, Py_ssize_t i, const unsigned char **key, int64_t *size) {
    *key = NULL;
    *size = 0;
    if (row_keys != NULL) view_value(row_keys, i, key, size);
}

static void write_offset32(unsigned char *offsets, Py_ssize_t i, int64_t value) {
    int32_t narrow = (int32_t)value;
    memcpy(offsets + (size_t)i * 4, &narrow, 4);
}

/* What OpenSSL last queued on this thread, for a KernelFailure message (a library and reason, never data). */
static void openssl_reason(char *out, size_t size) {
    unsigned long code = ERR_peek_last_error();
    if (code == 0)
        snprintf(out, size, "no OpenSSL error queued");
    else
        ERR_error_string_n(code, out, size);
}

/*
 * The first failure of a column (fieldcrypt.format.kernel.decrypt_column): one aligned int64 shared by
 * the calls decrypting the column's slices side by side, holding the lowest column row found
 * failing so far (INT64_MAX: none). A call checks it before each cell and stops at a row after
 * it (nothing it decrypts past a known failure can be returned); a call whose cell fails lowers
 * it. Atomic: the calls run on several threads without the GIL. Relaxed order suffices, a
 * stale read only costs one more cell.
 */
static inline int failed_before(const int64_t *mark, int64_t row) {
    return mark != NULL && __atomic_load_n(mark, __ATOMIC_RELAXED) < row;
}

static void lower_mark(int64_t *mark, int64_t row) {
    if (mark == NULL) return;
    int64_t seen = __atomic_load_n(mark, __ATOMIC_RELAXED);
    while (row < seen && !__atomic_compare_exchange_n(mark, &seen, row, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

typedef struct {
    PyObject *key, *prefix;
    PyObject *value_offsets, *value_data, *key_offsets, *key_data;
    PyObject *first_failure; /* decrypt only: the column's shared mark, or None */
    Py_ssize_t value_start, count, key_start, position;
    int value_width, key_width;
} call_args;

static int parse_args(PyObject *args, call_args *call, int decrypting) {
    memset(call, 0, sizeof(*call));
    call->first_failure = Py_None;
    if (!decrypting)
        return PyArg_ParseTuple(args, "OOOOnniOOni:encrypt", &call->key, &call->prefix, &call->value_offsets,
                                &call->value_data, &call->value_start, &call->count, &call->value_width,
                                &call->key_offsets, &call->key_data, &call->key_start, &call->key_width)
                   ? 0
                   : -1;
    return PyArg_ParseTuple(args, "OOOOnniOOni|On:decrypt", &call->key, &call->prefix, &call->value_offsets,
                            &call->value_data, &call->value_start, &call->count, &call->value_width,
                            &call->key_offsets, &call->key_data, &call->key_start, &call->key_width,
                            &call->first_failure, &call->position)
               ? 0
               : -1;
}

typedef struct {
    Py_buffer key, prefix, mark;
    int have_key, have_prefix, have_mark;
    binary_view values, row_keys;
    int have_row_keys;
    int64_t *first_failure; /* inside `mark`, or NULL */
} call_buffers;

static void buffers_release(call_buffers *buffers) {
    if (buffers->have_key) PyBuffer_Release(&buffers->key);
    if (buffers->have_prefix) PyBuffer_Release(&buffers->prefix);
    if (buffers->have_mark) PyBuffer_Release(&buffers->mark);
    view_release(&buffers->values);
    view_release(&buffers->row_keys);
    buffers->have_key = buffers->have_prefix = buffers->have_mark = 0;
    buffers->first_failure = NULL;
}

/* Acquire and check everything the loop will read; GIL held on entry and exit. */
static int buffers_open(const call_args *call, call_buffers *buffers, const char *values_name) {
    memset(buffers, 0, sizeof(*buffers));
    if (PyObject_GetBuffer(call->key, &buffers->key, PyBUF_SIMPLE) < 0) return -1;
    buffers->have_key = 1;
    if (buffers->key.len != KEY_SIZE) {
        PyErr_Format(PyExc_ValueError, "data key must be %d bytes, got %zd", KEY_SIZE, buffers->key.len);
        goto fail;
    }
    if (PyObject_GetBuffer(call->prefix, &buffers->prefix, PyBUF_SIMPLE) < 0) goto fail;
    buffers->have_prefix = 1;
    if (call->first_failure != Py_None) {
        if (PyObject_GetBuffer(call->first_failure, &buffers->mark, PyBUF_WRITABLE) < 0) goto fail;
        buffers->have_mark = 1;
        if (buffers->mark.len != (Py_ssize_t)sizeof(int64_t) || (uintptr_t)buffers->mark.buf % sizeof(int64_t) != 0) {
            PyErr_SetString(PyExc_ValueError, "first_failure must be one aligned int64 (a NumPy int64 array of one)");
            goto fail;
        }
        buffers->first_failure = buffers->mark.buf;
    }
    if (call->position < 0 || call->position > PY_SSIZE_T_MAX - call->count) {
        PyErr_Format(PyExc_ValueError, "position %zd is negative or too large", call->position);
        goto fail;
    }
    if (view_open(&buffers->values, values_name, call->value_offsets, call->value_data, call->value_start,
                  call->count, call->value_width) < 0)
        goto fail;
    if (call->key_offsets != Py_None) {
        if (view_open(&buffers->row_keys, "row keys", call->key_offsets, call->key_data, call->key_start,
                      call->count, call->key_width) < 0)
            goto fail;
        buffers->have_row_keys = 1;
        for (Py_ssize_t i = 0; i < call->count; i++) {
            /* Checked copy: 0 <= size <= the data buffer's size, no overflow. */
            if (view_offset(&buffers->row_keys, i + 1) - view_offset(&buffers->row_keys, i) > (int64_t)UINT32_MAX) {
                PyErr_SetString(PyExc_ValueError, "row key longer than 2^32-1 bytes");
                goto fail;
            }
        }
    }
    return 0;
fail:
    buffers_release(buffers);
    return -1;
}

PyDoc_STRVAR(encrypt_doc,
             "encrypt(key, prefix, value_offsets, value_data, value_start, count, value_width,\n"
             "        key_offsets, key_data, key_start, key_width) -> (offsets: bytes, data: bytes)\n\n"
             "Encrypt `count` values into version-1 cells; key_offsets is None without row keys.\n"
             "The result is the int32 offsets and data buffers of a binary array. The offsets are\n"
             "read once, when the call starts. KernelFailure: OpenSSL failed (not the data).");

static PyObject *kernel_encrypt(PyObject *self, PyObject *args) {
    (void)self;
    call_args call;
    call_buffers buffers;
    if (parse_args(args, &call, 0) < 0) return NULL;
    if (buffers_open(&call, &buffers, "values") < 0) return NULL;
    const binary_view *values = &buffers.values;
    const binary_view *row_keys = buffers.have_row_keys ? &buffers.row_keys : NULL;
    Py_ssize_t n = call.count;
    /* Output size: every value plus 29 bytes, within int32 offsets (n bounded first, so n * 29 cannot overflow). */
    int64_t plain_total = view_offset(values, n) - view_offset(values, 0);
    if (n > (Py_ssize_t)(INT32_MAX / CELL_OVERHEAD) || plain_total > (int64_t)INT32_MAX - (int64_t)n * CELL_OVERHEAD) {
        buffers_release(&buffers);
        PyErr_SetString(PyExc_OverflowError, "cells of this call exceed 2 GiB; encrypt in smaller slices");
        return NULL;
    }
    int64_t total = plain_total + (int64_t)n * CELL_OVERHEAD;
    PyObject *out_offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    PyObject *out_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out_offsets == NULL || out_data == NULL) {
        Py_XDECREF(out_offsets);
        Py_XDECREF(out_data);
        buffers_release(&buffers);
        return NULL;
    }
    unsigned char *offsets = (unsigned char *)PyBytes_AS_STRING(out_offsets);
    unsigned char *cells = (unsigned char *)PyBytes_AS_STRING(out_data);
    int ok = 1, misfit = 0;
    char why[256] = "";
    int direct = use_direct;
    Py_BEGIN_ALLOW_THREADS
    unsigned char nonces[NONCE_BATCH * NONCE_SIZE];
    ad_scratch scratch;
    cell_cipher cipher;
    ok = scratch_open(&scratch, &buffers.prefix);
    ok = cipher_open(&cipher, buffers.key.buf, 1, direct) && ok;
    int64_t at = 0;
    write_offset32(offsets, 0, 0);
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        Py_ssize_t in_batch = i % NONCE_BATCH;
        if (in_batch == 0) {
            Py_ssize_t left = n - i;
            int batch = left < NONCE_BATCH ? (int)left : NONCE_BATCH;
            if (RAND_bytes(nonces, batch * NONCE_SIZE) != 1) {
                ok = 0;
                break;
            }
        }
        int64_t size, key_size;
        const unsigned char *value, *key;
        view_value(values, i, &value, &size);
        row_key_of(row_keys, i, &key, &key_size);
        if (size > total - at - CELL_OVERHEAD) { /* never, with the offsets the kernel's own; a bug if so */
            misfit = 1;
            break;
        }
        unsigned char *cell = cells + at;
        const unsigned char *nonce = nonces + in_batch * NONCE_SIZE;
        cell[0] = CELL_VERSION;
        memcpy(cell + 1, nonce, NONCE_SIZE);
        ok = cipher_start(&cipher, nonce, NULL) && feed_associated_data(&cipher, &scratch, key, key_size) &&
             cipher_update(&cipher, cell + 1 + NONCE_SIZE, value, size) &&
             cipher_finish(&cipher, cell + 1 + NONCE_SIZE + size);
        at += size + CELL_OVERHEAD;
        write_offset32(offsets, i + 1, at);
    }
    if (ok && at != total) misfit = 1; /* success only with every byte of the output written */
    if (!ok) openssl_reason(why, sizeof(why));
    cipher_close(&cipher);
    scratch_close(&scratch);
    if (!ok) ERR_clear_error(); /* this thread's queue: left behind, it would be blamed on a later call */
    Py_END_ALLOW_THREADS
    buffers_release(&buffers);
    if (!ok || misfit) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        if (!ok)
            PyErr_Format(KernelFailure, "OpenSSL AES-256-GCM encryption or RAND_bytes failed (%s)", why);
        else
            PyErr_SetString(KernelFailure, "internal error: the cells did not fill the output exactly");
        return NULL;
    }
    return Py_BuildValue("(NN)", out_offsets, out_data);
}

enum { TAG_WRONG, TAG_RIGHT, TAG_UNKNOWN };

/*
 * Decrypting, OpenSSL's final step returns the same 0 for a tag that does not match and for a
 * failure of its own, and its error queue does not tell them apart either. The tag itself does:
 * GCM-encrypting the plaintext the cell just decrypted to (under the same key, nonce and
 * associated data) gives back the cell's ciphertext and the tag it must carry. Sealed on a fresh
 * context of the EVP path, the reference, so that the direct path never judges its own fault.
 * Runs only for a refused cell (at most once a call). The sealed bytes are the cell's own
 * ciphertext, not secret; the plaintext stays where it is, wiped with the call's output.
 */
static int tag_verdict(const unsigned char *key, const ad_scratch *scratch, const unsigned char *row_key,
                       int64_t key_size, const unsigned char *nonce, const unsigned char *plain, int64_t size,
                       const unsigned char *tag) {
    cell_cipher sealer;
    unsigned char sealed[4096], computed[TAG_SIZE];
    int done = cipher_open(&sealer, key, 1, 0) && cipher_start(&sealer, nonce, NULL) &&
               feed_associated_data(&sealer, scratch, row_key, key_size);
    for (int64_t at = 0; done && at < size; at += (int64_t)sizeof(sealed)) {
        int64_t chunk = size - at < (int64_t)sizeof(sealed) ? size - at : (int64_t)sizeof(sealed);
        done = cipher_update(&sealer, sealed, plain + at, chunk);
    }
    done = done && cipher_finish(&sealer, computed);
    cipher_close(&sealer);
    if (!done) return TAG_UNKNOWN;
    return CRYPTO_memcmp(computed, tag, TAG_SIZE) == 0 ? TAG_RIGHT : TAG_WRONG;
}

PyDoc_STRVAR(decrypt_doc,
             "decrypt(key, prefix, cell_offsets, cell_data, cell_start, count, cell_width,\n"
             "        key_offsets, key_data, key_start, key_width, first_failure=None, position=0)\n"
             "    -> (offsets, data, failure)\n\n"
             "Authenticate and decrypt `count` cells, stopping at the first that fails. On success\n"
             "failure is None, offsets (bytes) and data (a bytearray, so that a caller can wipe it)\n"
             "are the int32 offsets and data of the plaintexts; otherwise offsets and data are None\n"
             "(the partial plaintext is wiped) and failure is (index, reason, detail): reason 1 too\n"
             "short (detail: length), 2 unknown version (detail: version byte), 3 authentication\n"
             "failed (detail: 0), 4 stopped before cell `index` because first_failure holds an\n"
             "earlier row (detail: 0).\n"
             "first_failure: one aligned int64 shared by the calls of one column (see failed_before),\n"
             "position: the column row of this call's first cell. The offsets are read once, when the\n"
             "call starts. KernelFailure: OpenSSL failed (not the data).");

static PyObject *kernel_decrypt(PyObject *self, PyObject *args) {
    (void)self;
    call_args call;
    call_buffers buffers;
    if (parse_args(args, &call, 1) < 0) return NULL;
    if (buffers_open(&call, &buffers, "cells") < 0) return NULL;
    const binary_view *cells = &buffers.values;
    const binary_view *row_keys = buffers.have_row_keys ? &buffers.row_keys : NULL;
    int64_t *mark = buffers.first_failure;
    int64_t position = (int64_t)call.position;
    Py_ssize_t n = call.count;
    /* Output size: every cell minus 29 bytes (a short cell contributes nothing and fails below).
     * From the checked copy of the offsets: the sizes are >= 0 and add up to at most the data buffer's. */
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t size = view_offset(cells, i + 1) - view_offset(cells, i);
        if (size > CELL_OVERHEAD) total += size - CELL_OVERHEAD;
    }
    if (total > (int64_t)INT32_MAX) {
        buffers_release(&buffers);
        PyErr_SetString(PyExc_OverflowError, "plaintexts of this call exceed 2 GiB; decrypt in smaller slices");
        return NULL;
    }
    PyObject *out_offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    PyObject *out_data = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out_offsets == NULL || out_data == NULL) {
        Py_XDECREF(out_offsets);
        Py_XDECREF(out_data);
        buffers_release(&buffers);
        return NULL;
    }
    unsigned char *offsets = (unsigned char *)PyBytes_AS_STRING(out_offsets);
    unsigned char *plain = (unsigned char *)PyByteArray_AS_STRING(out_data);
    int ok = 1, misfit = 0, verdict = TAG_UNKNOWN;
    Py_ssize_t failed_at = -1, stopped_at = -1, internal_at = -1;
    long reason = 0, detail = 0;
    char why[256] = "";
    int direct = use_direct, fail_final = inject_final_failure;
    Py_BEGIN_ALLOW_THREADS
    ad_scratch scratch;
    cell_cipher cipher;
    ok = scratch_open(&scratch, &buffers.prefix);
    ok = cipher_open(&cipher, buffers.key.buf, 0, direct) && ok;
    int64_t at = 0;
    write_offset32(offsets, 0, 0);
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        if (failed_before(mark, position + i)) {
            stopped_at = i;
            break;
        }
        int64_t size, key_size;
        const unsigned char *cell, *key;
        view_value(cells, i, &cell, &size);
        row_key_of(row_keys, i, &key, &key_size);
        if (size < CELL_OVERHEAD) {
            failed_at = i, reason = FAIL_SHORT, detail = (long)size;
            break;
        }
        if (cell[0] != CELL_VERSION) {
            failed_at = i, reason = FAIL_VERSION, detail = cell[0];
            break;
        }
        int64_t body = size - CELL_OVERHEAD;
        if (body > total - at) { /* never, with the offsets the kernel's own; a bug if so */
            misfit = 1, internal_at = i;
            break;
        }
        const unsigned char *nonce = cell + 1, *tag = cell + 1 + NONCE_SIZE + body;
        ok = cipher_start(&cipher, nonce, tag) && feed_associated_data(&cipher, &scratch, key, key_size) &&
             cipher_update(&cipher, plain + at, cell + 1 + NONCE_SIZE, body);
        if (!ok) {
            internal_at = i;
            break;
        }
        if (!cipher_finish(&cipher, NULL) || fail_final) {
            verdict = tag_verdict(buffers.key.buf, &scratch, key, key_size, nonce, plain + at, body, tag);
            if (verdict == TAG_WRONG) {
                failed_at = i, reason = FAIL_TAG, detail = 0;
                break;
            }
            ok = 0, internal_at = i;
            break;
        }
        at += body;
        write_offset32(offsets, i + 1, at);
    }
    /* Success only with every byte of the output written: no uninitialised tail is ever returned. */
    if (ok && !misfit && failed_at < 0 && stopped_at < 0 && at != total) misfit = 1, internal_at = n;
    int failed = !ok || misfit || failed_at >= 0 || stopped_at >= 0;
    if (failed_at >= 0)
        lower_mark(mark, position + failed_at);
    else if (!ok || misfit) /* the rest of the column cannot be returned either */
        lower_mark(mark, position + (internal_at >= 0 ? internal_at : 0));
    if (!ok) openssl_reason(why, sizeof(why));
    cipher_close(&cipher);
    scratch_close(&scratch);
    if (failed) {
        OPENSSL_cleanse(plain, (size_t)total); /* no plaintext of a failed call survives */
        ERR_clear_error(); /* a refused tag or a provider error: nobody reads this thread's queue */
    }
    Py_END_ALLOW_THREADS
    buffers_release(&buffers);
    if (!ok || misfit) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        if (misfit)
            PyErr_SetString(KernelFailure, "internal error: the plaintexts did not fill the output exactly");
        else if (internal_at < 0)
            PyErr_Format(KernelFailure, "OpenSSL could not set up AES-256-GCM decryption (%s)", why);
        else if (verdict == TAG_RIGHT)
            PyErr_Format(KernelFailure,
                         "OpenSSL's AES-256-GCM final step failed at cell %zd although its tag is right: "
                         "an internal OpenSSL failure, not the data (%s)",
                         internal_at, why);
        else
            PyErr_Format(KernelFailure, "OpenSSL AES-256-GCM decryption failed inside OpenSSL at cell %zd (%s)",
                         internal_at, why);
        return NULL;
    }
    if (stopped_at >= 0 || failed_at >= 0) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        if (stopped_at >= 0) return Py_BuildValue("(OO(nll))", Py_None, Py_None, stopped_at, (long)FAIL_STOPPED, 0L);
        return Py_BuildValue("(OO(nll))", Py_None, Py_None, failed_at, reason, detail);
    }
    return Py_BuildValue("(NNO)", out_offsets, out_data, Py_None);
}

PyDoc_STRVAR(wipe_doc,
             "wipe(buffer) -> None\n\n"
             "Overwrite a writable buffer with zeros (OPENSSL_cleanse, which the compiler cannot drop):\n"
             "the plaintext a call returned, when its column failed elsewhere.");

static PyObject *kernel_wipe(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE) < 0) return NULL;
    OPENSSL_cleanse(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ASCII case-insensitive: is `wanted` one of the colon-separated `names` of an algorithm? */
static int name_listed(const char *names, const char *wanted) {
    size_t size = strlen(wanted);
    for (const char *at = names; *at != '\0';) {
        const char *end = strchr(at, ':');
        size_t length = end != NULL ? (size_t)(end - at) : strlen(at);
        int same = length == size;
        for (size_t i = 0; same && i < size; i++) {
            char a = at[i], b = wanted[i];
            if (a >= 'a' && a <= 'z') a = (char)(a - 'a' + 'A');
            if (b >= 'a' && b <= 'z') b = (char)(b - 'a' + 'A');
            same = a == b;
        }
        if (same) return 1;
        if (end == NULL) break;
        at = end + 1;
    }
    return 0;
}

/* The dispatch table of the provider implementation behind aes_256_gcm (direct_gcm), if complete. */
static void find_direct_gcm(void) {
    const OSSL_PROVIDER *provider = EVP_CIPHER_get0_provider(aes_256_gcm);
    if (provider == NULL) return;
    int no_cache = 0;
    const OSSL_ALGORITHM *algorithms = OSSL_PROVIDER_query_operation(provider, OSSL_OP_CIPHER, &no_cache);
    if (algorithms == NULL) return;
    provider_gcm found;
    memset(&found, 0, sizeof(found));
    for (const OSSL_ALGORITHM *algorithm = algorithms; algorithm->algorithm_names != NULL; algorithm++) {
        if (!name_listed(algorithm->algorithm_names, "AES-256-GCM")) continue;
        for (const OSSL_DISPATCH *function = algorithm->implementation; function->function_id != 0; function++) {
            switch (function->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: found.newctx = OSSL_FUNC_cipher_newctx(function); break;
            case OSSL_FUNC_CIPHER_FREECTX: found.freectx = OSSL_FUNC_cipher_freectx(function); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT: found.encrypt_init = OSSL_FUNC_cipher_encrypt_init(function); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: found.decrypt_init = OSSL_FUNC_cipher_decrypt_init(function); break;
            case OSSL_FUNC_CIPHER_UPDATE: found.update = OSSL_FUNC_cipher_update(function); break;
            case OSSL_FUNC_CIPHER_FINAL: found.final = OSSL_FUNC_cipher_final(function); break;
            case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: found.get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(function); break;
            default: break;
            }
        }
        break;
    }
    OSSL_PROVIDER_unquery_operation(provider, OSSL_OP_CIPHER, algorithms);
    if (found.newctx == NULL || found.freectx == NULL || found.encrypt_init == NULL || found.decrypt_init == NULL ||
        found.update == NULL || found.final == NULL || found.get_ctx_params == NULL)
        return;
    found.provctx = OSSL_PROVIDER_get0_provider_ctx(provider);
    if (found.provctx != NULL) direct_gcm = found;
}

enum { TEST_SIZE = 37, TEST_AD_SIZE = 21 };

static int self_test_seal(cell_cipher *cipher, const unsigned char *nonce, const unsigned char *ad, int64_t ad_size,
                          const unsigned char *plain, int64_t size, unsigned char *sealed) {
    return cipher_start(cipher, nonce, NULL) && cipher_update(cipher, NULL, ad, ad_size) &&
           cipher_update(cipher, sealed, plain, size) && cipher_finish(cipher, sealed + size);
}

/* 1 when `sealed` (size bytes || tag) authenticates and opens to `plain`. */
static int self_test_opens(cell_cipher *cipher, const unsigned char *nonce, const unsigned char *ad, int64_t ad_size,
                           const unsigned char *sealed, int64_t size, const unsigned char *plain) {
    unsigned char opened[TEST_SIZE];
    return cipher_start(cipher, nonce, sealed + size) && cipher_update(cipher, NULL, ad, ad_size) &&
           cipher_update(cipher, opened, sealed, size) && cipher_finish(cipher, NULL) &&
           memcmp(opened, plain, (size_t)size) == 0;
}

/*
 * Published answers (McGrew and Viega, "The Galois/Counter Mode of Operation", test cases 13
 * and 14: all-zero key and nonce, an empty and a 16-byte zero plaintext), sealed and opened on
 * one path (0: evp, 1: direct), each direction on one context, cell after cell. Run for the evp
 * path at import (a libcrypto that fails it is not used at all) and inside self_test_direct.
 */
static int known_answers(int direct) {
    static const unsigned char tag_13[TAG_SIZE] = {0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9,
                                                   0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb, 0x73, 0x8b};
    static const unsigned char sealed_14[16 + TAG_SIZE] = {
        0xce, 0xa7, 0x40, 0x3d, 0x4d, 0x60, 0x6b, 0x6e, 0x07, 0x4e, 0xc5, 0xd3, 0xba, 0xf3, 0x9d, 0x18,
        0xd0, 0xd1, 0xc8, 0xa7, 0x99, 0x99, 0x6b, 0xf0, 0x26, 0x5b, 0x98, 0xb5, 0xd4, 0x8a, 0xb9, 0x19};
    unsigned char zero[KEY_SIZE] = {0}; /* key, nonce and plaintext */
    unsigned char sealed[sizeof(sealed_14)];
    cell_cipher sealer, opener;
    int opened = cipher_open(&sealer, zero, 1, direct);
    opened = cipher_open(&opener, zero, 0, direct) && opened;
    int passed = opened && self_test_seal(&sealer, zero, NULL, 0, zero, 0, sealed) &&
                 memcmp(sealed, tag_13, TAG_SIZE) == 0 && self_test_seal(&sealer, zero, NULL, 0, zero, 16, sealed) &&
                 memcmp(sealed, sealed_14, sizeof(sealed_14)) == 0 &&
                 self_test_opens(&opener, zero, NULL, 0, tag_13, 0, zero) &&
                 self_test_opens(&opener, zero, NULL, 0, sealed_14, 16, zero);
    cipher_close(&sealer);
    cipher_close(&opener);
    ERR_clear_error();
    return passed;
}

/*
 * Self-test of the direct path against the evp path (which passed known_answers at import):
 * - the published answers on the direct path (known_answers);
 * - two cells with associated data under different nonces, sealed cell after cell on one
 *   context of each path, must be the same bytes on both paths (a nonce ignored, or kept
 *   from the previous cell, is caught) and open on one decrypting context of each path;
 * - a flipped bit of the tag, of the ciphertext and of the associated data is refused by
 *   the decrypting context of each path.
 * Returns 1 when the direct path can be used. The test keys are constants, not secrets.
 */
static int self_test_direct(void) {
    if (direct_gcm.provctx == NULL || !known_answers(1)) return 0;
    unsigned char key[KEY_SIZE], nonces[2][NONCE_SIZE], plain[TEST_SIZE], ad[TEST_AD_SIZE];
    unsigned char expected[2][TEST_SIZE + TAG_SIZE], sealed[TEST_SIZE + TAG_SIZE];
    for (int i = 0; i < KEY_SIZE; i++) key[i] = (unsigned char)(0xA5 ^ i);
    for (int i = 0; i < NONCE_SIZE; i++) nonces[0][i] = (unsigned char)i, nonces[1][i] = (unsigned char)(0xF0 - 3 * i);
    for (int i = 0; i < TEST_SIZE; i++) plain[i] = (unsigned char)('a' + i % 26);
    for (int i = 0; i < TEST_AD_SIZE; i++) ad[i] = (unsigned char)(0x30 + i);
    int passed = 0;
    cell_cipher sealers[2], openers[2]; /* [0]: evp, [1]: direct */
    int opened_all = 1;
    for (int path = 0; path < 2; path++) {
        opened_all = cipher_open(&sealers[path], key, 1, path) && opened_all;
        opened_all = cipher_open(&openers[path], key, 0, path) && opened_all;
    }
    if (!opened_all) goto done;
    for (int c = 0; c < 2; c++) {
        if (!self_test_seal(&sealers[0], nonces[c], ad, TEST_AD_SIZE, plain, TEST_SIZE, expected[c]) ||
            !self_test_seal(&sealers[1], nonces[c], ad, TEST_AD_SIZE, plain, TEST_SIZE, sealed) ||
            memcmp(sealed, expected[c], sizeof(sealed)) != 0)
            goto done;
        for (int path = 0; path < 2; path++)
            if (!self_test_opens(&openers[path], nonces[c], ad, TEST_AD_SIZE, expected[c], TEST_SIZE, plain)) goto done;
    }
    if (memcmp(expected[0], expected[1], sizeof(sealed)) == 0) goto done;
    for (int path = 0; path < 2; path++) {
        for (int flipped = 0; flipped < 3; flipped++) { /* the tag, the ciphertext, the associated data */
            memcpy(sealed, expected[1], sizeof(sealed));
            if (flipped == 0) sealed[TEST_SIZE] ^= 1;
            if (flipped == 1) sealed[TEST_SIZE / 2] ^= 0x80;
            if (flipped == 2) ad[TEST_AD_SIZE - 1] ^= 1;
            int refused = !self_test_opens(&openers[path], nonces[1], ad, TEST_AD_SIZE, sealed, TEST_SIZE, plain);
            if (flipped == 2) ad[TEST_AD_SIZE - 1] ^= 1;
            if (!refused) goto done;
        }
    }
    passed = 1;
done:
    for (int path = 0; path < 2; path++) {
        cipher_close(&sealers[path]);
        cipher_close(&openers[path]);
    }
    ERR_clear_error(); /* the refused cells (or a failed test) may leave entries nobody reads */
    return passed;
}

PyDoc_STRVAR(use_direct_path_doc,
             "use_direct_path(on) -> bool\n\n"
             "For tests: whether new calls take the direct provider path (on, the default when the\n"
             "import self-test passed) or the EVP path; on is refused unless the self-test passed.\n"
             "Returns the previous setting.");

static PyObject *kernel_use_direct_path(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (on && !direct_proven) {
        PyErr_SetString(PyExc_ValueError, "the direct provider path failed its self-test on this libcrypto");
        return NULL;
    }
    int previous = use_direct;
    use_direct = on;
    return PyBool_FromLong(previous);
}

PyDoc_STRVAR(inject_final_failure_doc,
             "inject_final_failure(on) -> bool\n\n"
             "For tests only (fault injection): while on, decrypt treats OpenSSL's final step as failed\n"
             "for every cell, as an OpenSSL that fails internally would, so that the tests can see such\n"
             "a failure told apart from a wrong tag. Read when a call starts. Returns the previous setting.");

static PyObject *kernel_inject_final_failure(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    int previous = inject_final_failure;
    inject_final_failure = on;
    return PyBool_FromLong(previous);
}

static PyMethodDef kernel_methods[] = {
    {"encrypt", kernel_encrypt, METH_VARARGS, encrypt_doc},
    {"decrypt", kernel_decrypt, METH_VARARGS, decrypt_doc},
    {"use_direct_path", kernel_use_direct_path, METH_O, use_direct_path_doc},
    {"inject_final_failure", kernel_inject_final_failure, METH_O, inject_final_failure_doc},
    {"wipe", kernel_wipe, METH_O, wipe_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "fieldcrypt._native", "AES-256-GCM cell kernel over Arrow buffers (OpenSSL 3: the provider directly, or EVP).", -1,
    kernel_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (aes_256_gcm == NULL) {
        aes_256_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
        if (aes_256_gcm == NULL) {
            ERR_clear_error();
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no AES-256-GCM (EVP_CIPHER_fetch failed)");
            return NULL;
        }
        /* The cell format fixes a 12-byte nonce and a 32-byte key; the EVP path relies on these
         * being the cipher's defaults, the direct path passes them explicitly. */
        if (EVP_CIPHER_get_iv_length(aes_256_gcm) != NONCE_SIZE || EVP_CIPHER_get_key_length(aes_256_gcm) != KEY_SIZE ||
            EVP_CIPHER_get_mode(aes_256_gcm) != EVP_CIPH_GCM_MODE) {
            EVP_CIPHER_free(aes_256_gcm);
            aes_256_gcm = NULL;
            PyErr_SetString(PyExc_ImportError, "OpenSSL's AES-256-GCM does not have a 12-byte nonce and 32-byte key");
            return NULL;
        }
        if (!known_answers(0)) {
            EVP_CIPHER_free(aes_256_gcm);
            aes_256_gcm = NULL;
            PyErr_SetString(PyExc_ImportError, "OpenSSL's AES-256-GCM failed its known-answer test");
            return NULL;
        }
        find_direct_gcm();
        use_direct = direct_proven = self_test_direct();
    }
    PyObject *module = PyModule_Create(&kernel_module);
    if (module == NULL) return NULL;
    KernelFailure = PyErr_NewException("fieldcrypt._native.KernelFailure", PyExc_RuntimeError, NULL);
    if (KernelFailure == NULL || PyModule_AddObjectRef(module, "KernelFailure", KernelFailure) < 0 ||
        PyModule_AddStringConstant(module, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0 ||
        PyModule_AddIntConstant(module, "CELL_OVERHEAD", CELL_OVERHEAD) < 0 ||
        PyModule_AddIntConstant(module, "DIRECT_PATH_PROVEN", direct_proven) < 0) {
        Py_XDECREF(KernelFailure);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
