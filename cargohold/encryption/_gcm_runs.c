/* cargohold.encryption._gcm_runs: the innermost loop of version-2 slots in C.
 *
 * Seals and opens whole runs of 4 KiB blocks with AES-256-GCM through OpenSSL's EVP API
 * (one EVP_CIPHER_CTX per call, keyed once, re-initialised with each block's IV): no
 * cipher code of its own. The construction is block_cipher.py's (docs/encryption.md):
 *
 *   nonce = version (u64 BE) || index mod 2**32 (u32 BE)
 *   ad    = volume id (16 bytes) || index (u64 BE) || version (u64 BE)
 *
 * The key is the derived block key (block_cipher.derive_block_key); the caller derives
 * and caches it. The block loop runs without the GIL, over buffers held by the buffer
 * protocol for the whole call. Bad lengths and out-of-range numbers raise ValueError.
 * block_cipher.py falls back to its pure-Python loop when this module is absent.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define BLOCK 4096
#define TAG_BYTES 16
#define KEY_BYTES 32
#define ID_BYTES 16
#define IV_BYTES 12
#define AD_BYTES (ID_BYTES + 16)

static void put_be64(unsigned char *p, uint64_t v) {
    for (int k = 7; k >= 0; k--) {
        p[k] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static void put_be32(unsigned char *p, uint32_t v) {
    for (int k = 3; k >= 0; k--) {
        p[k] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

/* nonce and ad of block `index` at `version`; ad's first ID_BYTES already hold the id */
static void nonce_ad(unsigned char *iv, unsigned char *ad, uint64_t index, uint64_t version) {
    put_be64(iv, version);
    put_be32(iv + 8, (uint32_t)(index & 0xffffffffu));
    put_be64(ad + ID_BYTES, index);
    put_be64(ad + ID_BYTES + 8, version);
}

/* a Python int in 0..2**64-1 -> *out; else ValueError (also for negative or too big) */
static int as_u64(PyObject *obj, const char *what, uint64_t *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**64-1", what);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* the checks every call shares: key and id lengths, a whole number of blocks, and the
 * block indexes first .. first + n - 1 within u64 */
static int check_common(const Py_buffer *key, const Py_buffer *vid, uint64_t first,
                        Py_ssize_t len, const char *what, Py_ssize_t *n) {
    if (key->len != KEY_BYTES) {
        PyErr_Format(PyExc_ValueError, "the key is %d bytes, not %zd", KEY_BYTES, key->len);
        return -1;
    }
    if (vid->len != ID_BYTES) {
        PyErr_Format(PyExc_ValueError, "the volume id is %d bytes, not %zd", ID_BYTES,
                     vid->len);
        return -1;
    }
    if (len % BLOCK) {
        PyErr_Format(PyExc_ValueError, "the %s is %zd bytes, not a multiple of %d", what, len,
                     BLOCK);
        return -1;
    }
    *n = len / BLOCK;
    if (*n > 0 && (uint64_t)(*n - 1) > UINT64_MAX - first) {
        PyErr_SetString(PyExc_ValueError, "the run's block indexes pass 2**64-1");
        return -1;
    }
    return 0;
}

static EVP_CIPHER_CTX *keyed(const unsigned char *key, int enc) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NULL;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, IV_BYTES, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

PyDoc_STRVAR(seal_run_doc,
             "seal_run(key, volume_id, first, version, plaintext, out) -> bytes\n\n"
             "Blocks first, first + 1, ... of plaintext (n * 4096 bytes) sealed at one "
             "version under the derived block key (32 bytes): their ciphertext into out "
             "(n * 4096 bytes, writable; the same buffer as plaintext or apart from it), "
             "-> their n tags, 16 bytes each, in one bytes object.");

static PyObject *seal_run(PyObject *self, PyObject *args) {
    Py_buffer key = {0}, vid = {0}, plain = {0}, out = {0};
    PyObject *first_obj, *version_obj, *tags = NULL;
    uint64_t first, version;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*OOy*w*:seal_run", &key, &vid, &first_obj, &version_obj,
                          &plain, &out))
        return NULL;
    if (as_u64(first_obj, "first", &first) || as_u64(version_obj, "version", &version) ||
        check_common(&key, &vid, first, plain.len, "plaintext", &n))
        goto done;
    if (out.len != plain.len) {
        PyErr_Format(PyExc_ValueError, "out is %zd bytes, the plaintext %zd", out.len,
                     plain.len);
        goto done;
    }
    tags = PyBytes_FromStringAndSize(NULL, n * TAG_BYTES);
    if (tags == NULL)
        goto done;
    {
        unsigned char *tp = (unsigned char *)PyBytes_AS_STRING(tags);
        const unsigned char *src = plain.buf;
        unsigned char *dst = out.buf;
        unsigned char iv[IV_BYTES], ad[AD_BYTES], scratch[16];
        int ok = 1, len;
        memcpy(ad, vid.buf, ID_BYTES);
        Py_BEGIN_ALLOW_THREADS
        EVP_CIPHER_CTX *ctx = keyed(key.buf, 1);
        if (ctx == NULL)
            ok = 0;
        for (Py_ssize_t k = 0; ok && k < n; k++) {
            nonce_ad(iv, ad, first + (uint64_t)k, version);
            ok = EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) == 1 &&
                 EVP_EncryptUpdate(ctx, NULL, &len, ad, AD_BYTES) == 1 &&
                 EVP_EncryptUpdate(ctx, dst + k * BLOCK, &len, src + k * BLOCK, BLOCK) == 1 &&
                 len == BLOCK && EVP_EncryptFinal_ex(ctx, scratch, &len) == 1 &&
                 EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES,
                                     tp + k * TAG_BYTES) == 1;
        }
        EVP_CIPHER_CTX_free(ctx);
        Py_END_ALLOW_THREADS
        if (!ok) {
            Py_CLEAR(tags);
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL's AES-256-GCM failed to seal");
        }
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&vid);
    PyBuffer_Release(&plain);
    PyBuffer_Release(&out);
    return tags;
}

PyDoc_STRVAR(open_run_doc,
             "open_run(key, volume_id, first, versions, tags, ciphertext, out) -> list\n\n"
             "Blocks first, first + 1, ... of ciphertext (n * 4096 bytes) opened under the "
             "derived block key (32 bytes), block k at versions[k] (n u64, little-endian: "
             "8 * n bytes) with tag tags[16k:16k + 16] (16 * n bytes): their plaintext into "
             "out (n * 4096 bytes, writable). -> the positions k (0-based) of the blocks "
             "that failed authentication, their part of out zeroed. A version of 0 skips "
             "its block: out left as it is, not reported.");

static PyObject *open_run(PyObject *self, PyObject *args) {
    Py_buffer key = {0}, vid = {0}, vers = {0}, tagb = {0}, ct = {0}, out = {0};
    PyObject *first_obj, *result = NULL;
    uint64_t first;
    Py_ssize_t n;
    unsigned char *failed = NULL;
    if (!PyArg_ParseTuple(args, "y*y*Oy*y*y*w*:open_run", &key, &vid, &first_obj, &vers, &tagb,
                          &ct, &out))
        return NULL;
    if (as_u64(first_obj, "first", &first) ||
        check_common(&key, &vid, first, ct.len, "ciphertext", &n))
        goto done;
    if (out.len != ct.len) {
        PyErr_Format(PyExc_ValueError, "out is %zd bytes, the ciphertext %zd", out.len, ct.len);
        goto done;
    }
    if (vers.len != n * 8) {
        PyErr_Format(PyExc_ValueError, "versions is %zd bytes, not 8 per block (%zd)", vers.len,
                     n * 8);
        goto done;
    }
    if (tagb.len != n * TAG_BYTES) {
        PyErr_Format(PyExc_ValueError, "tags is %zd bytes, not %d per block (%zd)", tagb.len,
                     TAG_BYTES, n * TAG_BYTES);
        goto done;
    }
    failed = PyMem_Calloc(n ? n : 1, 1);
    if (failed == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        const unsigned char *vp = vers.buf, *tp = tagb.buf, *src = ct.buf;
        unsigned char *dst = out.buf;
        unsigned char iv[IV_BYTES], ad[AD_BYTES], tag[TAG_BYTES], scratch[16];
        int ok = 1, len;
        memcpy(ad, vid.buf, ID_BYTES);
        Py_BEGIN_ALLOW_THREADS
        EVP_CIPHER_CTX *ctx = keyed(key.buf, 0);
        if (ctx == NULL)
            ok = 0;
        for (Py_ssize_t k = 0; ok && k < n; k++) {
            uint64_t version = get_le64(vp + 8 * k);
            if (version == 0)
                continue;
            nonce_ad(iv, ad, first + (uint64_t)k, version);
            memcpy(tag, tp + k * TAG_BYTES, TAG_BYTES); /* SET_TAG takes a non-const pointer */
            ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv) == 1 &&
                 EVP_DecryptUpdate(ctx, NULL, &len, ad, AD_BYTES) == 1 &&
                 EVP_DecryptUpdate(ctx, dst + k * BLOCK, &len, src + k * BLOCK, BLOCK) == 1 &&
                 len == BLOCK && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) == 1;
            if (ok && EVP_DecryptFinal_ex(ctx, scratch, &len) != 1) {
                memset(dst + k * BLOCK, 0, BLOCK);
                failed[k] = 1;
            }
        }
        EVP_CIPHER_CTX_free(ctx);
        Py_END_ALLOW_THREADS
        if (!ok) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL's AES-256-GCM failed to open");
            goto done;
        }
    }
    result = PyList_New(0);
    for (Py_ssize_t k = 0; result != NULL && k < n; k++) {
        if (!failed[k])
            continue;
        PyObject *pos = PyLong_FromSsize_t(k);
        if (pos == NULL || PyList_Append(result, pos) < 0)
            Py_CLEAR(result);
        Py_XDECREF(pos);
    }
done:
    PyMem_Free(failed);
    PyBuffer_Release(&key);
    PyBuffer_Release(&vid);
    PyBuffer_Release(&vers);
    PyBuffer_Release(&tagb);
    PyBuffer_Release(&ct);
    PyBuffer_Release(&out);
    return result;
}

#define ENTRY 64
#define SLOT 32
#define RETIRED 0x02
#define ZERO 0x01
#define GCM 0x04

PyDoc_STRVAR(newest_doc,
             "newest(entries, salt, epoch) -> (versions, tags, others)\n\n"
             "Of n tag entries (n * 64 bytes), the blocks whose newest live slot (neither "
             "empty nor retired; equal versions: the first) is a version-2 slot (GCM, not "
             "ZERO) of this salt (6 bytes) and epoch: versions (n u64 little-endian, 0 for "
             "every other block) and tags (16 * n bytes, zeros for every other block), for "
             "open_run; others: the positions of every other block (a list).");

static PyObject *newest(PyObject *self, PyObject *args) {
    Py_buffer ent = {0}, salt = {0};
    PyObject *epoch_obj, *vers = NULL, *tags = NULL, *others = NULL, *result = NULL;
    uint64_t epoch;
    if (!PyArg_ParseTuple(args, "y*y*O:newest", &ent, &salt, &epoch_obj))
        return NULL;
    if (as_u64(epoch_obj, "epoch", &epoch))
        goto done;
    if (ent.len % ENTRY) {
        PyErr_Format(PyExc_ValueError, "the entries are %zd bytes, not a multiple of %d",
                     ent.len, ENTRY);
        goto done;
    }
    if (salt.len != 6) {
        PyErr_Format(PyExc_ValueError, "the salt is 6 bytes, not %zd", salt.len);
        goto done;
    }
    Py_ssize_t n = ent.len / ENTRY;
    vers = PyBytes_FromStringAndSize(NULL, n * 8);
    tags = PyBytes_FromStringAndSize(NULL, n * TAG_BYTES);
    others = PyList_New(0);
    if (vers == NULL || tags == NULL || others == NULL)
        goto done;
    unsigned char *vp = (unsigned char *)PyBytes_AS_STRING(vers);
    unsigned char *tp = (unsigned char *)PyBytes_AS_STRING(tags);
    const unsigned char *e = ent.buf;
    for (Py_ssize_t k = 0; k < n; k++, e += ENTRY) {
        uint64_t va = get_le64(e), vb = get_le64(e + SLOT);
        int live_a = va != 0 && !(e[24] & RETIRED);
        int live_b = vb != 0 && !(e[SLOT + 24] & RETIRED);
        const unsigned char *s = NULL; /* the newest live slot */
        if (live_a && (!live_b || va >= vb))
            s = e;
        else if (live_b)
            s = e + SLOT;
        uint64_t v = s ? get_le64(s) : 0;
        if (s && (s[24] & (GCM | ZERO)) == GCM && memcmp(s + 25, salt.buf, 6) == 0 &&
            v >> 32 == epoch) {
            memcpy(vp + 8 * k, s, 8); /* little-endian already */
            memcpy(tp + TAG_BYTES * k, s + 8, TAG_BYTES);
            continue;
        }
        memset(vp + 8 * k, 0, 8);
        memset(tp + TAG_BYTES * k, 0, TAG_BYTES);
        PyObject *pos = PyLong_FromSsize_t(k);
        if (pos == NULL || PyList_Append(others, pos) < 0) {
            Py_XDECREF(pos);
            goto done;
        }
        Py_DECREF(pos);
    }
    result = PyTuple_Pack(3, vers, tags, others);
done:
    Py_XDECREF(vers);
    Py_XDECREF(tags);
    Py_XDECREF(others);
    PyBuffer_Release(&ent);
    PyBuffer_Release(&salt);
    return result;
}

static PyMethodDef methods[] = {
    {"seal_run", seal_run, METH_VARARGS, seal_run_doc},
    {"open_run", open_run, METH_VARARGS, open_run_doc},
    {"newest", newest, METH_VARARGS, newest_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_gcm_runs",
    "AES-256-GCM over whole runs of 4 KiB blocks through OpenSSL (block_cipher.py's native "
    "path; docs/encryption.md, \"Cost\").",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__gcm_runs(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
