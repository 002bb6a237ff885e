/*
 * fieldcrypt._native: the batch cell kernel, AES-256-GCM over whole Arrow binary arrays.
 *
 * Format (docs/FORMAT.md sections 2 and 3, fieldcrypt/cell.py is the reference):
 *
 *   cell = 0x01 || nonce (12 bytes) || AES-256-GCM ciphertext (n bytes) || tag (16 bytes)
 *   ad   = prefix                                  (dataset without a primary key)
 *   ad   = prefix || u32be(len(row_key)) || row_key (dataset with a primary key)
 *
 * `prefix` is built by fieldcrypt.cell.ad_prefix; this module never interprets it.
 *
 * An Arrow binary array arrives as (offsets buffer, data buffer, array offset, offset
 * width 4 or 8) and a length; every offset is checked (in range, non-decreasing, within
 * the data buffer) before any byte is read through it. Outputs are the offsets (int32)
 * and data buffers of a new binary array, built as bytes objects.
 *
 * Keys: the 32-byte data key is read from the caller's buffer into one EVP context per
 * call; the context is freed (OpenSSL cleanses its key schedule) before returning, and
 * this module makes no copy of its own. Nonces: RAND_bytes, drawn NONCE_BATCH at a time.
 * The GIL is released while cells are processed.
 *
 * Speed: the cipher is fetched once (EVP_CIPHER_fetch) and one context per call is keyed
 * once; each cell then only changes the nonce (and, decrypting, the expected tag). On
 * OpenSSL 3.0 EVP_*Init_ex(ctx, NULL, NULL, NULL, nonce) costs a parameter round trip of its
 * own (it asks the provider for the IV length), so the nonce is set instead, together with
 * the tag, in one EVP_CIPHER_CTX_set_params call: OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED with
 * length (size_t)-1, "restore the whole IV", the parameter form of
 * EVP_CTRL_GCM_SET_IV_FIXED with -1. A known-answer self-test at import proves that this
 * libcrypto uses a nonce set that way, cell after cell on one context, exactly like one given
 * to EVP_EncryptInit_ex; if it does not, every call takes the EVP_*Init_ex path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>
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

/* Why a cell did not decrypt (fieldcrypt.kernel turns these into IntegrityError messages). */
#define FAIL_SHORT 1
#define FAIL_VERSION 2
#define FAIL_TAG 3

static PyObject *KernelFailure; /* OpenSSL itself failed: not a property of the data */

typedef struct {
    Py_buffer offsets;
    Py_buffer data;
    int acquired; /* bit 1: offsets, bit 2: data */
    Py_ssize_t start; /* the array's offset into its offsets buffer */
    Py_ssize_t length;
    int width; /* 4 (binary) or 8 (large_binary) */
} binary_view;

static void view_release(binary_view *view) {
    if (view->acquired & 1) PyBuffer_Release(&view->offsets);
    if (view->acquired & 2) PyBuffer_Release(&view->data);
    view->acquired = 0;
}

static inline int64_t view_offset(const binary_view *view, Py_ssize_t i) {
    const unsigned char *at = (const unsigned char *)view->offsets.buf + (size_t)(view->start + i) * (size_t)view->width;
    if (view->width == 4) {
        int32_t value;
        memcpy(&value, at, 4);
        return value;
    }
    int64_t value;
    memcpy(&value, at, 8);
    return value;
}

/* Acquire the buffers and check their shape (not yet the offsets themselves). GIL held. */
static int view_open(binary_view *view, const char *name, PyObject *offsets, PyObject *data, Py_ssize_t start,
                     Py_ssize_t length, int width) {
    memset(view, 0, sizeof(*view));
    view->start = start;
    view->length = length;
    view->width = width;
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
    return 0;
}

/* Every offset in range and non-decreasing, within the data buffer. GIL not needed. */
static int view_offsets_valid(const binary_view *view) {
    int64_t previous = view_offset(view, 0);
    if (previous < 0) return 0;
    for (Py_ssize_t i = 1; i <= view->length; i++) {
        int64_t next = view_offset(view, i);
        if (next < previous) return 0;
        previous = next;
    }
    return previous <= (int64_t)view->data.len;
}

static inline const unsigned char *view_value(const binary_view *view, Py_ssize_t i, int64_t *size) {
    int64_t begin = view_offset(view, i);
    *size = view_offset(view, i + 1) - begin;
    return (const unsigned char *)view->data.buf + begin;
}

/* Feed `size` bytes to an EVP update in int-sized chunks; out may be NULL (associated data). */
static int evp_update(EVP_CIPHER_CTX *ctx, int encrypting, unsigned char *out, const unsigned char *in,
                      int64_t size) {
    CHECK_REGION(in, size);
    if (out != NULL) CHECK_REGION(out, size);
    while (size > 0) {
        int chunk = size > EVP_CHUNK ? EVP_CHUNK : (int)size;
        int written = 0;
        int ok = encrypting ? EVP_EncryptUpdate(ctx, out, &written, in, chunk)
                            : EVP_DecryptUpdate(ctx, out, &written, in, chunk);
        if (!ok || (out != NULL && written != chunk)) return 0;
        in += chunk;
        if (out != NULL) out += chunk;
        size -= chunk;
    }
    return 1;
}

/*
 * The associated data of the cells, assembled in one scratch buffer so that a cell's AD is
 * usually one EVP update: prefix || u32be(len(row key)) || row key (the key copied in when
 * it fits, fed as a second update otherwise). Each EVP call costs a provider dispatch.
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

static int feed_associated_data(EVP_CIPHER_CTX *ctx, int encrypting, const ad_scratch *scratch,
                                const binary_view *row_keys, Py_ssize_t i) {
    if (row_keys == NULL) return evp_update(ctx, encrypting, NULL, scratch->buffer, (int64_t)scratch->prefix_size);
    int64_t size;
    const unsigned char *key = view_value(row_keys, i, &size);
    if (size > (int64_t)UINT32_MAX) return 0; /* checked before the loop; kept as a guard */
    unsigned char *length = scratch->buffer + scratch->prefix_size;
    length[0] = (unsigned char)(size >> 24);
    length[1] = (unsigned char)(size >> 16);
    length[2] = (unsigned char)(size >> 8);
    length[3] = (unsigned char)size;
    int64_t head = (int64_t)scratch->prefix_size + 4;
    if (size <= SCRATCH_ROW_KEY) {
        memcpy(length + 4, key, (size_t)size);
        return evp_update(ctx, encrypting, NULL, scratch->buffer, head + size);
    }
    return evp_update(ctx, encrypting, NULL, scratch->buffer, head) && evp_update(ctx, encrypting, NULL, key, size);
}

/* AES-256-GCM, fetched once at import (an implicit fetch per EVP_*Init_ex is a lookup). */
static EVP_CIPHER *aes_256_gcm;

/* 1 when the self-test proved the one-call nonce (and tag) setting; 0: EVP_*Init_ex per cell. */
static int nonce_by_params;

/*
 * The provider parameters a cell's nonce, expected tag and computed tag go through, built
 * once per call: each cell only points them at its own bytes (building them per cell,
 * through OSSL_PARAM_construct_*, showed in profiles). EVP_CIPHER_CTX_ctrl would translate to
 * the same parameters.
 */
typedef struct {
    OSSL_PARAM start[3]; /* decrypting: expected tag, then (by_params) the whole IV; encrypting: the IV */
    OSSL_PARAM tag[2];   /* encrypting: the computed tag */
    int encrypting, by_params;
} cell_params;

static void octet_param(OSSL_PARAM *param, const char *key, size_t size) {
    *param = OSSL_PARAM_construct_octet_string(key, NULL, 0);
    param->data_size = size;
}

static void cell_params_init(cell_params *params, int encrypting, int by_params) {
    params->encrypting = encrypting;
    params->by_params = by_params;
    size_t n = 0;
    if (!encrypting) octet_param(&params->start[n++], OSSL_CIPHER_PARAM_AEAD_TAG, TAG_SIZE);
    /* Length (size_t)-1: "the whole IV" (the context's IV length, NONCE_SIZE), as EVP_CTRL_GCM_SET_IV_FIXED -1. */
    if (by_params) octet_param(&params->start[n++], OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED, (size_t)-1);
    while (n < 3) params->start[n++] = OSSL_PARAM_construct_end();
    octet_param(&params->tag[0], OSSL_CIPHER_PARAM_AEAD_TAG, TAG_SIZE);
    params->tag[1] = OSSL_PARAM_construct_end();
}

/*
 * Start a cell on a keyed context: its nonce (NONCE_SIZE bytes) and, decrypting, the tag to
 * expect (TAG_SIZE bytes; NULL when encrypting).
 */
static int start_cell(EVP_CIPHER_CTX *ctx, cell_params *params, const unsigned char *nonce, const unsigned char *tag) {
    CHECK_REGION(nonce, NONCE_SIZE);
    if (!params->encrypting) {
        CHECK_REGION(tag, TAG_SIZE);
        params->start[0].data = (void *)tag;
    }
    if (params->by_params) {
        params->start[params->encrypting ? 0 : 1].data = (void *)nonce;
        return EVP_CIPHER_CTX_set_params(ctx, params->start) == 1;
    }
    if (params->encrypting) return EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1;
    return EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1 && EVP_CIPHER_CTX_set_params(ctx, params->start) == 1;
}

/* The tag of the cell just finished (encrypting) into `tag` (TAG_SIZE bytes). */
static int get_tag(EVP_CIPHER_CTX *ctx, cell_params *params, unsigned char *tag) {
    params->tag[0].data = tag;
    return EVP_CIPHER_CTX_get_params(ctx, params->tag) == 1;
}

static void write_offset32(unsigned char *offsets, Py_ssize_t i, int64_t value) {
    int32_t narrow = (int32_t)value;
    memcpy(offsets + (size_t)i * 4, &narrow, 4);
}

typedef struct {
    PyObject *key, *prefix;
    PyObject *value_offsets, *value_data, *key_offsets, *key_data;
    Py_ssize_t value_start, count, key_start;
    int value_width, key_width;
} call_args;

static int parse_args(PyObject *args, call_args *call) {
    memset(call, 0, sizeof(*call));
    return PyArg_ParseTuple(args, "OOOOnniOOni:kernel", &call->key, &call->prefix, &call->value_offsets,
                            &call->value_data, &call->value_start, &call->count, &call->value_width,
                            &call->key_offsets, &call->key_data, &call->key_start, &call->key_width)
               ? 0
               : -1;
}

typedef struct {
    Py_buffer key, prefix;
    int have_key, have_prefix;
    binary_view values, row_keys;
    int have_row_keys;
} call_buffers;

static void buffers_release(call_buffers *buffers) {
    if (buffers->have_key) PyBuffer_Release(&buffers->key);
    if (buffers->have_prefix) PyBuffer_Release(&buffers->prefix);
    view_release(&buffers->values);
    view_release(&buffers->row_keys);
    buffers->have_key = buffers->have_prefix = 0;
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
    if (view_open(&buffers->values, values_name, call->value_offsets, call->value_data, call->value_start,
                  call->count, call->value_width) < 0)
        goto fail;
    if (call->key_offsets != Py_None) {
        if (view_open(&buffers->row_keys, "row keys", call->key_offsets, call->key_data, call->key_start,
                      call->count, call->key_width) < 0)
            goto fail;
        buffers->have_row_keys = 1;
    }
    int values_ok, keys_ok = 1;
    int64_t longest_key = 0;
    Py_BEGIN_ALLOW_THREADS
    values_ok = view_offsets_valid(&buffers->values);
    if (buffers->have_row_keys) {
        keys_ok = view_offsets_valid(&buffers->row_keys);
        for (Py_ssize_t i = 0; keys_ok && i < call->count; i++) {
            int64_t size = view_offset(&buffers->row_keys, i + 1) - view_offset(&buffers->row_keys, i);
            if (size > longest_key) longest_key = size;
        }
    }
    Py_END_ALLOW_THREADS
    if (!values_ok) {
        PyErr_Format(PyExc_ValueError, "%s: offsets out of order or outside the data buffer", values_name);
        goto fail;
    }
    if (!keys_ok) {
        PyErr_SetString(PyExc_ValueError, "row keys: offsets out of order or outside the data buffer");
        goto fail;
    }
    if (longest_key > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "row key longer than 2^32-1 bytes");
        goto fail;
    }
    return 0;
fail:
    buffers_release(buffers);
    return -1;
}

static EVP_CIPHER_CTX *new_context(const Py_buffer *key, int encrypting) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    int ok = encrypting ? EVP_EncryptInit_ex(ctx, aes_256_gcm, NULL, key->buf, NULL)
                        : EVP_DecryptInit_ex(ctx, aes_256_gcm, NULL, key->buf, NULL);
    if (!ok) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

PyDoc_STRVAR(encrypt_doc,
             "encrypt(key, prefix, value_offsets, value_data, value_start, count, value_width,\n"
             "        key_offsets, key_data, key_start, key_width) -> (offsets: bytes, data: bytes)\n\n"
             "Encrypt `count` values into version-1 cells; key_offsets is None without row keys.\n"
             "The result is the int32 offsets and data buffers of a binary array.");

static PyObject *kernel_encrypt(PyObject *self, PyObject *args) {
    (void)self;
    call_args call;
    call_buffers buffers;
    if (parse_args(args, &call) < 0) return NULL;
    if (buffers_open(&call, &buffers, "values") < 0) return NULL;
    const binary_view *values = &buffers.values;
    const binary_view *row_keys = buffers.have_row_keys ? &buffers.row_keys : NULL;
    Py_ssize_t n = call.count;
    /* Output size: every value plus 29 bytes, within int32 offsets. */
    int64_t plain_total = view_offset(values, n) - view_offset(values, 0);
    if (plain_total > (int64_t)INT32_MAX - (int64_t)n * CELL_OVERHEAD || n > (INT32_MAX / CELL_OVERHEAD)) {
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
    int ok = 1;
    cell_params params;
    cell_params_init(&params, 1, nonce_by_params);
    Py_BEGIN_ALLOW_THREADS
    unsigned char nonces[NONCE_BATCH * NONCE_SIZE];
    ad_scratch scratch;
    EVP_CIPHER_CTX *ctx = NULL;
    ok = scratch_open(&scratch, &buffers.prefix);
    if (ok) ctx = new_context(&buffers.key, 1);
    ok = ok && ctx != NULL;
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
        int64_t size;
        const unsigned char *value = view_value(values, i, &size);
        unsigned char *cell = cells + at;
        const unsigned char *nonce = nonces + in_batch * NONCE_SIZE;
        int tail = 0;
        cell[0] = CELL_VERSION;
        memcpy(cell + 1, nonce, NONCE_SIZE);
        CHECK_REGION(cell + 1 + NONCE_SIZE + size, TAG_SIZE);
        ok = start_cell(ctx, &params, nonce, NULL) && feed_associated_data(ctx, 1, &scratch, row_keys, i) &&
             evp_update(ctx, 1, cell + 1 + NONCE_SIZE, value, size) &&
             EVP_EncryptFinal_ex(ctx, cell + 1 + NONCE_SIZE + size, &tail) && tail == 0 &&
             get_tag(ctx, &params, cell + 1 + NONCE_SIZE + size);
        at += size + CELL_OVERHEAD;
        write_offset32(offsets, i + 1, at);
    }
    EVP_CIPHER_CTX_free(ctx);
    scratch_close(&scratch);
    Py_END_ALLOW_THREADS
    buffers_release(&buffers);
    if (!ok) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        PyErr_SetString(KernelFailure, "OpenSSL AES-256-GCM encryption or RAND_bytes failed");
        return NULL;
    }
    return Py_BuildValue("(NN)", out_offsets, out_data);
}

PyDoc_STRVAR(decrypt_doc,
             "decrypt(key, prefix, cell_offsets, cell_data, cell_start, count, cell_width,\n"
             "        key_offsets, key_data, key_start, key_width) -> (offsets, data, failure)\n\n"
             "Authenticate and decrypt `count` cells, stopping at the first that fails. On success\n"
             "failure is None and offsets/data are the int32 offsets and data of the plaintexts;\n"
             "otherwise offsets and data are None (the partial plaintext is wiped) and failure is\n"
             "(index, reason, detail): reason 1 too short (detail: length), 2 unknown version\n"
             "(detail: version byte), 3 authentication failed (detail: 0).");

static PyObject *kernel_decrypt(PyObject *self, PyObject *args) {
    (void)self;
    call_args call;
    call_buffers buffers;
    if (parse_args(args, &call) < 0) return NULL;
    if (buffers_open(&call, &buffers, "cells") < 0) return NULL;
    const binary_view *cells = &buffers.values;
    const binary_view *row_keys = buffers.have_row_keys ? &buffers.row_keys : NULL;
    Py_ssize_t n = call.count;
    /* Output size: every cell minus 29 bytes (a short cell contributes nothing and fails below). */
    int64_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t size = view_offset(cells, i + 1) - view_offset(cells, i);
        if (size > CELL_OVERHEAD) total += size - CELL_OVERHEAD;
    }
    Py_END_ALLOW_THREADS
    if (total > (int64_t)INT32_MAX) {
        buffers_release(&buffers);
        PyErr_SetString(PyExc_OverflowError, "plaintexts of this call exceed 2 GiB; decrypt in smaller slices");
        return NULL;
    }
    PyObject *out_offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    PyObject *out_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out_offsets == NULL || out_data == NULL) {
        Py_XDECREF(out_offsets);
        Py_XDECREF(out_data);
        buffers_release(&buffers);
        return NULL;
    }
    unsigned char *offsets = (unsigned char *)PyBytes_AS_STRING(out_offsets);
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(out_data);
    int ok = 1;
    Py_ssize_t failed_at = -1;
    long reason = 0, detail = 0;
    cell_params params;
    cell_params_init(&params, 0, nonce_by_params);
    Py_BEGIN_ALLOW_THREADS
    ad_scratch scratch;
    EVP_CIPHER_CTX *ctx = NULL;
    ok = scratch_open(&scratch, &buffers.prefix);
    if (ok) ctx = new_context(&buffers.key, 0);
    ok = ok && ctx != NULL;
    int64_t at = 0;
    write_offset32(offsets, 0, 0);
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        int64_t size;
        const unsigned char *cell = view_value(cells, i, &size);
        if (size < CELL_OVERHEAD) {
            failed_at = i, reason = FAIL_SHORT, detail = (long)size;
            break;
        }
        if (cell[0] != CELL_VERSION) {
            failed_at = i, reason = FAIL_VERSION, detail = cell[0];
            break;
        }
        int64_t body = size - CELL_OVERHEAD;
        int tail = 0;
        ok = start_cell(ctx, &params, cell + 1, cell + 1 + NONCE_SIZE + body) &&
             feed_associated_data(ctx, 0, &scratch, row_keys, i) &&
             evp_update(ctx, 0, plain + at, cell + 1 + NONCE_SIZE, body);
        if (ok && EVP_DecryptFinal_ex(ctx, plain + at + body, &tail) <= 0) {
            failed_at = i, reason = FAIL_TAG, detail = 0;
            break;
        }
        at += body;
        write_offset32(offsets, i + 1, at);
    }
    EVP_CIPHER_CTX_free(ctx);
    scratch_close(&scratch);
    if (!ok || failed_at >= 0) OPENSSL_cleanse(plain, (size_t)total); /* no plaintext of a failed call survives */
    Py_END_ALLOW_THREADS
    buffers_release(&buffers);
    if (!ok) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        PyErr_SetString(KernelFailure, "OpenSSL AES-256-GCM decryption failed");
        return NULL;
    }
    if (failed_at >= 0) {
        Py_DECREF(out_offsets);
        Py_DECREF(out_data);
        return Py_BuildValue("(OO(nll))", Py_None, Py_None, failed_at, reason, detail);
    }
    return Py_BuildValue("(NNO)", out_offsets, out_data, Py_None);
}

/* One cell the way start_cell does it (by_params chosen by the caller) or, with `fresh`, through a
 * context keyed and given its nonce by EVP_EncryptInit_ex: the reference. out: ciphertext || tag. */
static int self_test_seal(EVP_CIPHER_CTX *ctx, int fresh, const unsigned char *key, const unsigned char *nonce,
                          const unsigned char *ad, int ad_size, const unsigned char *plain, int size,
                          unsigned char *out) {
    int written = 0;
    cell_params params;
    cell_params_init(&params, 1, 1);
    int ok = fresh ? EVP_EncryptInit_ex(ctx, aes_256_gcm, NULL, key, nonce) == 1 : start_cell(ctx, &params, nonce, NULL);
    return ok && EVP_EncryptUpdate(ctx, NULL, &written, ad, ad_size) && EVP_EncryptUpdate(ctx, out, &written, plain, size) &&
           written == size && EVP_EncryptFinal_ex(ctx, out + size, &written) && written == 0 &&
           get_tag(ctx, &params, out + size);
}

static int self_test_open(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *ad, int ad_size,
                          const unsigned char *sealed, int size, unsigned char *plain) {
    int written = 0;
    cell_params params;
    cell_params_init(&params, 0, 1);
    return start_cell(ctx, &params, nonce, sealed + size) && EVP_DecryptUpdate(ctx, NULL, &written, ad, ad_size) &&
           EVP_DecryptUpdate(ctx, plain, &written, sealed, size) && written == size &&
           EVP_DecryptFinal_ex(ctx, plain + size, &written) == 1;
}

/*
 * Known-answer self-test of the one-call nonce path: two cells under different nonces on one
 * keyed context must equal cells made the reference way (EVP_EncryptInit_ex with key and
 * nonce, a fresh context each), so a nonce that was ignored or kept from the previous cell is
 * caught; both must open on one decrypting context, and a wrong tag must be refused.
 */
static int self_test_nonce_by_params(void) {
    enum { SIZE = 37, AD_SIZE = 21 };
    unsigned char key[KEY_SIZE], nonces[2][NONCE_SIZE], plain[SIZE], ad[AD_SIZE];
    unsigned char expected[2][SIZE + TAG_SIZE], sealed[SIZE + TAG_SIZE], opened[SIZE + 16];
    for (int i = 0; i < KEY_SIZE; i++) key[i] = (unsigned char)(0xA5 ^ i);
    for (int i = 0; i < NONCE_SIZE; i++) nonces[0][i] = (unsigned char)i, nonces[1][i] = (unsigned char)(0xF0 - 3 * i);
    for (int i = 0; i < SIZE; i++) plain[i] = (unsigned char)('a' + i % 26);
    for (int i = 0; i < AD_SIZE; i++) ad[i] = (unsigned char)(0x30 + i);
    int passed = 0;
    EVP_CIPHER_CTX *reference = EVP_CIPHER_CTX_new(), *sealer = EVP_CIPHER_CTX_new(), *opener = EVP_CIPHER_CTX_new();
    if (reference == NULL || sealer == NULL || opener == NULL) goto done;
    if (EVP_EncryptInit_ex(sealer, aes_256_gcm, NULL, key, NULL) != 1 ||
        EVP_DecryptInit_ex(opener, aes_256_gcm, NULL, key, NULL) != 1)
        goto done;
    for (int c = 0; c < 2; c++) {
        if (!self_test_seal(reference, 1, key, nonces[c], ad, AD_SIZE, plain, SIZE, expected[c]) ||
            !self_test_seal(sealer, 0, key, nonces[c], ad, AD_SIZE, plain, SIZE, sealed) ||
            memcmp(sealed, expected[c], sizeof(sealed)) != 0)
            goto done;
        if (!self_test_open(opener, nonces[c], ad, AD_SIZE, expected[c], SIZE, opened) ||
            memcmp(opened, plain, SIZE) != 0)
            goto done;
    }
    if (memcmp(expected[0], expected[1], sizeof(sealed)) == 0) goto done;
    memcpy(sealed, expected[1], sizeof(sealed));
    sealed[SIZE] ^= 1;
    passed = !self_test_open(opener, nonces[1], ad, AD_SIZE, sealed, SIZE, opened);
done:
    EVP_CIPHER_CTX_free(reference);
    EVP_CIPHER_CTX_free(sealer);
    EVP_CIPHER_CTX_free(opener);
    ERR_clear_error(); /* the refused tag (or a failed test) leaves entries nobody will read */
    return passed;
}

static int nonce_params_proven; /* the self-test's verdict, fixed at import */

PyDoc_STRVAR(use_nonce_params_doc,
             "use_nonce_params(on) -> bool\n\n"
             "For tests: whether calls set each cell's nonce in one parameter call (on, the default when\n"
             "the import self-test passed) or through EVP_*Init_ex; on is refused unless the self-test\n"
             "passed. Returns the previous setting.");

static PyObject *kernel_use_nonce_params(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (on && !nonce_params_proven) {
        PyErr_SetString(PyExc_ValueError, "the one-call nonce path failed its self-test on this libcrypto");
        return NULL;
    }
    int previous = nonce_by_params;
    nonce_by_params = on;
    return PyBool_FromLong(previous);
}

static PyMethodDef kernel_methods[] = {
    {"encrypt", kernel_encrypt, METH_VARARGS, encrypt_doc},
    {"decrypt", kernel_decrypt, METH_VARARGS, decrypt_doc},
    {"use_nonce_params", kernel_use_nonce_params, METH_O, use_nonce_params_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "fieldcrypt._native", "AES-256-GCM cell kernel over Arrow buffers (OpenSSL EVP).", -1,
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
        nonce_by_params = nonce_params_proven = self_test_nonce_by_params();
    }
    PyObject *module = PyModule_Create(&kernel_module);
    if (module == NULL) return NULL;
    KernelFailure = PyErr_NewException("fieldcrypt._native.KernelFailure", PyExc_RuntimeError, NULL);
    if (KernelFailure == NULL || PyModule_AddObjectRef(module, "KernelFailure", KernelFailure) < 0 ||
        PyModule_AddStringConstant(module, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0 ||
        PyModule_AddIntConstant(module, "CELL_OVERHEAD", CELL_OVERHEAD) < 0 ||
        PyModule_AddIntConstant(module, "NONCE_PARAMS_PROVEN", nonce_params_proven) < 0) {
        Py_XDECREF(KernelFailure);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
