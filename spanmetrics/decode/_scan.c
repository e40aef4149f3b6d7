/*
 * The compiled scanner: one pass over the bytes of an OTLP ExportTraceServiceRequest
 * (protobuf wire format), reading only what the engine needs into Python lists.
 *
 * It reads every field the way upb does where the engine can see a difference:
 * - fields in any order, unknown fields skipped (any wire type), a known field with an
 *   unexpected wire type treated as unknown;
 * - a scalar field given twice: the last one wins; a message field given twice: merged
 *   (Resource and InstrumentationScope bytes are concatenated, which is how protobuf
 *   merges, Status keeps the last code);
 * - every string field, read or skipped, must be valid UTF-8 (upb rejects the record
 *   otherwise), and nesting is limited as upb limits it;
 * - anything truncated or malformed raises, and nothing is read out of bounds.
 *
 * Attribute values: strings as str, ints in decimal, bools as true/false; other kinds
 * (double, bytes, arrays, maps, empty) come back as the AnyValue's own bytes, for Python to
 * render exactly as the pure path does (spanmetrics.decode.batch).
 *
 * Errors are raised as ValueError("<reason>: <detail>"), reason invalid_protobuf or
 * invalid_utf8; the Python wrapper turns them into DecodeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 100

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

/* Wire types. */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

static PyObject *empty_str;
static PyObject *str_true;
static PyObject *str_false;

#if defined(__GNUC__)
#define COLD __attribute__((cold, noinline))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define COLD
#define LIKELY(x) (x)
#endif

static COLD int fail(const char *reason, const char *detail) {
    PyErr_Format(PyExc_ValueError, "%s: %s", reason, detail);
    return -1;
}

static int read_varint_slow(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    int shift = 0;
    while (r->p < r->end) {
        uint8_t b = *r->p++;
        /* Bits past 64 in a tenth byte are dropped, as upb drops them. */
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
        shift += 7;
        if (shift > 63) return fail("invalid_protobuf", "varint longer than 10 bytes");
    }
    return fail("invalid_protobuf", "truncated varint");
}

/* Most varints on this wire (tags, lengths, enums) are one byte. */
static inline int read_varint(Reader *r, uint64_t *out) {
    const uint8_t *p = r->p;
    if (LIKELY(p < r->end && *p < 0x80)) {
        *out = *p;
        r->p = p + 1;
        return 0;
    }
    return read_varint_slow(r, out);
}

/* Field numbers go up to 2^29 - 1. */
#define MAX_FIELD 536870911u

/* A tag inside a skipped group, where upb lets field number 0 pass. */
static inline int read_group_tag(Reader *r, uint32_t *field, int *wt) {
    uint64_t tag;
    *field = 0;
    *wt = 0;
    if (read_varint(r, &tag)) return -1;
    if ((tag >> 3) > MAX_FIELD) return fail("invalid_protobuf", "field number out of range");
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    return 0;
}

static inline int read_tag(Reader *r, uint32_t *field, int *wt) {
    if (read_group_tag(r, field, wt)) return -1;
    if (*field == 0) return fail("invalid_protobuf", "field number 0");
    return 0;
}

static inline int read_len(Reader *r, Reader *sub) {
    uint64_t n;
    if (read_varint(r, &n)) return -1;
    if (n > (uint64_t)(r->end - r->p)) return fail("invalid_protobuf", "truncated length-delimited field");
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 0;
}

static int read_fixed64(Reader *r, uint64_t *out) {
    if (r->end - r->p < 8) return fail("invalid_protobuf", "truncated fixed64");
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | r->p[i];
    r->p += 8;
    *out = v;
    return 0;
}

static int skip_field(Reader *r, int wt, uint32_t field, int depth);

/* A group (deprecated wire type 3) up to its end tag; upb skips unknown groups. */
static int skip_group(Reader *r, uint32_t field, int depth) {
    if (depth >= MAX_DEPTH) return fail("invalid_protobuf", "nested too deeply");
    while (r->p < r->end) {
        uint32_t f;
        int wt;
        if (read_group_tag(r, &f, &wt)) return -1;
        if (wt == WT_EGROUP) {
            if (f != field) return fail("invalid_protobuf", "mismatched end group");
            return 0;
        }
        if (skip_field(r, wt, f, depth + 1)) return -1;
    }
    return fail("invalid_protobuf", "truncated group");
}

static int skip_field(Reader *r, int wt, uint32_t field, int depth) {
    uint64_t v;
    Reader sub;
    switch (wt) {
    case WT_VARINT: return read_varint(r, &v);
    case WT_I64:
        if (r->end - r->p < 8) return fail("invalid_protobuf", "truncated fixed64");
        r->p += 8;
        return 0;
    case WT_LEN: return read_len(r, &sub);
    case WT_I32:
        if (r->end - r->p < 4) return fail("invalid_protobuf", "truncated fixed32");
        r->p += 4;
        return 0;
    case WT_SGROUP: return skip_group(r, field, depth);
    default: return fail("invalid_protobuf", "invalid wire type");
    }
}

/*
 * A message given more than once is merged by parsing each occurrence into the same
 * message, so each must hold whole fields on its own (a group may not run past its end):
 * then the occurrences' bytes back to back parse as their merge.
 */
static int check_part(Reader r, int depth) {
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt) || skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/* Every occurrence of the length-delimited ``field`` of the message ``r``, each checked
 * whole (check_part), back to back in a new bytes object: what their merge parses as. */
static PyObject *merged_field(Reader r, uint32_t field, int depth) {
    Py_ssize_t total = 0;
    Reader scan = r;
    while (scan.p < scan.end) {
        uint32_t f;
        int wt;
        Reader s = {NULL, NULL};
        if (read_tag(&scan, &f, &wt)) return NULL;
        if (f == field && wt == WT_LEN) {
            if (read_len(&scan, &s) || check_part(s, depth + 1)) return NULL;
            total += s.end - s.p;
        } else if (skip_field(&scan, wt, f, depth)) return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        Reader s = {NULL, NULL};
        (void)read_tag(&r, &f, &wt); /* read without error above */
        if (f == field && wt == WT_LEN) {
            (void)read_len(&r, &s);
            memcpy(at, s.p, (size_t)(s.end - s.p));
            at += s.end - s.p;
        } else {
            (void)skip_field(&r, wt, f, depth);
        }
    }
    return out;
}

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF), as upb checks it. */
static int valid_utf8(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        /* ASCII, eight bytes at a time: almost every key and value. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        Py_ssize_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (i + need >= n) return 0; /* truncated sequence */
        for (Py_ssize_t k = 1; k <= need; k++) {
            uint8_t cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000)) return 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
        if (cp > 0x10FFFF) return 0;
        i += need + 1;
    }
    return 1;
}

static inline int check_utf8(const Reader *s) {
    if (!valid_utf8(s->p, s->end - s->p)) return fail("invalid_utf8", "string field is not valid UTF-8");
    return 0;
}

/* A str from a string field (validated by Python's decoder, which is as strict). */
/*
 * Span names and attribute values repeat from span to span and record to record: a small
 * direct-mapped cache hands out the same str object for the same bytes. That saves the
 * allocation, and the engine's dict lookups then use the str's cached hash.
 */
#define INTERN_SLOTS 8192
#define INTERN_MAX_LEN 64

typedef struct {
    PyObject *str;
    const char *utf8;
    Py_ssize_t len;
} InternSlot;

static InternSlot intern_cache[INTERN_SLOTS];

static inline uint32_t bytes_hash(const uint8_t *p, Py_ssize_t n) {
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

/* A str from UTF-8 bytes already known to be valid, or to be checked by the decoder. */
static PyObject *str_from(const uint8_t *p, Py_ssize_t n) {
    if (n == 0) {
        Py_INCREF(empty_str);
        return empty_str;
    }
    InternSlot *slot = NULL;
    if (n <= INTERN_MAX_LEN) {
        slot = &intern_cache[bytes_hash(p, n) & (INTERN_SLOTS - 1)];
        if (slot->str != NULL && slot->len == n && memcmp(slot->utf8, p, (size_t)n) == 0) {
            Py_INCREF(slot->str);
            return slot->str;
        }
    }
    PyObject *out = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (out == NULL) {
        PyErr_Clear();
        fail("invalid_utf8", "string field is not valid UTF-8");
        return NULL;
    }
    if (slot != NULL) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(out, &len);
        if (utf8 == NULL) {
            PyErr_Clear();
            return out;
        }
        Py_XSETREF(slot->str, out);
        Py_INCREF(out);
        slot->utf8 = utf8;
        slot->len = len;
    }
    return out;
}

/* A str from a string field (validated by Python's decoder, which is as strict). */
static inline PyObject *make_str(const Reader *s) {
    return str_from(s->p, s->end - s->p);
}

static int validate_anyvalue(Reader r, int depth);

/* KeyValue { key = 1 string; value = 2 AnyValue } and KeyValueList/ArrayValue walkers,
 * for the strings that are skipped but must still be valid. */
static int validate_keyvalue(Reader r, int depth) {
    if (depth >= MAX_DEPTH) return fail("invalid_protobuf", "nested too deeply");
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (wt == WT_LEN && (f == 1 || f == 2)) {
            Reader sub;
            if (read_len(&r, &sub)) return -1;
            if (f == 1 ? check_utf8(&sub) : validate_anyvalue(sub, depth + 1)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

static int validate_values(Reader r, int depth, int keyvalues) {
    if (depth >= MAX_DEPTH) return fail("invalid_protobuf", "nested too deeply");
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (wt == WT_LEN && f == 1) {
            Reader sub;
            if (read_len(&r, &sub)) return -1;
            if (keyvalues ? validate_keyvalue(sub, depth + 1) : validate_anyvalue(sub, depth + 1)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/* AnyValue { string_value = 1; bool = 2; int = 3; double = 4; array = 5; kvlist = 6; bytes = 7 } */
static int validate_anyvalue(Reader r, int depth) {
    if (depth >= MAX_DEPTH) return fail("invalid_protobuf", "nested too deeply");
    /* The common case first: one string value and nothing else. */
    if (r.end - r.p >= 2 && r.p[0] == 0x0a && r.p[1] < 0x80 && r.p + 2 + r.p[1] == r.end) {
        Reader str = {r.p + 2, r.end};
        return check_utf8(&str);
    }
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (wt == WT_LEN && (f == 1 || f == 5 || f == 6 || f == 7)) {
            Reader sub;
            if (read_len(&r, &sub)) return -1;
            if (f == 1 && check_utf8(&sub)) return -1;
            if (f == 5 && validate_values(sub, depth + 1, 0)) return -1;
            if (f == 6 && validate_values(sub, depth + 1, 1)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/*
 * An attribute value as the engine keys on it: str for string/int/bool values, else the
 * AnyValue's bytes. The oneof's last field on the wire wins, as when protobuf parses it.
 */
static PyObject *render_value(Reader r, int depth) {
    if (validate_anyvalue(r, depth)) return NULL;
    const uint8_t *start = r.p, *stop = r.end;
    int kind = 0; /* last oneof field seen */
    Reader str = {0, 0};
    uint64_t num = 0;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return NULL;
        if (f == 1 && wt == WT_LEN) {
            if (read_len(&r, &str)) return NULL;
            kind = 1;
        } else if ((f == 2 || f == 3) && wt == WT_VARINT) {
            if (read_varint(&r, &num)) return NULL;
            kind = (int)f;
        } else if ((f >= 4 && f <= 7 && wt == (f == 4 ? WT_I64 : WT_LEN)) ||
                   (f == 8 && wt == WT_VARINT)) {
            /* 8: string_value_strindex (profiles' string table), rendered by Python. */
            if (skip_field(&r, wt, f, depth)) return NULL;
            kind = (int)f;
        } else if (skip_field(&r, wt, f, depth)) return NULL;
    }
    if (kind == 0) {
        Py_INCREF(empty_str);
        return empty_str;
    }
    if (kind == 1) return make_str(&str);
    if (kind == 2) {
        PyObject *b = num ? str_true : str_false;
        Py_INCREF(b);
        return b;
    }
    if (kind == 3) {
        /* Decimal, as str(int): by hand, snprintf costs more than the rest of a value. */
        char digits[24];
        char *at = digits + sizeof digits;
        int64_t v = (int64_t)num;
        uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        do {
            *--at = (char)('0' + mag % 10);
            mag /= 10;
        } while (mag);
        if (v < 0) *--at = '-';
        return str_from((const uint8_t *)at, digits + sizeof digits - at);
    }
    /* double, bytes, array, kvlist, or no value: Python renders these. */
    return PyBytes_FromStringAndSize((const char *)start, stop - start);
}

/* What to look for in one attribute list. */
typedef struct {
    PyObject *wanted;      /* tuple of str: named dimensions */
    Py_ssize_t n_wanted;
    const char *utf8[64];  /* their UTF-8 forms, read once per scan */
    Py_ssize_t len[64];
    PyObject *multiplier;  /* str or NULL */
    const char *multiplier_utf8;
    Py_ssize_t multiplier_len;
    int all_pairs;         /* collect every (key, value) */
} Lookup;

typedef struct {
    PyObject **values;  /* n_wanted slots (new references or NULL) */
    PyObject *multiplier_raw; /* AnyValue bytes of the multiplier attribute, or NULL */
    PyObject *pairs;    /* list of (key, value), when all_pairs */
    int found;          /* how many wanted slots were filled */
    Py_ssize_t raw;     /* values left for Python to render (AnyValue bytes) */
} Found;

static inline int key_equals(const char *want, Py_ssize_t n, const Reader *key) {
    return n == key->end - key->p && memcmp(want, key->p, (size_t)n) == 0;
}

/* One KeyValue of an attribute list: the first occurrence of a wanted key wins, as on the
 * pure path (which stops at the first match). */
static int match_keyvalue(Reader key, Reader value, int has_value, const Lookup *lk, Found *fd,
                          int depth);

static int scan_keyvalue(Reader r, const Lookup *lk, Found *fd, int depth) {
    Reader key = {0, 0}, value = {0, 0};
    int n_values = 0;
    Reader all = r;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (f == 1 && wt == WT_LEN) {
            if (read_len(&r, &key) || check_utf8(&key)) return -1;
        } else if (f == 2 && wt == WT_LEN) {
            if (read_len(&r, &value)) return -1;
            n_values++;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    if (n_values <= 1) return match_keyvalue(key, value, n_values, lk, fd, depth);
    /* A value given twice merges, as protobuf merges messages. */
    PyObject *merged = merged_field(all, 2, depth);
    if (merged == NULL) return -1;
    const uint8_t *m = (const uint8_t *)PyBytes_AS_STRING(merged);
    int rc = match_keyvalue(key, (Reader){m, m + PyBytes_GET_SIZE(merged)}, 1, lk, fd, depth);
    Py_DECREF(merged);
    return rc;
}

static int match_keyvalue(Reader key, Reader value, int has_value, const Lookup *lk, Found *fd,
                          int depth) {
    int matched = 0;
    for (Py_ssize_t i = 0; i < lk->n_wanted; i++) {
        if (fd->values[i] == NULL && key_equals(lk->utf8[i], lk->len[i], &key)) {
            Reader v = has_value ? value : (Reader){key.end, key.end};
            PyObject *rendered = render_value(v, depth + 1);
            if (rendered == NULL) return -1;
            fd->raw += PyBytes_CheckExact(rendered);
            fd->values[i] = rendered;
            fd->found++;
            matched = 1;
            break;
        }
    }
    if (lk->multiplier != NULL && fd->multiplier_raw == NULL &&
        key_equals(lk->multiplier_utf8, lk->multiplier_len, &key)) {
        if (has_value && validate_anyvalue(value, depth + 1)) return -1;
        fd->multiplier_raw = has_value
            ? PyBytes_FromStringAndSize((const char *)value.p, value.end - value.p)
            : PyBytes_FromStringAndSize("", 0);
        if (fd->multiplier_raw == NULL) return -1;
        matched = 1;
    }
    if (lk->all_pairs) {
        PyObject *k = make_str(&key);
        if (k == NULL) return -1;
        Reader v = has_value ? value : (Reader){key.end, key.end};
        PyObject *rendered = render_value(v, depth + 1);
        if (rendered == NULL) {
            Py_DECREF(k);
            return -1;
        }
        fd->raw += PyBytes_CheckExact(rendered);
        PyObject *pair = PyTuple_Pack(2, k, rendered);
        Py_DECREF(k);
        Py_DECREF(rendered);
        if (pair == NULL || PyList_Append(fd->pairs, pair)) {
            Py_XDECREF(pair);
            return -1;
        }
        Py_DECREF(pair);
        matched = 1;
    }
    if (!matched && has_value && validate_anyvalue(value, depth + 1)) return -1;
    return 0;
}

static void found_clear(Found *fd, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(fd->values[i]);
    Py_CLEAR(fd->multiplier_raw);
    Py_CLEAR(fd->pairs);
    fd->found = 0;
}

static int found_init(Found *fd, const Lookup *lk, PyObject **slots) {
    fd->values = slots;
    for (Py_ssize_t i = 0; i < lk->n_wanted; i++) slots[i] = NULL;
    fd->multiplier_raw = NULL;
    fd->pairs = NULL;
    fd->found = 0;
    fd->raw = 0;
    if (lk->all_pairs) {
        fd->pairs = PyList_New(0);
        if (fd->pairs == NULL) return -1;
    }
    return 0;
}

/* The values tuple: found values, else those of ``fallback`` (a tuple), else None. */
static PyObject *values_tuple(const Found *fd, Py_ssize_t n, PyObject *fallback) {
    if (fd->found == 0 && fallback != NULL) {
        Py_INCREF(fallback);
        return fallback;
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = fd->values[i];
        if (v == NULL) v = fallback != NULL ? PyTuple_GET_ITEM(fallback, i) : Py_None;
        Py_INCREF(v);
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* Output lists of one scan. */
typedef struct {
    PyObject *resources, *resource_values, *resource_multipliers, *resource_pairs, *resource_end;
    PyObject *scopes, *scope_end;
    PyObject *names, *kinds, *codes, *durations, *states, *values, *multipliers;
    PyObject *trace_ids, *span_ids, *end_times, *events, *pairs;
    PyObject *keys, *resource_ids; /* when the key layout is given */
    Py_ssize_t n_raw;
} Out;

typedef struct {
    Lookup span;      /* dimensions on spans and resources */
    Lookup event;     /* event dimensions */
    PyObject *defaults;  /* tuple: default of each dimension (str or None) */
    PyObject *event_defaults;
    int want_ids;
    int want_events;
    /* The key layout, when the scanner builds series keys (resolve is not NULL). */
    PyObject *resolve;   /* resource bytes -> resource id */
    PyObject *scope_id;  /* (name, version) -> scope id, or NULL: always 0 */
    int keep;            /* 1 span.name, 2 span.kind, 4 status.code */
} Config;

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Attributes of a message at field ``attr_field`` (Resource: 1, Event: 3, Span: 9), and
 * the other string fields listed in ``strings`` validated. */
static int scan_attributes(Reader r, uint32_t attr_field, const uint32_t *strings, int n_strings,
                           const Lookup *lk, Found *fd, int depth) {
    if (depth >= MAX_DEPTH) return fail("invalid_protobuf", "nested too deeply");
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (f == attr_field && wt == WT_LEN) {
            Reader kv;
            if (read_len(&r, &kv)) return -1;
            if (scan_keyvalue(kv, lk, fd, depth + 1)) return -1;
            continue;
        }
        int is_string = 0;
        for (int i = 0; i < n_strings; i++) is_string |= (strings[i] == f);
        if (is_string && wt == WT_LEN) {
            Reader s;
            if (read_len(&r, &s) || check_utf8(&s)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/* Resource { attributes = 1; dropped = 2; entity_refs = 3 (strings inside) }. */
static int validate_entity_refs(Reader r, int depth) {
    /* EntityRef { schema_url = 1; type = 2; id_keys = 3; description_keys = 4 }: strings. */
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (wt == WT_LEN && f >= 1 && f <= 4) {
            Reader s;
            if (read_len(&r, &s) || check_utf8(&s)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

static int scan_resource(Reader r, const Config *cfg, Found *fd, int depth) {
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (f == 1 && wt == WT_LEN) {
            Reader kv;
            if (read_len(&r, &kv)) return -1;
            if (scan_keyvalue(kv, &cfg->span, fd, depth + 1)) return -1;
        } else if (f == 3 && wt == WT_LEN) {
            Reader e;
            if (read_len(&r, &e) || validate_entity_refs(e, depth + 1)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/* Link { trace_id 1; span_id 2; trace_state 3 (string); attributes 4; dropped 5; flags 6 } */
static int validate_link(Reader r, int depth) {
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return -1;
        if (wt == WT_LEN && f == 3) {
            Reader s;
            if (read_len(&r, &s) || check_utf8(&s)) return -1;
        } else if (wt == WT_LEN && f == 4) {
            Reader kv;
            if (read_len(&r, &kv) || validate_keyvalue(kv, depth + 1)) return -1;
        } else if (skip_field(&r, wt, f, depth)) return -1;
    }
    return 0;
}

/* Event { time 1; name 2 (string); attributes 3; dropped 4 } */
static PyObject *scan_event(Reader r, const Config *cfg, Out *out, int depth) {
    PyObject *slots[64];
    Found fd;
    Py_ssize_t n = cfg->event.n_wanted;
    if (!cfg->want_events) {
        static const uint32_t strings[] = {2};
        Lookup none;
        memset(&none, 0, sizeof none);
        Found nf = {slots, NULL, NULL, 0, 0};
        if (scan_attributes(r, 3, strings, 1, &none, &nf, depth)) return NULL;
        Py_RETURN_NONE;
    }
    if (found_init(&fd, &cfg->event, slots)) return NULL;
    static const uint32_t strings[] = {2};
    if (scan_attributes(r, 3, strings, 1, &cfg->event, &fd, depth)) {
        found_clear(&fd, n);
        return NULL;
    }
    PyObject *t = values_tuple(&fd, n, cfg->event_defaults);
    out->n_raw += fd.raw;
    found_clear(&fd, n);
    return t;
}

/* A span's series key: (resource id, scope id, name, kind, code, *values), the excluded
 * intrinsics as None; the layout of spanmetrics.aggregate.dimensions.DimensionPlan.keys. */
static PyObject *make_key(const Config *cfg, PyObject *rid, PyObject *sid, PyObject *name,
                          PyObject *kind, PyObject *code, const Found *fd, Py_ssize_t n,
                          PyObject *fallback) {
    PyObject *key = PyTuple_New(5 + n);
    if (key == NULL) return NULL;
    PyObject *items[5] = {rid, sid, (cfg->keep & 1) ? name : Py_None,
                          (cfg->keep & 2) ? kind : Py_None, (cfg->keep & 4) ? code : Py_None};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(key, i, items[i]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = fd->values[i];
        if (v == NULL) v = fallback != NULL ? PyTuple_GET_ITEM(fallback, i) : Py_None;
        Py_INCREF(v);
        PyTuple_SET_ITEM(key, 5 + i, v);
    }
    return key;
}

static int scan_span(Reader r, const Config *cfg, Out *out, PyObject *fallback,
                     PyObject *resource_multiplier, PyObject *rid, PyObject *sid, int depth) {
    Reader name = {0, 0}, state = {0, 0}, trace_id = {0, 0}, span_id = {0, 0};
    uint64_t kind = 0, code = 0, start = 0, end = 0;
    PyObject *slots[64];
    Found fd;
    PyObject *events = NULL;
    Py_ssize_t n = cfg->span.n_wanted;
    if (found_init(&fd, &cfg->span, slots)) return -1;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) goto error;
        if (wt == WT_LEN && (f == 1 || f == 2 || f == 3 || f == 4 || f == 5)) {
            Reader s;
            if (read_len(&r, &s)) goto error;
            /* Every occurrence of a string must be UTF-8, also one that a later one
             * replaces: upb checks each. */
            if ((f == 3 || f == 5) && check_utf8(&s)) goto error;
            if (f == 1) trace_id = s;
            else if (f == 2) span_id = s;
            else if (f == 3) state = s;
            else if (f == 5) name = s;
            /* parent_span_id (4): bytes, not needed */
        } else if (f == 6 && wt == WT_VARINT) {
            if (read_varint(&r, &kind)) goto error;
        } else if (f == 7 && wt == WT_I64) {
            if (read_fixed64(&r, &start)) goto error;
        } else if (f == 8 && wt == WT_I64) {
            if (read_fixed64(&r, &end)) goto error;
        } else if (f == 9 && wt == WT_LEN) {
            Reader kv;
            if (read_len(&r, &kv) || scan_keyvalue(kv, &cfg->span, &fd, depth + 1)) goto error;
        } else if (f == 11 && wt == WT_LEN) {
            Reader ev;
            if (read_len(&r, &ev)) goto error;
            PyObject *e = scan_event(ev, cfg, out, depth + 1);
            if (e == NULL) goto error;
            /* The list only for a span that has events (most have none). */
            if (cfg->want_events && events == NULL && (events = PyList_New(0)) == NULL) {
                Py_DECREF(e);
                goto error;
            }
            if (events != NULL && PyList_Append(events, e)) {
                Py_DECREF(e);
                goto error;
            }
            Py_DECREF(e);
        } else if (f == 13 && wt == WT_LEN) {
            Reader link;
            if (read_len(&r, &link) || validate_link(link, depth + 1)) goto error;
        } else if (f == 15 && wt == WT_LEN) {
            /* Status { message 2 (string); code 3 }: merged, the last code wins. */
            Reader st;
            if (read_len(&r, &st)) goto error;
            while (st.p < st.end) {
                uint32_t sf;
                int swt;
                if (read_tag(&st, &sf, &swt)) goto error;
                if (sf == 3 && swt == WT_VARINT) {
                    if (read_varint(&st, &code)) goto error;
                } else if (sf == 2 && swt == WT_LEN) {
                    Reader msg;
                    if (read_len(&st, &msg) || check_utf8(&msg)) goto error;
                } else if (skip_field(&st, swt, sf, depth + 1)) goto error;
            }
        } else if (skip_field(&r, wt, f, depth)) goto error;
    }
    {
        PyObject *name_obj = make_str(&name);
        PyObject *kind_obj = name_obj ? PyLong_FromLong((long)(int32_t)kind) : NULL;
        PyObject *code_obj = kind_obj ? PyLong_FromLong((long)(int32_t)code) : NULL;
        int rc = code_obj == NULL;
        if (!rc && out->keys != NULL) {
            rc = append_new(out->keys, make_key(cfg, rid, sid, name_obj, kind_obj, code_obj, &fd,
                                                n, fallback));
        }
        /* With keys, the columns are inside them. */
        if (out->keys == NULL) {
            rc = rc || PyList_Append(out->names, name_obj) || PyList_Append(out->kinds, kind_obj) ||
                 PyList_Append(out->codes, code_obj);
        }
        Py_XDECREF(name_obj);
        Py_XDECREF(kind_obj);
        Py_XDECREF(code_obj);
        if (rc) goto error;
    }
    {
        /* end - start exactly, then rounded once to a double, as float(end - start). */
        double d = end >= start ? (double)(end - start) : -(double)(start - end);
        Py_ssize_t size = PyByteArray_GET_SIZE(out->durations);
        if (PyByteArray_Resize(out->durations, size + (Py_ssize_t)sizeof d)) goto error;
        memcpy(PyByteArray_AS_STRING(out->durations) + size, &d, sizeof d);
    }
    if (append_new(out->states, make_str(&state))) goto error;
    if (out->values != NULL && append_new(out->values, values_tuple(&fd, n, fallback))) goto error;
    if (out->multipliers != NULL) {
        PyObject *m = fd.multiplier_raw != NULL ? fd.multiplier_raw : Py_None;
        Py_INCREF(m);
        if (append_new(out->multipliers, m)) goto error;
    }
    {
        /* Span ids: for exemplars, and as the random draw of stochastic rounding when a
         * span may weigh more than one. */
        int need = cfg->want_ids || state.end != state.p || fd.multiplier_raw != NULL ||
                   resource_multiplier != Py_None;
        PyObject *sid = need ? PyBytes_FromStringAndSize((const char *)span_id.p, span_id.end - span_id.p)
                             : (Py_INCREF(Py_None), Py_None);
        if (append_new(out->span_ids, sid)) goto error;
    }
    if (cfg->want_ids) {
        if (append_new(out->trace_ids, PyBytes_FromStringAndSize((const char *)trace_id.p, trace_id.end - trace_id.p))) goto error;
        if (append_new(out->end_times, PyLong_FromUnsignedLongLong(end))) goto error;
    }
    if (out->events != NULL) {
        PyObject *e = events != NULL ? events : (Py_INCREF(Py_None), Py_None);
        events = NULL;
        if (append_new(out->events, e)) goto error;
    }
    if (out->pairs != NULL) {
        PyObject *pairs = PyList_AsTuple(fd.pairs);
        if (append_new(out->pairs, pairs)) goto error;
    }
    out->n_raw += fd.raw;
    found_clear(&fd, n);
    return 0;
error:
    Py_XDECREF(events);
    found_clear(&fd, n);
    return -1;
}

/* InstrumentationScope { name 1; version 2; attributes 3; dropped 4 } */
static PyObject *scan_scope(Reader r, int depth) {
    Reader name = {0, 0}, version = {0, 0};
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) return NULL;
        if ((f == 1 || f == 2) && wt == WT_LEN) {
            if (read_len(&r, f == 1 ? &name : &version)) return NULL;
            if (check_utf8(f == 1 ? &name : &version)) return NULL;
        } else if (f == 3 && wt == WT_LEN) {
            Reader kv;
            if (read_len(&r, &kv) || validate_keyvalue(kv, depth + 1)) return NULL;
        } else if (skip_field(&r, wt, f, depth)) return NULL;
    }
    PyObject *n = make_str(&name);
    if (n == NULL) return NULL;
    PyObject *v = make_str(&version);
    if (v == NULL) {
        Py_DECREF(n);
        return NULL;
    }
    PyObject *t = PyTuple_Pack(2, n, v);
    Py_DECREF(n);
    Py_DECREF(v);
    return t;
}

/* ScopeSpans { scope 1; spans 2; schema_url 3 } */
static int scan_scope_spans(Reader r, const Config *cfg, Out *out, PyObject *fallback,
                            PyObject *resource_multiplier, PyObject *rid, int depth) {
    /* The scope first: it may come after the spans, and be given more than once (merged). */
    Reader last_scope = {r.end, r.end};
    int n_scope = 0;
    Reader scan = r;
    while (scan.p < scan.end) {
        uint32_t f;
        int wt;
        if (read_tag(&scan, &f, &wt)) return -1;
        if (f == 1 && wt == WT_LEN) {
            if (read_len(&scan, &last_scope)) return -1;
            n_scope++;
        } else if (skip_field(&scan, wt, f, depth)) return -1;
    }
    PyObject *scope;
    if (n_scope <= 1) {
        scope = scan_scope(last_scope, depth + 1); /* the common case: read in place */
    } else {
        PyObject *raw_scope = merged_field(r, 1, depth);
        if (raw_scope == NULL) return -1;
        const uint8_t *sp = (const uint8_t *)PyBytes_AS_STRING(raw_scope);
        scope = scan_scope((Reader){sp, sp + PyBytes_GET_SIZE(raw_scope)}, depth + 1);
        Py_DECREF(raw_scope);
    }
    if (scope == NULL) return -1;
    PyObject *sid;
    if (cfg->resolve != NULL && cfg->scope_id != NULL) {
        sid = PyObject_CallObject(cfg->scope_id, scope);
    } else {
        sid = PyLong_FromLong(0);
    }
    if (sid == NULL || PyList_Append(out->scopes, scope)) {
        Py_DECREF(scope);
        Py_XDECREF(sid);
        return -1;
    }
    Py_DECREF(scope);
    int rc = 0;
    scan = r;
    while (!rc && scan.p < scan.end) {
        uint32_t f;
        int wt;
        Reader s;
        if (read_tag(&scan, &f, &wt)) rc = -1;
        else if (f == 2 && wt == WT_LEN) {
            rc = read_len(&scan, &s) ||
                 scan_span(s, cfg, out, fallback, resource_multiplier, rid, sid, depth + 1);
        } else if (f == 3 && wt == WT_LEN) {
            rc = read_len(&scan, &s) || check_utf8(&s);
        } else rc = skip_field(&scan, wt, f, depth);
    }
    Py_DECREF(sid);
    if (rc) return -1;
    return append_new(out->scope_end, PyLong_FromSsize_t(PyList_GET_SIZE(out->states)));
}

/* ResourceSpans { resource 1; scope_spans 2; schema_url 3 } */
static int scan_resource_spans(Reader r, const Config *cfg, Out *out, int depth) {
    /* The resource first (it may come after its spans, or twice: merged). */
    PyObject *raw = merged_field(r, 1, depth);
    if (raw == NULL) return -1;
    Reader scan;
    PyObject *slots[64];
    Found fd;
    Py_ssize_t n = cfg->span.n_wanted;
    if (found_init(&fd, &cfg->span, slots)) goto error;
    Reader res = {(const uint8_t *)PyBytes_AS_STRING(raw),
                  (const uint8_t *)PyBytes_AS_STRING(raw) + PyBytes_GET_SIZE(raw)};
    if (scan_resource(res, cfg, &fd, depth + 1)) {
        found_clear(&fd, n);
        goto error;
    }
    PyObject *fallback = values_tuple(&fd, n, NULL);
    if (fallback != NULL) {
        /* Missing on the resource: the dimension's default. */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (fd.values[i] == NULL) {
                PyObject *d = PyTuple_GET_ITEM(cfg->defaults, i);
                Py_INCREF(d);
                Py_SETREF(((PyTupleObject *)fallback)->ob_item[i], d);
            }
        }
    }
    PyObject *multiplier = fd.multiplier_raw != NULL ? fd.multiplier_raw : Py_None;
    Py_INCREF(multiplier);
    PyObject *rid = NULL;
    if (cfg->resolve != NULL) {
        rid = PyObject_CallOneArg(cfg->resolve, raw);
        if (rid == NULL || PyList_Append(out->resource_ids, rid)) {
            Py_XDECREF(rid);
            Py_DECREF(multiplier);
            Py_XDECREF(fallback);
            found_clear(&fd, n);
            goto error;
        }
    } else {
        rid = Py_None;
        Py_INCREF(rid);
    }
    PyObject *pairs = fd.pairs != NULL ? PyList_AsTuple(fd.pairs) : (Py_INCREF(Py_None), Py_None);
    out->n_raw += fd.raw;
    found_clear(&fd, n);
    if (fallback == NULL || pairs == NULL) {
        Py_XDECREF(fallback);
        Py_DECREF(multiplier);
        Py_XDECREF(pairs);
        Py_DECREF(rid);
        goto error;
    }
    int rc = PyList_Append(out->resources, raw) || PyList_Append(out->resource_values, fallback) ||
             PyList_Append(out->resource_multipliers, multiplier) ||
             PyList_Append(out->resource_pairs, pairs);
    Py_DECREF(raw);
    raw = NULL;
    if (rc) {
        Py_DECREF(fallback);
        Py_DECREF(multiplier);
        Py_DECREF(pairs);
        Py_DECREF(rid);
        return -1;
    }
    scan = r;
    while (scan.p < scan.end) {
        uint32_t f;
        int wt;
        if (read_tag(&scan, &f, &wt)) break;
        if (f == 2 && wt == WT_LEN) {
            Reader s;
            if (read_len(&scan, &s)) break;
            if (scan_scope_spans(s, cfg, out, n ? fallback : NULL, multiplier, rid, depth + 1)) break;
        } else if (f == 3 && wt == WT_LEN) {
            Reader s;
            if (read_len(&scan, &s) || check_utf8(&s)) break;
        } else if (skip_field(&scan, wt, f, depth)) break;
    }
    Py_DECREF(fallback);
    Py_DECREF(multiplier);
    Py_DECREF(pairs);
    Py_DECREF(rid);
    if (PyErr_Occurred()) return -1;
    return append_new(out->resource_end, PyLong_FromSsize_t(PyList_GET_SIZE(out->scopes)));
error:
    Py_XDECREF(raw);
    return -1;
}

static void out_clear(Out *o) {
    PyObject **all[] = {&o->resources, &o->resource_values, &o->resource_multipliers,
                        &o->resource_pairs, &o->resource_end, &o->scopes, &o->scope_end,
                        &o->names, &o->kinds, &o->codes, &o->durations, &o->states,
                        &o->values, &o->multipliers, &o->trace_ids, &o->span_ids,
                        &o->end_times, &o->events, &o->pairs, &o->keys, &o->resource_ids};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) Py_CLEAR(*all[i]);
}

static int lookup_from(PyObject *wanted, PyObject *multiplier, int all_pairs, Lookup *lk) {
    if (!PyTuple_Check(wanted)) {
        PyErr_SetString(PyExc_TypeError, "wanted keys must be a tuple of str");
        return -1;
    }
    lk->wanted = wanted;
    lk->n_wanted = PyTuple_GET_SIZE(wanted);
    if (lk->n_wanted > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 dimensions");
        return -1;
    }
    for (Py_ssize_t i = 0; i < lk->n_wanted; i++) {
        PyObject *key = PyTuple_GET_ITEM(wanted, i);
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "wanted keys must be str");
            return -1;
        }
        /* A key that is not valid UTF-8 (lone surrogates) can never match a wire key. */
        lk->utf8[i] = PyUnicode_AsUTF8AndSize(key, &lk->len[i]);
        if (lk->utf8[i] == NULL) {
            PyErr_Clear();
            lk->utf8[i] = "";
            lk->len[i] = -1;
        }
    }
    lk->multiplier = multiplier == Py_None ? NULL : multiplier;
    lk->multiplier_utf8 = NULL;
    lk->multiplier_len = -1;
    if (lk->multiplier != NULL) {
        if (!PyUnicode_Check(multiplier)) {
            PyErr_SetString(PyExc_TypeError, "the multiplier key must be str or None");
            return -1;
        }
        lk->multiplier_utf8 = PyUnicode_AsUTF8AndSize(multiplier, &lk->multiplier_len);
        if (lk->multiplier_utf8 == NULL) {
            PyErr_Clear();
            lk->multiplier_utf8 = "";
            lk->multiplier_len = -1;
        }
    }
    lk->all_pairs = all_pairs;
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(data, wanted, defaults, multiplier_key, want_ids, want_events, event_wanted,\n"
"     event_defaults, all_pairs) -> tuple of columns\n\n"
"Read an OTLP ExportTraceServiceRequest; see spanmetrics.decode.batch for the columns.");

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    PyObject *wanted, *defaults, *multiplier_key, *event_wanted, *event_defaults;
    PyObject *resolve = Py_None, *scope_id = Py_None;
    int want_ids, want_events, all_pairs, keep = 7;
    if (!PyArg_ParseTuple(args, "y*OOOppOOp|OOi", &buf, &wanted, &defaults, &multiplier_key,
                          &want_ids, &want_events, &event_wanted, &event_defaults, &all_pairs,
                          &resolve, &scope_id, &keep))
        return NULL;
    Config cfg;
    Out out;
    memset(&out, 0, sizeof(out));
    PyObject *result = NULL;
    if (lookup_from(wanted, multiplier_key, all_pairs, &cfg.span) ||
        lookup_from(event_wanted, Py_None, 0, &cfg.event))
        goto done;
    if (!PyTuple_Check(defaults) || PyTuple_GET_SIZE(defaults) != cfg.span.n_wanted ||
        !PyTuple_Check(event_defaults) || PyTuple_GET_SIZE(event_defaults) != cfg.event.n_wanted) {
        PyErr_SetString(PyExc_ValueError, "one default per wanted key");
        goto done;
    }
    cfg.defaults = defaults;
    cfg.event_defaults = event_defaults;
    cfg.want_ids = want_ids;
    cfg.want_events = want_events;
    cfg.resolve = resolve == Py_None ? NULL : resolve;
    cfg.scope_id = scope_id == Py_None ? NULL : scope_id;
    cfg.keep = keep;
    int n_dims = cfg.span.n_wanted > 0;
    if (!(out.resources = PyList_New(0)) || !(out.resource_values = PyList_New(0)) ||
        !(out.resource_multipliers = PyList_New(0)) || !(out.resource_pairs = PyList_New(0)) ||
        !(out.resource_end = PyList_New(0)) || !(out.scopes = PyList_New(0)) ||
        !(out.scope_end = PyList_New(0)) || !(out.names = PyList_New(0)) ||
        !(out.kinds = PyList_New(0)) || !(out.codes = PyList_New(0)) ||
        !(out.durations = PyByteArray_FromStringAndSize(NULL, 0)) ||
        !(out.states = PyList_New(0)) || !(out.span_ids = PyList_New(0)))
        goto done;
    /* With a key layout the values are inside the keys. */
    if (n_dims && cfg.resolve == NULL && !(out.values = PyList_New(0))) goto done;
    if (cfg.span.multiplier && !(out.multipliers = PyList_New(0))) goto done;
    if (want_ids && (!(out.trace_ids = PyList_New(0)) || !(out.end_times = PyList_New(0)))) goto done;
    if (want_events && !(out.events = PyList_New(0))) goto done;
    if (all_pairs && !(out.pairs = PyList_New(0))) goto done;
    if (cfg.resolve != NULL && (!(out.keys = PyList_New(0)) || !(out.resource_ids = PyList_New(0))))
        goto done;

    Reader r = {(const uint8_t *)buf.buf, (const uint8_t *)buf.buf + buf.len};
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt)) goto done;
        if (f == 1 && wt == WT_LEN) {
            Reader s;
            if (read_len(&r, &s) || scan_resource_spans(s, &cfg, &out, 1)) goto done;
        } else if (skip_field(&r, wt, f, 0)) goto done;
    }
#define OR_NONE(x) ((x) != NULL ? (x) : Py_None)
    result = Py_BuildValue(
        "(OOOOOOOOOOOOOOOOOOOnOO)", out.resources, out.resource_values, out.resource_multipliers,
        out.resource_pairs, out.resource_end, out.scopes, out.scope_end,
        out.keys != NULL ? Py_None : out.names, out.keys != NULL ? Py_None : out.kinds,
        out.keys != NULL ? Py_None : out.codes, out.durations, out.states, OR_NONE(out.values), OR_NONE(out.multipliers),
        OR_NONE(out.trace_ids), out.span_ids, OR_NONE(out.end_times), OR_NONE(out.events),
        OR_NONE(out.pairs), out.n_raw, OR_NONE(out.keys), OR_NONE(out.resource_ids));
#undef OR_NONE
done:
    out_clear(&out);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "spanmetrics.decode._scan",
    "Compiled scanner of OTLP trace records (see spanmetrics.decode.batch).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void) {
    empty_str = PyUnicode_FromStringAndSize("", 0);
    str_true = PyUnicode_InternFromString("true");
    str_false = PyUnicode_InternFromString("false");
    if (empty_str == NULL || str_true == NULL || str_false == NULL) return NULL;
    return PyModule_Create(&module);
}
