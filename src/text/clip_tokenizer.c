/*
 * clip_tokenizer.c: CLIP's byte-level BPE (see clip_tokenizer.h).
 *
 * A word being merged is one string (its bytes in the printable alphabet, "</w>" appended)
 * cut into symbols at boundaries; a merge removes a boundary, so symbols stay substrings and
 * a pair's lookup key is built from two adjacent spans. The rank of every adjacent pair is
 * cached and only the neighbours of a merge are looked up again.
 */
#include "clip_tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/strmap.h"
#include "core/utf8.h"
#include "io/dataset.h"
#include "unicode_data.h"

enum { MAX_TEXT_BYTES = 4096, MAX_FILE = 1 << 28 };

struct fb_clip_tokenizer {
    fb_strmap vocab, ranks; /* token -> id; "left right" -> merge rank */
    char *vocab_keys;       /* the keys' storage */
    char *merge_text;       /* merges.txt, lines cut in place */
    char byte_sym[256][3];  /* GPT-2's byte -> printable code point, as UTF-8 (1-2 bytes) */
    int32_t bos, eos, unk;
    int64_t vocab_size;
};

/* ------------------------------------------------------------------- Unicode -- */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_letter(uint32_t cp)
{
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(fb_uni_letters, sizeof fb_uni_letters / sizeof fb_uni_letters[0], cp);
}

static int is_number(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(fb_uni_numbers, sizeof fb_uni_numbers / sizeof fb_uni_numbers[0], cp);
}

/* Unicode's White_Space property (what \s matches in the tokenizers' regex engine) */
static int is_space(uint32_t cp)
{
    return (cp >= 0x9 && cp <= 0xD) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* lower case of cp into out[2]; returns how many code points (1 or 2) */
static int to_lower(uint32_t cp, uint32_t out[2])
{
    if (cp < 0x80) {
        out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        return 1;
    }
    size_t lo = 0, hi = sizeof fb_uni_lower / sizeof fb_uni_lower[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < fb_uni_lower[mid][0])
            hi = mid;
        else if (cp > fb_uni_lower[mid][0])
            lo = mid + 1;
        else {
            out[0] = fb_uni_lower[mid][1];
            out[1] = fb_uni_lower[mid][2];
            return out[1] ? 2 : 1;
        }
    }
    out[0] = cp;
    return 1;
}

static int utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) return out[0] = (char)cp, 1;
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------------------- loading -- */

/* GPT-2's reversible byte alphabet: printable Latin-1 bytes stand for themselves, the other 68
 * bytes take the code points from 256 up, in byte order. */
static void build_byte_alphabet(fb_clip_tokenizer *t)
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : next++;
        int n = utf8_encode(cp, t->byte_sym[b]);
        t->byte_sym[b][n] = '\0';
    }
}

static fb_status load_vocab(fb_clip_tokenizer *t, const char *path)
{
    uint8_t *data;
    size_t len;
    fb_status st = fb_read_file(path, MAX_FILE, &data, &len);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength((const char *)data, len);
    fb_free(data);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object of token ids", path);
    }
    size_t bytes = 0;
    int64_t count = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        bytes += strlen(e->string) + 1, count++;
    t->vocab_keys = fb_malloc(bytes ? bytes : 1);
    if (!t->vocab_keys) st = FB_ERR_NOMEM;
    char *p = t->vocab_keys;
    for (const cJSON *e = root->child; e && !st; e = e->next) {
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < 0x7fffffff) ||
            e->valuedouble != (double)(int32_t)e->valuedouble) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: token '%s' has no integer id", path, e->string);
            break;
        }
        size_t n = strlen(e->string) + 1;
        memcpy(p, e->string, n);
        const int32_t id = (int32_t)e->valuedouble;
        st = fb_strmap_put(&t->vocab, p, id);
        if (st == FB_ERR_ARG)
            st = fb_set_error(FB_ERR_FORMAT, "%s: token '%s' appears twice", path, e->string);
        if (id >= t->vocab_size) t->vocab_size = (int64_t)id + 1;
        p += n;
    }
    cJSON_Delete(root);
    if (st) return st;
    t->bos = (int32_t)fb_strmap_get(&t->vocab, "<|startoftext|>");
    t->eos = (int32_t)fb_strmap_get(&t->vocab, "<|endoftext|>");
    if (t->bos < 0 || t->eos < 0)
        return fb_set_error(FB_ERR_FORMAT, "%s: the vocabulary lacks %s", path,
                            t->bos < 0 ? "<|startoftext|>" : "<|endoftext|>");
    t->unk = t->eos;
    (void)count;
    return FB_OK;
}

static fb_status load_merges(fb_clip_tokenizer *t, const char *path)
{
    uint8_t *data;
    size_t len;
    fb_status st = fb_read_file(path, MAX_FILE, &data, &len);
    if (st) return st;
    char *text = fb_realloc(data, len + 1);
    if (!text) {
        fb_free(data);
        return FB_ERR_NOMEM;
    }
    text[len] = '\0';
    t->merge_text = text;
    if (memchr(text, '\0', len))
        return fb_set_error(FB_ERR_FORMAT, "%s: a NUL byte in a text file", path);
    int64_t rank = 0, line_no = 0;
    for (char *line = text; line && *line;) {
        char *end = strchr(line, '\n');
        if (end) *end = '\0';
        line_no++;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r') line[--n] = '\0';
        if (line_no == 1 && !strncmp(line, "#version", 8)) {
            line = end ? end + 1 : NULL;
            continue;
        }
        if (n) {
            char *sp = strchr(line, ' ');
            if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' '))
                return fb_set_error(FB_ERR_FORMAT,
                                    "%s:%lld: a merge must be two symbols "
                                    "separated by one space",
                                    path, (long long)line_no);
            st = fb_strmap_put(&t->ranks, line, rank++);
            if (st == FB_ERR_ARG) st = FB_OK; /* a repeated pair keeps its first rank */
            if (st) return st;
        }
        line = end ? end + 1 : NULL;
    }
    return FB_OK;
}

fb_status fb_clip_tokenizer_load(const char *vocab_path, const char *merges_path,
                                 fb_clip_tokenizer **out)
{
    *out = NULL;
    fb_clip_tokenizer *t = fb_calloc(1, sizeof *t);
    if (!t) return FB_ERR_NOMEM;
    fb_strmap_init(&t->vocab);
    fb_strmap_init(&t->ranks);
    build_byte_alphabet(t);
    fb_status st = load_vocab(t, vocab_path);
    if (!st) st = load_merges(t, merges_path);
    if (st) {
        fb_clip_tokenizer_free(t);
        return st;
    }
    *out = t;
    return FB_OK;
}

void fb_clip_tokenizer_free(fb_clip_tokenizer *t)
{
    if (!t) return;
    fb_strmap_clear(&t->vocab);
    fb_strmap_clear(&t->ranks);
    fb_free(t->vocab_keys);
    fb_free(t->merge_text);
    fb_free(t);
}

int32_t fb_clip_tokenizer_bos(const fb_clip_tokenizer *t)
{
    return t->bos;
}
int32_t fb_clip_tokenizer_eos(const fb_clip_tokenizer *t)
{
    return t->eos;
}
int64_t fb_clip_tokenizer_vocab_size(const fb_clip_tokenizer *t)
{
    return t->vocab_size;
}

/* ----------------------------------------------------------------------- BPE -- */

typedef struct word {
    const char *s; /* the word in the printable alphabet, "</w>" appended */
    int64_t *cut;  /* symbol i is s[cut[i] .. cut[i+1]) */
    int64_t *rank; /* rank of the pair (i, i+1); INT64_MAX: no such merge */
    int64_t nsym;
    char *key; /* scratch for "left right" */
} word;

static int64_t pair_rank(const fb_clip_tokenizer *t, word *w, int64_t i)
{
    const int64_t a = w->cut[i], b = w->cut[i + 1], c = w->cut[i + 2];
    memcpy(w->key, w->s + a, (size_t)(b - a));
    w->key[b - a] = ' ';
    memcpy(w->key + (b - a) + 1, w->s + b, (size_t)(c - b));
    w->key[c - a + 1] = '\0';
    const int64_t r = fb_strmap_get(&t->ranks, w->key);
    return r < 0 ? INT64_MAX : r;
}

/* Merges w down and appends its symbols' ids to ids[*n..max). */
static fb_status bpe(const fb_clip_tokenizer *t, word *w, int32_t *ids, int64_t max, int64_t *n)
{
    for (int64_t i = 0; i + 1 < w->nsym; i++)
        w->rank[i] = pair_rank(t, w, i);
    for (;;) {
        int64_t best = INT64_MAX;
        for (int64_t i = 0; i + 1 < w->nsym; i++)
            best = w->rank[i] < best ? w->rank[i] : best;
        if (best == INT64_MAX) break;
        /* every occurrence of the pair (ranks are unique per pair), left to right, without
         * overlap, as transformers' bpe(); then the new neighbours are looked up */
        int64_t j = 0;
        for (int64_t i = 0; i < w->nsym; j++) {
            w->cut[j] = w->cut[i];
            i += i + 1 < w->nsym && w->rank[i] == best ? 2 : 1;
        }
        w->cut[j] = w->cut[w->nsym];
        w->nsym = j;
        for (int64_t i = 0; i + 1 < w->nsym; i++)
            w->rank[i] = pair_rank(t, w, i);
    }
    for (int64_t i = 0; i < w->nsym; i++) {
        if (*n >= max) return FB_ERR_ARG; /* too long: the caller names the text */
        const int64_t a = w->cut[i], b = w->cut[i + 1];
        memcpy(w->key, w->s + a, (size_t)(b - a));
        w->key[b - a] = '\0';
        const int64_t id = fb_strmap_get(&t->vocab, w->key);
        ids[(*n)++] = id < 0 ? t->unk : (int32_t)id;
    }
    return FB_OK;
}

/* ------------------------------------------------------------------ encoding -- */

static const char *const special[2] = {"<|startoftext|>", "<|endoftext|>"};

/* Does the code point run cp[i..n) start with the ASCII string s? */
static int starts_with(const uint32_t *cp, int64_t i, int64_t n, const char *s)
{
    for (; *s; s++, i++)
        if (i >= n || cp[i] != (uint32_t)(unsigned char)*s) return 0;
    return 1;
}

/* The length of the pre-tokeniser's match at cp[i] (0: whitespace, skipped); *sp is the
 * special token's index when the match is one, else -1. */
static int64_t match_at(const uint32_t *cp, int64_t i, int64_t n, int *sp)
{
    *sp = -1;
    for (int k = 0; k < 2; k++)
        if (starts_with(cp, i, n, special[k])) {
            *sp = k;
            return (int64_t)strlen(special[k]);
        }
    if (cp[i] == '\'') {
        static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
        for (size_t k = 0; k < sizeof contractions / sizeof contractions[0]; k++)
            if (starts_with(cp, i, n, contractions[k])) return (int64_t)strlen(contractions[k]);
    }
    int64_t j = i;
    if (is_letter(cp[i])) {
        while (j < n && is_letter(cp[j]))
            j++;
        return j - i;
    }
    if (is_number(cp[i])) return 1;
    if (is_space(cp[i])) return 0;
    while (j < n && !is_space(cp[j]) && !is_letter(cp[j]) && !is_number(cp[j]))
        j++;
    return j - i;
}

fb_status fb_clip_tokenize(fb_clip_tokenizer *t, const char *text, int32_t *ids, int64_t max,
                           int64_t *count)
{
    *count = 0;
    const size_t len = strlen(text);
    if (len > MAX_TEXT_BYTES)
        return fb_set_error(FB_ERR_ARG,
                            "text '%.40s...' has %zu bytes; the tokenizer takes at "
                            "most %d",
                            text, len, MAX_TEXT_BYTES);
    /* normalise: whitespace runs to one space, lower case */
    uint32_t *cp = fb_malloc((2 * len + 1) * sizeof *cp);
    /* a word's printable form: up to 2 bytes per input byte, "</w>", NUL */
    char *s = fb_malloc(2 * len + 8), *key = fb_malloc(2 * len + 16);
    int64_t *cut = fb_malloc((len + 2) * sizeof *cut), *rank = fb_malloc((len + 2) * sizeof *rank);
    fb_status st = cp && s && key && cut && rank ? FB_OK : FB_ERR_NOMEM;
    int64_t n = 0, out = 0;
    for (size_t i = 0; i < len && !st;) {
        uint32_t c;
        int k = fb_utf8_decode((const unsigned char *)text + i, len - i, &c);
        if (!k) {
            st = fb_set_error(FB_ERR_ARG, "text '%.40s' is not valid UTF-8 (byte %zu)", text, i);
            break;
        }
        i += (size_t)k;
        if (is_space(c)) {
            if (!n || cp[n - 1] != ' ') cp[n++] = ' ';
            continue;
        }
        uint32_t lo[2];
        for (int m = 0, nl = to_lower(c, lo); m < nl; m++)
            cp[n++] = lo[m];
    }
    int too_long = !st && max < 1;
    if (!st && !too_long) ids[out++] = t->bos;
    for (int64_t i = 0; i < n && !st && !too_long;) {
        int sp;
        const int64_t m = match_at(cp, i, n, &sp);
        if (!m) {
            i++;
            continue;
        }
        if (sp >= 0) {
            if (out >= max)
                too_long = 1;
            else
                ids[out++] = sp ? t->eos : t->bos;
            i += m;
            continue;
        }
        /* the piece's UTF-8 bytes, each as its printable symbol */
        word w = {.s = s, .cut = cut, .rank = rank, .key = key};
        int64_t pos = 0;
        for (int64_t q = i; q < i + m; q++) {
            char u[4];
            const int nb = utf8_encode(cp[q], u);
            for (int b = 0; b < nb; b++) {
                const char *sym = t->byte_sym[(unsigned char)u[b]];
                cut[w.nsym++] = pos;
                const size_t sl = strlen(sym);
                memcpy(s + pos, sym, sl);
                pos += (int64_t)sl;
            }
        }
        memcpy(s + pos, "</w>", 5);
        pos += 4;
        cut[w.nsym] = pos;
        too_long = bpe(t, &w, ids, max, &out) != FB_OK;
        i += m;
    }
    if (!st && !too_long && out >= max) too_long = 1;
    if (!st && !too_long) ids[out++] = t->eos;
    if (too_long)
        st = fb_set_error(FB_ERR_ARG, "text '%.60s' is longer than %lld tokens", text,
                          (long long)max);
    fb_free(cp);
    fb_free(s);
    fb_free(key);
    fb_free(cut);
    fb_free(rank);
    if (!st) *count = out;
    return st;
}
