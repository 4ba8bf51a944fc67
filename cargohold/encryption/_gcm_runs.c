/* cargohold.encryption._gcm_runs: the innermost loop of version-2 slots in C.
 *
 * Seals and opens whole runs of 4 KiB blocks with AES-256-GCM through OpenSSL's EVP API
 * (an EVP_CIPHER_CTX keyed once, re-initialised with each block's IV): no cipher code of
 * its own. A Key object keeps one context per direction for a derived key, keyed once for
 * its lifetime (the key schedule is not paid per call); a call that finds its Key's
 * context in use by another thread (the GIL is released while sealing) keys a context of
 * its own for that call. A 32-byte key given as bytes is keyed per call. The construction is block_cipher.py's (docs/encryption.md):
 *
 *   nonce = version (u64 BE) || index mod 2**32 (u32 BE)
 *   ad    = volume id (16 bytes) || index (u64 BE) || version (u64 BE)
 *
 * The key is the derived block key (block_cipher.derive_block_key), as a Key or 32 bytes;
 * the caller derives and caches it. put_slots writes the tag entries of a sealed run
 * (block_cipher.put_slots' rules). The block loop runs without the GIL, over buffers held
 * by the buffer protocol for the whole call. Bad lengths and out-of-range numbers raise ValueError.
 * block_cipher.py falls back to its pure-Python loop when this module is absent.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pythread.h>

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

/* the checks every call shares: the id's length, a whole number of blocks, and the
 * block indexes first .. first + n - 1 within u64 */
static int check_common(const Py_buffer *vid, uint64_t first, Py_ssize_t len,
                        const char *what, Py_ssize_t *n) {
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

/* --- Key: a derived key and its cipher contexts, keyed once ---------------------------- */

typedef struct {
    PyObject_HEAD
    unsigned char key[KEY_BYTES];
    EVP_CIPHER_CTX *ctx[2]; /* [0] opens, [1] seals; NULL until first used */
    PyThread_type_lock lock; /* held (without the GIL) by the call using ctx */
} KeyObject;

static PyTypeObject KeyType;

static PyObject *Key_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Py_buffer key = {0};
    static char *kwlist[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:Key", kwlist, &key))
        return NULL;
    if (key.len != KEY_BYTES) {
        PyErr_Format(PyExc_ValueError, "the key is %d bytes, not %zd", KEY_BYTES, key.len);
        PyBuffer_Release(&key);
        return NULL;
    }
    KeyObject *self = (KeyObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        memcpy(self->key, key.buf, KEY_BYTES);
        self->lock = PyThread_allocate_lock();
        if (self->lock == NULL) {
            Py_DECREF(self);
            self = NULL;
            PyErr_NoMemory();
        }
    }
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

static void Key_dealloc(KeyObject *self) {
    for (int k = 0; k < 2; k++)
        if (self->ctx[k] != NULL)
            EVP_CIPHER_CTX_free(self->ctx[k]);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    OPENSSL_cleanse(self->key, KEY_BYTES);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cargohold.encryption._gcm_runs.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Key(key): a derived block key (32 bytes) and its AES-256-GCM contexts, "
              "keyed once; pass it to seal_run and open_run as their key.",
    .tp_new = Key_new,
};

/* The key argument of seal_run/open_run: a Key or 32 bytes. With the GIL held. */
typedef struct {
    KeyObject *obj; /* NULL: bytes, in buf */
    Py_buffer buf;
    int locked;
} KeyArg;

static int key_arg(PyObject *o, KeyArg *k) {
    memset(k, 0, sizeof(*k));
    if (PyObject_TypeCheck(o, &KeyType)) {
        k->obj = (KeyObject *)o;
        k->locked = PyThread_acquire_lock(k->obj->lock, NOWAIT_LOCK) == PY_LOCK_ACQUIRED;
        return 0;
    }
    if (PyObject_GetBuffer(o, &k->buf, PyBUF_SIMPLE) < 0)
        return -1;
    if (k->buf.len != KEY_BYTES) {
        PyErr_Format(PyExc_ValueError, "the key is %d bytes, not %zd", KEY_BYTES, k->buf.len);
        PyBuffer_Release(&k->buf);
        return -1;
    }
    return 0;
}

/* Without the GIL: the context to use (the Key's when it is ours for this call, keyed on
 * first use; else a new one, freed by key_done), or NULL when OpenSSL fails. */
static EVP_CIPHER_CTX *key_ctx(KeyArg *k, int enc) {
    if (k->obj == NULL)
        return keyed(k->buf.buf, enc);
    if (!k->locked)
        return keyed(k->obj->key, enc);
    if (k->obj->ctx[enc] == NULL)
        k->obj->ctx[enc] = keyed(k->obj->key, enc);
    return k->obj->ctx[enc];
}

/* Without the GIL: the call is over; ok = 0 after an OpenSSL failure (the Key's context is
 * dropped then: its state is unknown). */
static void key_done(KeyArg *k, EVP_CIPHER_CTX *ctx, int enc, int ok) {
    if (k->obj != NULL && k->locked && ctx == k->obj->ctx[enc]) {
        if (!ok && ctx != NULL) {
            EVP_CIPHER_CTX_free(ctx);
            k->obj->ctx[enc] = NULL;
        }
    } else if (ctx != NULL) {
        EVP_CIPHER_CTX_free(ctx);
    }
}

/* With the GIL: the key argument released. */
static void key_release(KeyArg *k) {
    if (k->obj != NULL) {
        if (k->locked)
            PyThread_release_lock(k->obj->lock);
        k->locked = 0;
    } else {
        PyBuffer_Release(&k->buf);
    }
}

PyDoc_STRVAR(seal_run_doc,
             "seal_run(key, volume_id, first, version, plaintext, out, group=0) -> bytes\n\n"
             "Blocks first, first + 1, ... of plaintext (n * 4096 bytes) sealed at one "
             "version under the derived block key (a Key, or 32 bytes): their ciphertext into "
             "out (writable; the same buffer as plaintext or apart from it), -> their n tags, "
             "16 bytes each, in one bytes object. out is n * 4096 bytes; with group > 0 it "
             "also holds a 4096-byte gap, zeroed, after each block i with (i + 1) % group == 0 "
             "(the tag blocks of a physical extent: encryption/layout.py).");

static PyObject *seal_run(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "volume_id", "first", "version", "plaintext", "out",
                             "group", NULL};
    Py_buffer vid = {0}, plain = {0}, out = {0};
    PyObject *key_obj, *first_obj, *version_obj, *tags = NULL;
    KeyArg key;
    uint64_t first, version;
    Py_ssize_t n, group = 0, gaps = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy*OOy*w*|n:seal_run", kwlist, &key_obj,
                                     &vid, &first_obj, &version_obj, &plain, &out, &group))
        return NULL;
    if (key_arg(key_obj, &key) < 0) {
        PyBuffer_Release(&vid);
        PyBuffer_Release(&plain);
        PyBuffer_Release(&out);
        return NULL;
    }
    if (as_u64(first_obj, "first", &first) || as_u64(version_obj, "version", &version) ||
        check_common(&vid, first, plain.len, "plaintext", &n))
        goto done;
    if (group < 0) {
        PyErr_SetString(PyExc_ValueError, "group must be 0 or more");
        goto done;
    }
    if (group > 0 && n > 0) { /* i in [first, last] with i % group == group - 1 */
        uint64_t g = (uint64_t)group, last = first + (uint64_t)(n - 1);
        gaps = (Py_ssize_t)(last / g - first / g + (last % g == g - 1));
    }
    if (out.len != plain.len + gaps * BLOCK) {
        PyErr_Format(PyExc_ValueError, "out is %zd bytes, not %zd (the plaintext %zd, %zd gaps)",
                     out.len, plain.len + gaps * BLOCK, plain.len, gaps);
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
        uint64_t g = (uint64_t)group;
        memcpy(ad, vid.buf, ID_BYTES);
        Py_BEGIN_ALLOW_THREADS
        EVP_CIPHER_CTX *ctx = key_ctx(&key, 1);
        if (ctx == NULL)
            ok = 0;
        for (Py_ssize_t k = 0; ok && k < n; k++) {
            uint64_t i = first + (uint64_t)k;
            nonce_ad(iv, ad, i, version);
            ok = EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) == 1 &&
                 EVP_EncryptUpdate(ctx, NULL, &len, ad, AD_BYTES) == 1 &&
                 EVP_EncryptUpdate(ctx, dst, &len, src + k * BLOCK, BLOCK) == 1 &&
                 len == BLOCK && EVP_EncryptFinal_ex(ctx, scratch, &len) == 1 &&
                 EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES,
                                     tp + k * TAG_BYTES) == 1;
            dst += BLOCK;
            if (g && i % g == g - 1) {
                memset(dst, 0, BLOCK);
                dst += BLOCK;
            }
        }
        key_done(&key, ctx, 1, ok);
        Py_END_ALLOW_THREADS
        if (!ok) {
            Py_CLEAR(tags);
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL's AES-256-GCM failed to seal");
        }
    }
done:
    key_release(&key);
    PyBuffer_Release(&vid);
    PyBuffer_Release(&plain);
    PyBuffer_Release(&out);
    return tags;
}

PyDoc_STRVAR(open_run_doc,
             "open_run(key, volume_id, first, versions, tags, ciphertext, out) -> list\n\n"
             "Blocks first, first + 1, ... of ciphertext (n * 4096 bytes) opened under the "
             "derived block key (a Key, or 32 bytes), block k at versions[k] (n u64, "
             "little-endian: 8 * n bytes) with tag tags[16k:16k + 16] (16 * n bytes): their "
             "plaintext into out (n * 4096 bytes, writable). -> the positions k (0-based) of "
             "the blocks that failed authentication, their part of out zeroed. A version of 0 "
             "skips its block: out left as it is, not reported.");

static PyObject *open_run(PyObject *self, PyObject *args) {
    Py_buffer vid = {0}, vers = {0}, tagb = {0}, ct = {0}, out = {0};
    PyObject *key_obj, *first_obj, *result = NULL;
    KeyArg key;
    uint64_t first;
    Py_ssize_t n;
    unsigned char *failed = NULL;
    if (!PyArg_ParseTuple(args, "Oy*Oy*y*y*w*:open_run", &key_obj, &vid, &first_obj, &vers,
                          &tagb, &ct, &out))
        return NULL;
    if (key_arg(key_obj, &key) < 0) {
        PyBuffer_Release(&vid);
        PyBuffer_Release(&vers);
        PyBuffer_Release(&tagb);
        PyBuffer_Release(&ct);
        PyBuffer_Release(&out);
        return NULL;
    }
    if (as_u64(first_obj, "first", &first) ||
        check_common(&vid, first, ct.len, "ciphertext", &n))
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
        EVP_CIPHER_CTX *ctx = key_ctx(&key, 0);
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
        key_done(&key, ctx, 0, ok);
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
    key_release(&key);
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

static void put_le64(unsigned char *p, uint64_t v) {
    for (int k = 0; k < 8; k++, v >>= 8)
        p[k] = (unsigned char)(v & 0xff);
}

PyDoc_STRVAR(put_slots_doc,
             "put_slots(entries, j, version, tags, flags, salt) -> None\n\n"
             "block_cipher.put_slots: for each of the n tags (16 * n bytes), the slot "
             "(version, tag, flags, salt (6 bytes)) written into entry j + k of entries "
             "(writable, 64 bytes per entry): into the slot that does not hold the newest live "
             "version (the second when the first is live and the second empty, retired or "
             "not newer; else the first).");

static PyObject *put_slots(PyObject *self, PyObject *args) {
    Py_buffer ent = {0}, tagb = {0}, salt = {0};
    Py_ssize_t j;
    PyObject *version_obj, *result = NULL;
    int flags;
    uint64_t version;
    if (!PyArg_ParseTuple(args, "w*nOy*iy*:put_slots", &ent, &j, &version_obj, &tagb, &flags,
                          &salt))
        return NULL;
    if (as_u64(version_obj, "version", &version))
        goto done;
    if (tagb.len % TAG_BYTES || salt.len != 6 || flags < 0 || flags > 255) {
        PyErr_Format(PyExc_ValueError,
                     "tags (%zd bytes) must be 16 per block, the salt (%zd) 6 bytes, the "
                     "flags (%d) one byte",
                     tagb.len, salt.len, flags);
        goto done;
    }
    Py_ssize_t n = tagb.len / TAG_BYTES;
    if (j < 0 || j > ent.len / ENTRY || n > ent.len / ENTRY - j) {
        PyErr_Format(PyExc_ValueError, "entries %zd..%zd are not in %zd bytes of entries", j,
                     j + n - 1, ent.len);
        goto done;
    }
    unsigned char *e = (unsigned char *)ent.buf + j * ENTRY;
    const unsigned char *tp = tagb.buf;
    for (Py_ssize_t k = 0; k < n; k++, e += ENTRY, tp += TAG_BYTES) {
        uint64_t va = get_le64(e), vb = get_le64(e + SLOT);
        int a_live = va != 0 && !(e[24] & RETIRED);
        int into_b = a_live && (vb == 0 || (e[SLOT + 24] & RETIRED) || va >= vb);
        unsigned char *s = into_b ? e + SLOT : e;
        put_le64(s, version);
        memcpy(s + 8, tp, TAG_BYTES);
        s[24] = (unsigned char)flags;
        memcpy(s + 25, salt.buf, 6);
        s[31] = 0;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&ent);
    PyBuffer_Release(&tagb);
    PyBuffer_Release(&salt);
    return result;
}

static PyMethodDef methods[] = {
    {"seal_run", (PyCFunction)(void (*)(void))seal_run, METH_VARARGS | METH_KEYWORDS,
     seal_run_doc},
    {"open_run", open_run, METH_VARARGS, open_run_doc},
    {"newest", newest, METH_VARARGS, newest_doc},
    {"put_slots", put_slots, METH_VARARGS, put_slots_doc},
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
    if (PyType_Ready(&KeyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Key", (PyObject *)&KeyType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
