# cython: language_level=3
"""auditenc_py in C (csrc/mwi_auditenc.c): the canonical JSON of plain event fields and
a batch's hash-chain links, with the twin's results byte for byte (differential tests:
tests/unit/native/test_auditenc_differential.py); and rdsauditenc_py's Redis query
events straight from tap records (csrc/mwi_rdsauditenc.c,
tests/unit/native/test_rdsauditenc_differential.py); and myauditenc_py's answered MySQL
COM_QUERYs (tests/unit/native/test_myauditenc_differential.py)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Keys, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_Sort
from cpython.mem cimport PyMem_Free
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport isfinite, isnan
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cdef extern from "Python.h":
    int PyUnicode_KIND(object)
    void *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL
    object PyUnicode_FromStringAndSize(const char *, Py_ssize_t)
    object PyUnicode_DecodeASCII(const char *, Py_ssize_t, const char *)
    char *PyOS_double_to_string(double, char, int, int, int *) except NULL
    int Py_DTSF_ADD_DOT_0
    long long PyLong_AsLongLongAndOverflow(object, int *) except? -1

cdef extern from "stdio.h":
    int snprintf(char *, size_t, const char *, ...)

cdef extern from "mwi_auditenc.h":
    size_t mwi_json_ascii_len(const void *data, int width, size_t n)
    size_t mwi_json_ascii(const void *data, int width, size_t n, char *out)
    ctypedef struct mwi_chain:
        pass
    mwi_chain *mwi_chain_new()
    void mwi_chain_free(mwi_chain *c)
    int mwi_chain_link(mwi_chain *c, const unsigned char *prev, int nparts,
                       const unsigned char *const *parts, const size_t *lens,
                       unsigned char *out)
    ctypedef struct mwi_hmac:
        pass
    mwi_hmac *mwi_hmac_new(const unsigned char *key, size_t keylen)
    void mwi_hmac_free(mwi_hmac *h)
    int mwi_hmac_sha256(mwi_hmac *h, const unsigned char *msg, size_t n, unsigned char *out)

cdef extern from "mwi_rdsauditenc.h":
    enum:
        MWI_RDE_OMIT
        MWI_RDE_HASH
        MWI_RDE_PLAIN
        MWI_RDE_ARGC
        MWI_RDE_ARGS
        MWI_RDE_ARGS_TRUNCATED
        MWI_RDE_COMMAND
        MWI_RDE_INLINE
        MWI_RDE_QUERY
        MWI_RDE_STATUS
        MWI_RDE_FIXED
        MWI_RDE_DECLINE
        MWI_RDE_NOMEM
    ctypedef struct mwi_rde_part:
        int slot
        const char *key
        size_t key_len
        const char *value
        size_t value_len
    ctypedef struct mwi_rde:
        int mode
        mwi_hmac *hmac
        const char *prefix
        size_t prefix_len
        size_t nhex
        const mwi_rde_part *parts
        size_t nparts
    ctypedef struct mwi_rde_buf:
        char *p
        size_t n
        size_t cap
    int mwi_rde_event(const mwi_rde *e, const unsigned char *rec, size_t n, mwi_rde_buf *out)

cdef enum:
    PLAIN_DEPTH = 8  # auditenc_py.PLAIN_DEPTH


cdef struct Buf:
    char *p
    size_t n
    size_t cap


cdef int _grow(Buf *b, size_t more) except -1:
    cdef size_t want = b.n + more
    cdef size_t cap
    cdef char *p
    if want <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 512
    while cap < want:
        cap *= 2
    p = <char *>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p, b.cap = p, cap
    return 0


cdef inline int _put(Buf *b, const char *s, size_t n) except -1:
    _grow(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef int _str(Buf *b, object s) except -1:
    cdef int width = PyUnicode_KIND(s)
    cdef void *data = PyUnicode_DATA(s)
    cdef size_t n = <size_t>PyUnicode_GET_LENGTH(s)
    cdef size_t need = mwi_json_ascii_len(data, width, n)
    _grow(b, need + 2)
    b.p[b.n] = 34  # '"'
    b.n += 1 + mwi_json_ascii(data, width, n, b.p + b.n + 1)
    b.p[b.n] = 34  # '"'
    b.n += 1
    return 0


cdef int _float(Buf *b, object v) except -1:
    cdef double d = PyFloat_AS_DOUBLE(v)
    cdef char *text
    cdef size_t n = 0
    if not isfinite(d):
        if isnan(d):
            return _put(b, b"NaN", 3)
        return _put(b, b"Infinity", 8) if d > 0 else _put(b, b"-Infinity", 9)
    text = PyOS_double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    while text[n]:
        n += 1
    try:
        _put(b, text, n)
    finally:
        PyMem_Free(text)
    return 0


cdef int _int(Buf *b, object v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    cdef char digits[32]
    cdef int n
    cdef bytes text
    if not overflow:
        n = snprintf(digits, sizeof(digits), "%lld", x)
        return _put(b, digits, <size_t>n)
    text = int.__repr__(v).encode("ascii")
    return _put(b, PyBytes_AS_STRING(text), <size_t>PyBytes_GET_SIZE(text))


cdef int _value(Buf *b, object v, int depth) except -1:
    """1: written; 0: not plain (nothing of the event is used then)."""
    cdef type kind = type(v)
    cdef Py_ssize_t i, n
    if kind is str:
        return _str(b, v) + 1
    if v is None:
        return _put(b, b"null", 4) + 1
    if kind is bool:
        return (_put(b, b"true", 4) if v else _put(b, b"false", 5)) + 1
    if kind is int:
        return _int(b, v) + 1
    if kind is float:
        return _float(b, v) + 1
    if depth >= PLAIN_DEPTH:
        return 0
    if kind is dict:
        return _dict(b, v, depth + 1)
    if kind is list or kind is tuple:
        n = len(v)
        _put(b, b"[", 1)
        for i in range(n):
            if i:
                _put(b, b",", 1)
            item = <object>PyList_GET_ITEM(v, i) if kind is list else \
                <object>PyTuple_GET_ITEM(v, i)
            if not _value(b, item, depth + 1):
                return 0
        _put(b, b"]", 1)
        return 1
    return 0


cdef int _dict(Buf *b, dict d, int depth) except -1:
    """`depth`: of the dict's values (the event's own fields: 1)."""
    cdef list keys = PyDict_Keys(d)
    cdef Py_ssize_t i, n = PyList_GET_SIZE(keys)
    for i in range(n):
        if type(<object>PyList_GET_ITEM(keys, i)) is not str:
            return 0
    PyList_Sort(keys)
    _put(b, b"{", 1)
    for i in range(n):
        key = <object>PyList_GET_ITEM(keys, i)
        if i:
            _put(b, b",", 1)
        _str(b, key)
        _put(b, b":", 1)
        if not _value(b, <object>PyDict_GetItem(d, key), depth):
            return 0
    _put(b, b"}", 1)
    return 1


def canonical_fields(fields):
    """auditenc_py.canonical_fields: the canonical JSON of plain fields, else None."""
    cdef Buf b
    if type(fields) is not dict:
        return None
    b.p, b.n, b.cap = NULL, 0, 0
    try:
        if not _dict(&b, fields, 1):
            return None
        return PyUnicode_FromStringAndSize(b.p, <Py_ssize_t>b.n)
    finally:
        free(b.p)


cdef str _hex(const unsigned char *h):
    cdef char out[64]
    cdef int i
    cdef const char *digits = b"0123456789abcdef"
    for i in range(32):
        out[2 * i] = digits[h[i] >> 4]
        out[2 * i + 1] = digits[h[i] & 0xF]
    return PyUnicode_FromStringAndSize(out, 64)


def link_hash(str prev_hash, event_id, time, str type, str text):
    """auditenc_py.link_hash."""
    return chain_rows(prev_hash, event_id - 1, [(time, type, text, None)])[0][5]


def chain_rows(str prev_hash, top, list events):
    """auditenc_py.chain_rows: the batch's rows linked after `top`, one C hash each."""
    cdef mwi_chain *c
    cdef unsigned char prev[32]
    cdef unsigned char h[32]
    cdef const unsigned char *parts[4]
    cdef size_t lens[4]
    cdef Py_ssize_t size
    cdef char idtext[32]
    cdef char *timetext
    cdef bytes raw = bytes.fromhex(prev_hash)
    cdef list rows = []
    cdef long long event_id
    if PyBytes_GET_SIZE(raw) != 32:  # an odd stored head: the twin's answer
        from mwiproxy._native.auditenc_py import chain_rows as twin
        return twin(prev_hash, top, events)
    memcpy(prev, PyBytes_AS_STRING(raw), 32)
    event_id = top
    c = mwi_chain_new()
    if c == NULL:
        raise MemoryError()
    try:
        for time, type_, text, session in events:
            event_id += 1
            lens[0] = <size_t>snprintf(idtext, sizeof(idtext), "%lld", event_id)
            parts[0] = <const unsigned char *>idtext
            parts[2] = <const unsigned char *>PyUnicode_AsUTF8AndSize(type_, &size)
            lens[2] = <size_t>size
            parts[3] = <const unsigned char *>PyUnicode_AsUTF8AndSize(text, &size)
            lens[3] = <size_t>size
            timetext = PyOS_double_to_string(float(time), b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
            try:
                parts[1] = <const unsigned char *>timetext
                lens[1] = 0
                while timetext[lens[1]]:
                    lens[1] += 1
                if mwi_chain_link(c, prev, 4, parts, lens, h) != 0:
                    raise MemoryError("sha256 failed")
            finally:
                PyMem_Free(timetext)
            hex_ = _hex(h)
            rows.append((event_id, time, type_, text, prev_hash, hex_, session))
            prev_hash = hex_
            memcpy(prev, h, 32)
    finally:
        mwi_chain_free(c)
    return rows


def hmac_digests(bytes key, list values, str prefix, Py_ssize_t nhex):
    """auditenc_py.hmac_digests: each value's HMAC-SHA256 under `key`, as prefix + the
    first `nhex` hex digits (None stays None)."""
    cdef mwi_hmac *h
    cdef unsigned char out[32]
    cdef list digests = []
    cdef bytes value
    if not values:
        return digests
    for v in values:
        if v is not None and type(v) is not bytes:  # the twin's answer (and errors)
            from mwiproxy._native.auditenc_py import hmac_digests as twin
            return twin(key, values, prefix, nhex)
    if nhex < 0 or nhex > 64:
        from mwiproxy._native.auditenc_py import hmac_digests as twin
        return twin(key, values, prefix, nhex)
    h = _keyed(key)
    for v in values:
        if v is None:
            digests.append(None)
            continue
        value = <bytes>v
        if mwi_hmac_sha256(h, <const unsigned char *>PyBytes_AS_STRING(value),
                           <size_t>PyBytes_GET_SIZE(value), out) != 0:
            raise MemoryError("HMAC-SHA256 failed")
        digests.append(prefix + _hex(out)[:nhex])
    return digests


# the last key's HMAC state (a process digests under one key, two at most): used only
# with the GIL held, so no lock
cdef mwi_hmac *_KEYED = NULL
cdef bytes _KEYED_FOR = None


cdef mwi_hmac *_keyed(bytes key) except NULL:
    global _KEYED, _KEYED_FOR
    cdef mwi_hmac *h
    if _KEYED != NULL and _KEYED_FOR == key:
        return _KEYED
    h = mwi_hmac_new(<const unsigned char *>PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key))
    if h == NULL:
        raise MemoryError("HMAC-SHA256 unavailable")
    mwi_hmac_free(_KEYED)
    _KEYED, _KEYED_FOR = h, key
    return h


# an event's own fields (rdsauditenc_py.command_info) and where each goes
_OWN_SLOTS = {"argc": MWI_RDE_ARGC, "args": MWI_RDE_ARGS,
              "args_truncated": MWI_RDE_ARGS_TRUNCATED, "command": MWI_RDE_COMMAND,
              "inline": MWI_RDE_INLINE, "query": MWI_RDE_QUERY, "status": MWI_RDE_STATUS}


def redis_query_texts(list records not None, str mode not None, bytes key not None,
                      str prefix not None, Py_ssize_t nhex, list who not None):
    """rdsauditenc_py.redis_query_texts: one C call per record; None for a record left
    to the caller (a name not ASCII, args not valid UTF-8 in plain mode, an odd one)."""
    cdef dict fixed = dict(who)
    cdef list keys
    cdef Buf texts
    cdef mwi_rde e
    cdef mwi_rde_buf out
    cdef mwi_rde_part *parts = NULL
    cdef Py_ssize_t i, nkeys
    cdef size_t key_at, value_at, prefix_at
    cdef list result = []
    cdef int rc
    for name in fixed:
        if type(name) is not str:  # not plain: the twin's answer
            from mwiproxy._native.rdsauditenc_py import redis_query_texts as twin
            return twin(records, mode, key, prefix, nhex, who)
    keys = sorted(set(fixed) | set(_OWN_SLOTS))
    nkeys = len(keys)
    texts.p, texts.n, texts.cap = NULL, 0, 0
    out.p, out.n, out.cap = NULL, 0, 0
    try:
        parts = <mwi_rde_part *>malloc(sizeof(mwi_rde_part) * nkeys)
        if parts == NULL:
            raise MemoryError()
        # every text first (the buffer moves as it grows), then the pointers into it
        offsets = []
        for name in keys:
            key_at = texts.n
            _str(&texts, name)
            _put(&texts, b":", 1)
            value_at = texts.n
            if name in fixed and not _value(&texts, fixed[name], 1):
                from mwiproxy._native.rdsauditenc_py import redis_query_texts as twin
                return twin(records, mode, key, prefix, nhex, who)
            offsets.append((key_at, value_at, texts.n, name in fixed))
        prefix_at = texts.n
        _str(&texts, prefix)
        for i in range(nkeys):
            start, mid, end, has_value = offsets[i]
            parts[i].slot = _OWN_SLOTS.get(keys[i], MWI_RDE_FIXED)
            parts[i].key = texts.p + <size_t>start
            parts[i].key_len = <size_t>mid - <size_t>start
            parts[i].value = texts.p + <size_t>mid if has_value else NULL
            parts[i].value_len = <size_t>end - <size_t>mid
        e.mode = MWI_RDE_OMIT if mode == "omit" else MWI_RDE_HASH if mode == "hash" \
            else MWI_RDE_PLAIN
        e.hmac = _keyed(key) if e.mode == MWI_RDE_HASH else NULL
        e.prefix = texts.p + prefix_at + 1  # without its quotes
        e.prefix_len = texts.n - prefix_at - 2
        if nhex < 0:  # as Python slices the hex digest
            nhex = max(0, 64 + nhex)
        e.nhex = <size_t>min(nhex, 64)
        e.parts = parts
        e.nparts = <size_t>nkeys
        for rec in records:
            if type(rec) is not bytes:
                from mwiproxy._native.rdsauditenc_py import redis_query_texts as twin
                result.extend(twin([rec], mode, key, prefix, nhex, who))
                continue
            out.n = 0
            rc = mwi_rde_event(&e, <const unsigned char *>PyBytes_AS_STRING(rec),
                               <size_t>PyBytes_GET_SIZE(rec), &out)
            if rc == 1:
                result.append(PyUnicode_DecodeASCII(out.p, <Py_ssize_t>out.n, NULL))
            elif rc == MWI_RDE_DECLINE:
                result.append(None)
            elif rc == MWI_RDE_NOMEM:
                raise MemoryError()
            elif rc != 0:
                raise MemoryError("HMAC-SHA256 failed")
        return result
    finally:
        free(parts)
        free(texts.p)
        free(out.p)


cdef inline uint32_t _le32(const unsigned char *p) noexcept:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline unsigned long long _le64(const unsigned char *p) noexcept:
    return _le32(p) | (<unsigned long long>_le32(p + 4) << 32)


from mwiproxy._native.pgaudit_py import STATUS_NAMES as _STATUS_NAMES
cdef uint32_t _NSTATUS = len(_STATUS_NAMES)
cdef enum:  # pgaudit_py's ST_ERROR, TRUNCATED, UNTRACKED, HDR
    _ST_ERROR = 1
    _TRUNCATED = 1
    _UNTRACKED = 4
    _HDR = 40
cdef uint32_t _NULL = 0xFFFFFFFF


cdef int _u64(Buf *b, unsigned long long v) except -1:
    cdef char tmp[24]
    cdef int k = 24
    while True:
        k -= 1
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return _put(b, tmp + k, <size_t>(24 - k))


cdef int _ms3(Buf *b, unsigned long long took) except -1:
    """repr(round(took / 1e6, 3)) for took below 10**15 and not a tie (not ending in 500):
    the double's error is then far from any rounding boundary (at least 1 ns away), so
    rounding the exact microseconds gives the same digits, and a decimal of at most 15
    significant digits is the shortest text of its double (DBL_DIG)."""
    cdef unsigned long long q = (took + 500) // 1000
    cdef char frac[3]
    cdef size_t nf = 3
    frac[0] = <char>(48 + (q % 1000) // 100)
    frac[1] = <char>(48 + (q % 100) // 10)
    frac[2] = <char>(48 + q % 10)
    while nf > 1 and frac[nf - 1] == 48:
        nf -= 1
    _u64(b, q // 1000)
    _put(b, b".", 1)
    return _put(b, frac, nf)


cdef int _ascii(Buf *b, str s) except -1:
    cdef Py_ssize_t n
    cdef const char *u = PyUnicode_AsUTF8AndSize(s, &n)
    return _put(b, u, <size_t>n)


def mysql_query_texts(list records not None, Py_ssize_t start, dict queries not None,
                      dict cache not None, statements, list done not None):
    """myauditenc_py.mysql_query_texts: the same records taken, the same texts (the
    header read and the text written in C: no tuple or int object per record)."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(records), size
    cdef const unsigned char *p
    cdef uint32_t status, full, kept
    cdef unsigned long long took
    cdef object rec, query, seq, text, got
    cdef bint cut
    cdef Buf b
    b.p, b.n, b.cap = NULL, 0, 0
    try:
        for i in range(start, n):
            rec = <object>PyList_GET_ITEM(records, i)
            if type(rec) is not bytes:
                return i
            p = <const unsigned char *>PyBytes_AS_STRING(rec)
            size = PyBytes_GET_SIZE(rec)
            if size < _HDR:
                return i
            seq = _le32(p + 4)
            if p[0] == 82:  # 'R'
                status = _le32(p + 8)
                if status == _ST_ERROR or status >= _NSTATUS:
                    return i
                query = queries.pop(seq, None)
                if query is None:
                    return i
                b.n = 0
                _put(&b, b'{"bytes":', 9)
                _u64(&b, _le64(p + 24))
                _put(&b, b',"command":"COM_QUERY","duration_ms":', 37)
                took = _le64(p + 32)
                if took < 1000000000000000ULL and took % 1000 != 500:
                    _ms3(&b, took)
                else:
                    _ascii(&b, repr(round(took / 1e6, 3)))
                _put(&b, b",", 1)
                _ascii(&b, query[1])
                _put(&b, b',"rows":', 8)
                _u64(&b, _le64(p + 16))
                _put(&b, b',"status":"', 11)
                _ascii(&b, _STATUS_NAMES[status])
                _put(&b, b'","truncated":', 14)
                _ascii(&b, query[2])
                _put(&b, b"}", 1)
                done.append(PyUnicode_DecodeASCII(b.p, <Py_ssize_t>b.n, NULL))
            elif p[0] == 81 and not (p[1] & _UNTRACKED) and size >= _HDR + 8:  # 'Q'
                full = _le32(p + _HDR)
                kept = _le32(p + _HDR + 4)
                if full == _NULL or _HDR + 8 + <Py_ssize_t>kept > size:
                    return i
                text = rec[_HDR + 8:_HDR + 8 + kept]
                cut = (p[1] & _TRUNCATED) != 0
                got = cache.get((text, full, cut))
                queries[seq] = got if got is not None else statements((full, text), cut)
            else:
                return i
        return n
    finally:
        free(b.p)
